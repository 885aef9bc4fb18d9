"""The automation's own role can write its tables, and nothing more: it cannot cover its tracks."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import sidecar
from sidecar.cli import cli
from tests.fix_sidecar import track


@pytest.fixture
def roles(sc, dsn):
    """A login role for the bot (writes the tickets) and one for an operator (sidecar_pauser)."""
    suffix = uuid.uuid4().hex[:8]
    bot_role, pauser_role = f"bot_{suffix}", f"pauser_{suffix}"
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE salaries (id int PRIMARY KEY, amount numeric)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open'), (2, 'open'); INSERT INTO salaries VALUES (1, 100000)")
    track(sc, "tickets")
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(bot_role)))
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE sidecar_pauser").format(sql.Identifier(pauser_role)))
    sc.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON tickets TO {}").format(sql.Identifier(bot_role)))
    params = conninfo_to_dict(dsn)
    conns = []

    def connect(role):
        c = psycopg.connect(make_conninfo(**dict(params, user=role)), autocommit=True)
        conns.append(c)
        return c

    yield connect(bot_role), connect(pauser_role)
    for c in conns:
        c.close()
    for role in (bot_role, pauser_role):
        sc.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        sc.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def refused(conn, statement, params=None):
    with pytest.raises(psycopg.Error) as err:
        conn.execute(statement, params)
    return err.value


def test_an_undoer_undoes_a_bots_run_and_prints_its_script(sc, dsn, roles):
    """All an undo reads and calls is open to sidecar_undoer (with rights on the table)."""
    bot, _ = roles
    undoer = f"undoer_{uuid.uuid4().hex[:8]}"
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE sidecar_undoer").format(sql.Identifier(undoer)))
    sc.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON tickets TO {}").format(sql.Identifier(undoer)))
    try:
        with sidecar.Run(bot, "ticket-bot") as run:
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
            bot.execute("DELETE FROM tickets WHERE id = 2")
            bot.execute("INSERT INTO tickets VALUES (3, 'new')")
        as_undoer = make_conninfo(dsn, user=undoer)
        script = CliRunner().invoke(cli, ["undo", str(run.run_id), "--sql", "--dsn", as_undoer])
        assert script.exit_code == 0, script.output
        assert 'ON CONFLICT("id") DO NOTHING' in script.output
        result = CliRunner().invoke(cli, ["undo", str(run.run_id), "--yes", "--dsn", as_undoer])
        assert result.exit_code == 0, result.output
        assert "tickets: 1 put back, 1 restored, 1 removed" in result.output
        assert sc.execute("SELECT id, status FROM tickets ORDER BY id").fetchall() == [(1, "open"), (2, "open")]
    finally:
        sc.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(undoer)))
        sc.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(undoer)))


def test_install_creates_the_operator_roles(sc):
    names = {r[0] for r in sc.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'sidecar\\_%'")}
    assert {"sidecar_viewer", "sidecar_pauser", "sidecar_undoer", "sidecar_approver", "sidecar_rerunner"} <= names


def test_bot_writes_are_captured_but_it_cannot_touch_history(sc, roles):
    bot, _ = roles
    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 1")
    log = sc.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    assert sc.execute(sql.SQL("SELECT count(*) FROM sidecar.{}").format(sql.Identifier(log))).fetchone()[0] == 2

    history = sql.Identifier("sidecar", log)
    assert isinstance(refused(bot, sql.SQL("DELETE FROM {}").format(history)), psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, sql.SQL("UPDATE {} SET status = 'x'").format(history)),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "DELETE FROM sidecar.statements"), psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "UPDATE sidecar.runs SET status = 'succeeded'"), psycopg.errors.InsufficientPrivilege)
    # Forged history, directly or through sidecar's internal functions.
    assert isinstance(refused(bot, "INSERT INTO sidecar.events (kind, summary) VALUES ('undo', 'all fine')"),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT sidecar._log_event('undo', NULL, 'forged')"),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT sidecar._tag()"),
                      psycopg.errors.InsufficientPrivilege)
    # Marking itself undone, or opening an undo/rerun, is an operator's job.
    assert isinstance(refused(bot, "SELECT sidecar._undo_begin(%s, '{\"scope\": \"run\"}')", (run.run_id,)),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT sidecar._rerun_open(%s, '{}', '{}', 'x', '{}')", (run.run_id,)),
                      psycopg.errors.InsufficientPrivilege)
    assert sc.execute("SELECT count(*) FROM sidecar.events WHERE kind = 'undo'").fetchone()[0] == 0


def test_bot_cannot_drop_or_disable_the_triggers_or_truncate(sc, roles):
    bot, _ = roles
    assert isinstance(refused(bot, "ALTER TABLE tickets DISABLE TRIGGER sidecar_capture_update"),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "DROP TRIGGER sidecar_capture_update ON tickets"),
                      psycopg.errors.InsufficientPrivilege)
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    err = refused(bot, "TRUNCATE tickets")
    assert err.sqlstate == "SC002"
    assert sc.execute("SELECT count(*) FROM tickets").fetchone()[0] == 2


def test_bot_cannot_resume_its_own_pause_but_a_pauser_can(sc, roles):
    bot, pauser = roles
    pauser.execute("SELECT sidecar.pause('ticket-bot', 'wrong customers')")
    assert isinstance(refused(bot, "SELECT sidecar.resume('ticket-bot')"), psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "DELETE FROM sidecar.pauses"), psycopg.errors.InsufficientPrivilege)
    err = refused(bot, "SELECT sidecar.start_run('ticket-bot')")
    assert err.sqlstate == "SC001"
    assert 'automation "ticket-bot" is paused since' in str(err)
    assert pauser.execute("SELECT sidecar.resume('ticket-bot')").fetchone()[0] is True
    event = sc.execute("SELECT actor, summary FROM sidecar.events WHERE kind = 'pause'").fetchone()
    assert event[0].startswith("pauser_") and "wrong customers" in event[1]


def test_sidecar_functions_do_not_read_other_tables_for_the_bot(sc, roles):
    bot, _ = roles
    # The row fingerprint reads rows as sidecar's owner: not for automations.
    assert isinstance(refused(bot, "SELECT sidecar._row_fingerprint('salaries', '{\"id\": 1}')"),
                      psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT sidecar._capture_sql(1, 'INSERT')"), psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT * FROM salaries"), psycopg.errors.InsufficientPrivilege)


def test_search_path_hijack_does_not_change_capture(sc, roles):
    bot, _ = roles
    # A malicious look-alike of a catalog function, first on the bot's search_path.
    sc.execute("CREATE SCHEMA evil")
    sc.execute("GRANT USAGE, CREATE ON SCHEMA evil TO PUBLIC")
    sc.execute(
        "CREATE FUNCTION evil.txid_current() RETURNS bigint LANGUAGE sql AS 'SELECT 42::bigint';"
        "CREATE FUNCTION evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint';"
        "CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$SELECT ''$$;"
    )
    bot.execute("SET search_path = evil, public")
    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("UPDATE tickets SET status = 'hijacked?' WHERE id = 2")
        bot.execute("UPDATE tickets SET status = 'still captured' WHERE id = 1")
    rows = sc.execute("SELECT txid, stmt_id FROM sidecar.statements WHERE run_id = %s", (run.run_id,)).fetchall()
    assert len(rows) == 2  # evil.current_setting would have hidden the run id
    assert 42 not in {r[0] for r in rows}
    assert len({r[1] for r in rows}) == 2  # evil.nextval would give 1 twice


def test_a_rule_calling_a_private_function_still_holds_the_bots_writes(sc, roles):
    """A predicate added by hand may call a function only sidecar's owner can execute: the
    rule function (security definer) evaluates it, so the bot's writes are held, not refused."""
    bot, _ = roles
    sc.execute("CREATE FUNCTION private_limit() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'")
    sc.execute("REVOKE EXECUTE ON FUNCTION private_limit() FROM PUBLIC")
    sc.execute("""SELECT sidecar.add_rule('tickets', 'NEW."id" > public.private_limit()', 'beyond the limit')""")

    with sidecar.Run(bot, "ticket-bot"):
        bot.execute("UPDATE tickets SET status = 'resolved'")

    assert sc.execute("SELECT id, status FROM tickets ORDER BY id").fetchall() == [(1, "resolved"), (2, "open")]
    assert sc.execute("SELECT count(*) FROM sidecar.pending").fetchone()[0] == 1


def test_bot_sets_the_context_of_its_action_but_cannot_write_it_otherwise(sc, roles):
    bot, _ = roles
    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("close:1", why="customer said thanks", confidence=0.9):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
    assert sc.execute("SELECT context FROM sidecar.actions WHERE run_id = %s", (run.run_id,)).fetchone()[0] == {
        "why": "customer said thanks", "confidence": 0.9}
    assert isinstance(refused(bot, "UPDATE sidecar.actions SET context = '{}'"), psycopg.errors.InsufficientPrivilege)
    assert isinstance(refused(bot, "SELECT sidecar._write_context()"), psycopg.errors.InsufficientPrivilege)
