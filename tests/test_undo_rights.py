"""Undo and approve with sidecar's roles alone, on a server with no superuser in the story.

As on a managed service: the provider's superuser only creates the DBA, a role with
CREATEROLE that owns the database. From then on everything is done by the DBA (install,
tables, tracking, roles and grants), the bot (its writes), and operators who hold one
sidecar role and no privilege on the tables: `GRANT sidecar_undoer TO dana;` is all it takes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

import sidecar
import sidecar.capture.schema
from sidecar.capture.tracking import track
from sidecar.cli import cli
from tests.fix_sidecar import snapshot


@dataclass
class Managed:
    dsn: dict[str, str]  # role kind -> DSN (dba, bot, undoer, approver)
    conns: dict[str, psycopg.Connection]
    roles: dict[str, str]


@pytest.fixture
def managed(server_dsn):
    suffix = uuid.uuid4().hex[:8]
    roles = {kind: f"{kind}_{suffix}" for kind in ("dba", "bot", "undoer", "approver")}
    db = f"managed_{suffix}"
    # The provider's part: a DBA who may create roles and owns the database. Nothing else.
    with psycopg.connect(server_dsn, autocommit=True) as provider:
        provider.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(roles["dba"])))
        provider.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(roles["dba"])))
        # Roles are the cluster's: where another install made sidecar's group roles first, the
        # DBA needs ADMIN on them to grant them (PostgreSQL 16 and later), as the README says.
        for group in provider.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'sidecar\\_%'").fetchall():
            provider.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(group[0]), sql.Identifier(roles["dba"])))
    dsns = {kind: make_conninfo(server_dsn, dbname=db, user=role) for kind, role in roles.items()}
    conns: dict[str, psycopg.Connection] = {}
    try:
        dba = conns["dba"] = psycopg.connect(dsns["dba"], autocommit=True)
        assert not dba.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        sidecar.capture.schema.install(dba)
        for kind in ("bot", "undoer", "approver"):
            dba.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(roles[kind])))
        dba.execute(
            """
            CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
            CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL,
                                  customer_id int REFERENCES customers,
                                  last_update timestamptz NOT NULL DEFAULT '2024-01-01 00:00+00');
            CREATE FUNCTION stamp_last_update() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN NEW.last_update := now(); RETURN NEW; END $$;
            CREATE TRIGGER tickets_stamp BEFORE UPDATE ON tickets
                FOR EACH ROW EXECUTE FUNCTION stamp_last_update();
            INSERT INTO customers VALUES (1, 'Northwind'), (2, 'Contoso');
            INSERT INTO tickets (id, status, customer_id) VALUES (40, 'open', 1), (41, 'open', 1), (42, 'waiting', 2);
            """
        )
        track(dba, "customers", label_column="name")
        track(dba, "tickets")
        dba.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON customers, tickets TO {}").format(
            sql.Identifier(roles["bot"])))
        # What the README tells a DBA to run for a support lead, and nothing more.
        dba.execute(sql.SQL("GRANT sidecar_undoer TO {}").format(sql.Identifier(roles["undoer"])))
        dba.execute(sql.SQL("GRANT sidecar_approver TO {}").format(sql.Identifier(roles["approver"])))
        for kind in ("bot", "undoer", "approver"):
            conns[kind] = psycopg.connect(dsns[kind], autocommit=True)
        yield Managed(dsns, conns, roles)
    finally:
        for c in conns.values():
            c.close()
        with psycopg.connect(server_dsn, autocommit=True) as provider:
            provider.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            for kind in ("bot", "undoer", "approver", "dba"):
                try:
                    provider.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(roles[kind])))
                except psycopg.errors.DependentObjectsStillExist:
                    # From PostgreSQL 16 the memberships the DBA granted (sidecar's group roles to
                    # each other, at install) depend on it; roles are the throwaway cluster's.
                    pass


def _become_member(dba, role: str) -> None:
    """The DBA joins a role it created, able to act as it (from PostgreSQL 16 a CREATEROLE
    role's own roles are only administered by it until it says SET and INHERIT)."""
    if dba.info.server_version >= 160000:
        dba.execute(sql.SQL("GRANT {} TO current_user WITH INHERIT TRUE, SET TRUE").format(sql.Identifier(role)))
    else:
        dba.execute(sql.SQL("GRANT {} TO current_user").format(sql.Identifier(role)))


def _state(conn):
    return snapshot(conn, "customers", "id") + snapshot(conn, "tickets", "id")


def _bots_run(m: Managed) -> uuid.UUID:
    bot = m.conns["bot"]
    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("INSERT INTO customers VALUES (3, 'Fabrikam')")
        bot.execute("UPDATE tickets SET status = 'resolved', customer_id = 3 WHERE id = 40")
        bot.execute("INSERT INTO tickets (id, status, customer_id) VALUES (43, 'new', 3)")
        bot.execute("DELETE FROM tickets WHERE id = 42")
    return run.run_id


def test_the_undoer_holds_no_privilege_on_the_tables(managed):
    undoer = managed.conns["undoer"]
    for table in ("tickets", "customers"):
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not undoer.execute("SELECT has_table_privilege(%s, %s)", (table, privilege)).fetchone()[0]
    owner = managed.conns["dba"].execute("SELECT tableowner FROM pg_tables WHERE tablename = 'tickets'").fetchone()[0]
    assert owner == managed.roles["dba"]
    assert not undoer.execute("SELECT pg_has_role(%s, 'MEMBER')", (owner,)).fetchone()[0]


def test_an_undoer_undoes_a_run_on_a_table_with_its_own_trigger_and_a_foreign_key(managed):
    dba = managed.conns["dba"]
    before = _state(dba)
    run_id = _bots_run(managed)
    after = _state(dba)

    result = CliRunner().invoke(cli, ["undo", str(run_id), "--yes", "--dsn", managed.dsn["undoer"]])

    assert result.exit_code == 0, result.output
    assert "tickets: 1 put back, 1 restored, 1 removed" in result.output
    # Every row as before, last_update included: the app's trigger did not stamp the restore.
    assert _state(dba) == before

    # The undo is recorded as a run of the undoer's, and can itself be undone by them.
    undo_run, actor = dba.execute(
        "SELECT r.undone_by, e.actor FROM sidecar.runs r JOIN sidecar.events e ON e.run_id = r.run_id "
        "AND e.kind = 'undo' WHERE r.run_id = %s", (run_id,)).fetchone()
    assert actor == managed.roles["undoer"]
    again = CliRunner().invoke(cli, ["undo", str(undo_run), "--yes", "--dsn", managed.dsn["undoer"]])
    assert again.exit_code == 0, again.output
    assert _state(dba) == after
    # The app's trigger is on again, for everyone else's writes.
    assert dba.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'tickets_stamp'").fetchone()[0] == "O"
    dba.execute("UPDATE tickets SET status = 'x' WHERE id = 41")
    assert dba.execute("SELECT last_update > '2024-01-01 00:00+00' FROM tickets WHERE id = 41").fetchone()[0]


def test_the_undoer_previews_and_prints_the_script_without_table_rights(managed):
    dba = managed.conns["dba"]
    run_id = _bots_run(managed)
    dba.execute("UPDATE tickets SET status = 'escalated' WHERE id = 41")  # not the run's: untouched
    dba.execute("UPDATE tickets SET status = 'on hold' WHERE id = 43")  # the run's row, changed since: a conflict

    preview = CliRunner().invoke(cli, ["undo", str(run_id), "--preview", "--dsn", managed.dsn["undoer"]])
    assert preview.exit_code == 0, preview.output
    assert "'on hold'" in preview.output  # the conflict says what the row holds now

    script = CliRunner().invoke(cli, ["undo", str(run_id), "--sql", "--dsn", managed.dsn["undoer"]])
    assert script.exit_code == 0, script.output
    assert 'ALTER TABLE "public"."tickets" DISABLE TRIGGER "tickets_stamp"' in script.output
    assert 'INSERT INTO "public"."tickets"' in script.output  # ticket 42 put back


def test_the_undoer_cannot_write_the_table_directly(managed):
    run_id = _bots_run(managed)
    undoer = managed.conns["undoer"]
    for statement in ("UPDATE tickets SET status = 'forged' WHERE id = 41",
                      "INSERT INTO tickets (id, status) VALUES (99, 'forged')",
                      "DELETE FROM tickets WHERE id = 41",
                      "SELECT * FROM tickets",
                      "ALTER TABLE tickets DISABLE TRIGGER tickets_stamp"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            undoer.execute(statement)
    # Not even inside an undo it opened itself.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), undoer.transaction():
        undoer.execute("SELECT sidecar._undo_begin(%s, '{\"scope\": \"run\"}')", (run_id,))
        undoer.execute("UPDATE tickets SET status = 'forged' WHERE id = 41")
    assert managed.conns["dba"].execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "open"


def _undo_function(m: Managed, table: str) -> sql.Identifier:
    tracked_id = m.conns["dba"].execute(
        "SELECT tracked_id FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone()[0]
    return sql.Identifier("sidecar", f"undo_{tracked_id}")


def test_the_undo_functions_write_nothing_but_the_history(managed):
    """The restore functions take a scope (run, actions, row keys), never a value: their
    plan tables are the table owner's, so the undoer cannot edit them, nor plant its own."""
    dba, undoer = managed.conns["dba"], managed.conns["undoer"]
    run_id = _bots_run(managed)
    after = _state(dba)
    fn = _undo_function(managed, "tickets")
    columns = [{"name": c, "comparable": True, "identity_always": False}
               for c in ("id", "status", "customer_id", "last_update")]
    step = sql.SQL("SELECT {}(%s, %s, %s)").format(fn)

    # Outside an undo the functions write nothing.
    undoer.execute("SET search_path = pg_catalog, pg_temp")
    with undoer.transaction(force_rollback=True):
        undoer.execute(step, ("images", run_id, psycopg.types.json.Jsonb({"columns": columns})))
        undoer.execute(step, ("classify", run_id, psycopg.types.json.Jsonb({})))
        with pytest.raises(psycopg.Error, match="no undo of run .* is open in this transaction"):
            undoer.execute(step, ("update", run_id, psycopg.types.json.Jsonb({})))

    with undoer.transaction(force_rollback=True):
        undoer.execute("SELECT sidecar._undo_begin(%s, '{\"scope\": \"run\"}')", (run_id,))
        # A look-alike plan made first is refused, not used.
        undoer.execute("CREATE TEMP TABLE _sc_first_2 (_kind \"char\", id int, status text)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), undoer.transaction():
            undoer.execute(step, ("images", run_id, psycopg.types.json.Jsonb({"columns": columns})))
        undoer.execute("DROP TABLE _sc_first_2")
        # Nor is a whole forged plan, made before any step of the function ran.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not a plan table of this undo"), \
                undoer.transaction():
            undoer.execute("CREATE TEMP TABLE _sc_meta_2 AS SELECT %s::uuid AS run_id, "
                           "'{\"columns\": [{\"name\": \"id\"}, {\"name\": \"status\"}]}'::jsonb AS args, "
                           "NULL::text AS single_op, 1::bigint AS rows, 1::bigint AS lo, 1::bigint AS hi", (run_id,))
            undoer.execute("CREATE TEMP TABLE _sc_first_2 AS SELECT 'O'::\"char\" AS _kind, 41 AS id, 'forged' AS status")
            undoer.execute("CREATE TEMP TABLE _sc_last_2 AS SELECT * FROM _sc_first_2")
            undoer.execute("CREATE TEMP TABLE _sc_plan_2 AS SELECT 41 AS id, 'update' AS step, true AS forced")
            undoer.execute("GRANT SELECT ON _sc_meta_2, _sc_first_2, _sc_last_2, _sc_plan_2 TO PUBLIC")
            undoer.execute(step, ("update", run_id, psycopg.types.json.Jsonb({})))
        undoer.execute(step, ("images", run_id, psycopg.types.json.Jsonb({"columns": columns})))
        undoer.execute(step, ("classify", run_id, psycopg.types.json.Jsonb({"lock": True})))
        # The images and the plan the function made can be read, not changed.
        assert undoer.execute("SELECT status FROM _sc_first_2 WHERE id = 40").fetchone()[0] == "open"
        for forge in ("UPDATE _sc_first_2 SET status = 'forged'",
                      "INSERT INTO _sc_plan_2 (id, step, forced) VALUES (41, 'update', true)",
                      "UPDATE _sc_plan_2 SET step = 'update'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), undoer.transaction():
                undoer.execute(forge)
        # A column the history does not hold for the run is refused.
        with pytest.raises(psycopg.Error, match="not all in its history"), undoer.transaction():
            undoer.execute(step, ("images", run_id, psycopg.types.json.Jsonb(
                {"columns": [*columns, {"name": "nope", "comparable": True, "identity_always": False}]})))
        # What it writes is the history's before-image, and only for the run's rows.
        assert undoer.execute(step, ("update", run_id, psycopg.types.json.Jsonb({}))).fetchone()[0] == 1
        # Another table's undo function is no way in either: customers' writes customers only.
        other = _undo_function(managed, "customers")
        with pytest.raises(psycopg.Error), undoer.transaction():
            undoer.execute(sql.SQL("SELECT {}('update', %s, '{{}}')").format(other), (run_id,))
    assert _state(dba) == after  # rolled back: nothing of the above stayed


def test_an_approver_approves_without_table_rights(managed):
    dba, bot, approver = managed.conns["dba"], managed.conns["bot"], managed.conns["approver"]
    dba.execute("""SELECT sidecar.add_rule('tickets', 'NEW.status = ''closed''', 'closing needs a person')""")
    with sidecar.Run(bot, "ticket-bot"):
        bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
    assert dba.execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "open"
    pending_id = dba.execute("SELECT pending_id FROM sidecar.pending").fetchone()[0]
    assert not approver.execute("SELECT has_table_privilege('tickets', 'UPDATE')").fetchone()[0]

    result = CliRunner().invoke(cli, ["approve", str(pending_id), "--dsn", managed.dsn["approver"]])

    assert result.exit_code == 0, result.output
    assert dba.execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "closed"
    assert dba.execute("SELECT status, decided_by FROM sidecar.pending").fetchone() == ("approved", managed.roles["approver"])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        approver.execute("UPDATE tickets SET status = 'open' WHERE id = 41")


def test_an_undoer_cannot_apply_a_held_change_nobody_approved(managed):
    dba, bot, undoer = managed.conns["dba"], managed.conns["bot"], managed.conns["undoer"]
    dba.execute("""SELECT sidecar.add_rule('tickets', 'NEW.status = ''closed''', 'closing needs a person')""")
    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
    pending_id = dba.execute("SELECT pending_id FROM sidecar.pending").fetchone()[0]
    with pytest.raises(psycopg.Error, match="is not being approved in this transaction"):
        undoer.execute(sql.SQL("SELECT {}('apply_pending', %s, %s)").format(_undo_function(managed, "tickets")),
                       (run.run_id, psycopg.types.json.Jsonb({"pending_id": pending_id})))
    assert dba.execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "open"


def test_a_table_tracked_before_undo_functions_says_who_must_run_what(managed):
    dba = managed.conns["dba"]
    run_id = _bots_run(managed)
    dba.execute(sql.SQL("DROP FUNCTION {}(text, uuid, jsonb)").format(_undo_function(managed, "tickets")))

    refused = CliRunner().invoke(cli, ["undo", str(run_id), "--yes", "--dsn", managed.dsn["undoer"]])
    assert refused.exit_code == 1
    assert "table public.tickets has no undo function yet" in refused.output
    assert "Its owner runs: sidecar track public.tickets (or sidecar install)" in refused.output

    # The DBA, who owns the tables, upgrades: install renders the missing function.
    installed = CliRunner().invoke(cli, ["install", "--dsn", managed.dsn["dba"]])
    assert installed.exit_code == 0, installed.output
    done = CliRunner().invoke(cli, ["undo", str(run_id), "--yes", "--dsn", managed.dsn["undoer"]])
    assert done.exit_code == 0, done.output


def test_tables_of_another_owner_are_undone_and_approved_with_that_owners_rights(managed):
    """The tables belong to an application role that neither sidecar's owner (the DBA, once
    the tables are tracked) nor the operators are members of: undo and approval write through
    the tables' undo functions, which run as that role."""
    dba, bot, approver = managed.conns["dba"], managed.conns["bot"], managed.conns["approver"]
    app = f"app_{uuid.uuid4().hex[:8]}"
    dba.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(app)))
    try:
        _become_member(dba, app)
        dba.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app)))
        for table in ("customers", "tickets"):
            dba.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(app)))
            track(dba, table)  # the owner's part: renders the undo function, owned by app
        assert dba.execute("SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'undo_2'").fetchone()[0] == app
        dba.execute(sql.SQL("REVOKE {} FROM current_user").format(sql.Identifier(app)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dba.execute("UPDATE tickets SET status = 'x'")

        before = _state(managed.conns["bot"])
        run_id = _bots_run(managed)
        result = CliRunner().invoke(cli, ["undo", str(run_id), "--yes", "--dsn", managed.dsn["undoer"]])
        assert result.exit_code == 0, result.output
        assert _state(bot) == before

        with psycopg.connect(managed.dsn["dba"], autocommit=True) as member:  # the rule is the owner's to add
            member.execute(sql.SQL("GRANT {} TO current_user").format(sql.Identifier(app)))
            member.execute("""SELECT sidecar.add_rule('tickets', 'NEW.status = ''closed''', 'closing needs a person')""")
            member.execute(sql.SQL("REVOKE {} FROM current_user").format(sql.Identifier(app)))
        with sidecar.Run(bot, "ticket-bot"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
        pending_id = dba.execute("SELECT pending_id FROM sidecar.pending").fetchone()[0]
        approved = CliRunner().invoke(cli, ["approve", str(pending_id), "--dsn", managed.dsn["approver"]])
        assert approved.exit_code == 0, approved.output
        assert bot.execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "closed"
        assert approver.execute("SELECT status FROM sidecar.pending").fetchone()[0] == "approved"
    finally:
        _become_member(dba, app)
        dba.execute(sql.SQL("REASSIGN OWNED BY {} TO current_user").format(sql.Identifier(app)))
        dba.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(app)))
        dba.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(app)))


def test_install_names_the_owner_who_must_track_a_table_again(managed):
    dba = managed.conns["dba"]
    app = f"app_{uuid.uuid4().hex[:8]}"
    dba.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(app)))
    try:
        _become_member(dba, app)
        dba.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app)))
        dba.execute(sql.SQL("ALTER TABLE customers OWNER TO {}").format(sql.Identifier(app)))
        dba.execute(sql.SQL("REVOKE {} FROM current_user").format(sql.Identifier(app)))
        dba.execute(sql.SQL("DROP FUNCTION {}(text, uuid, jsonb)").format(_undo_function(managed, "customers")))

        installed = CliRunner().invoke(cli, ["install", "--dsn", managed.dsn["dba"]])
        assert installed.exit_code == 0, installed.output
        assert (f"note: public.customers has no undo function, so undoers cannot restore it; "
                f"as its owner ({app}), run: sidecar track public.customers") in installed.output

        _become_member(dba, app)  # the owner's part
        tracked = CliRunner().invoke(cli, ["track", "customers", "--dsn", managed.dsn["dba"]])
        assert tracked.exit_code == 0 and "note:" not in tracked.output, tracked.output
        again = CliRunner().invoke(cli, ["install", "--dsn", managed.dsn["dba"]])
        assert "nothing changed" in again.output and "note:" not in again.output, again.output
    finally:
        _become_member(dba, app)
        dba.execute(sql.SQL("REASSIGN OWNED BY {} TO current_user").format(sql.Identifier(app)))
        dba.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(app)))
        dba.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(app)))
