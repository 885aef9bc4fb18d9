"""The bad-input matrix: odd names, edge values, partitions, row security, tables gone, bad DSNs."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from tests.fix_sidecar import snapshot, track, undo

ODD_TABLE = '"Sales Ops"."Ordér ""Items"""'


def run_sql_script(conn, script: str) -> None:
    """Run `sidecar undo --sql` output as psql would: one transaction, statement by statement."""
    conn.execute(script)


def test_quoted_unicode_and_reserved_identifiers(sc, run_bot, cli):
    sc.execute('CREATE SCHEMA "Sales Ops"')
    sc.execute(f'CREATE TABLE {ODD_TABLE} ("select" int, "Line No" int, "naïve" text, "from" jsonb, '
               'PRIMARY KEY ("select", "Line No"))')
    sc.execute(f"""INSERT INTO {ODD_TABLE} VALUES (1, 1, 'café', '{{"a": 1}}'), (1, 2, 'b', NULL)""")
    result = cli("track", ODD_TABLE)
    assert result.exit_code == 0, result.output
    before = snapshot(sc, ODD_TABLE)
    run_id = run_bot(f"""UPDATE {ODD_TABLE} SET "naïve" = 'thé', "from" = '[1]' WHERE "Line No" = 1""",
                     f"""INSERT INTO {ODD_TABLE} VALUES (2, 1, 'new', NULL)""",
                     f"""DELETE FROM {ODD_TABLE} WHERE "Line No" = 2""")
    shown = cli("show", str(run_id))
    assert "naïve 'café' -> 'thé'" in shown.output

    script = cli("undo", str(run_id), "--sql")
    assert script.exit_code == 0
    assert '"Sales Ops"."Ordér ""Items"""' in script.output
    run_sql_script(sc, script.output)
    assert snapshot(sc, ODD_TABLE) == before
    assert cli("undo", str(run_id), "--preview").exit_code == 0  # nothing left but "already as before"

    row = cli("undo", str(run_id), "--row", 'Sales Ops.Ordér "Items":{"select":1,"Line No":1}')
    assert row.exit_code == 2  # unquoted: not that table, and the message says how to quote


def test_columns_named_like_sidecars_own_work_or_are_refused_clearly(sc, run_bot, cli):
    """Column names the undo's own queries use (step, forced, _sc_found) are the table's
    like any other; the two history keeps for itself (_stmt, _kind) are refused by name."""
    sc.execute("CREATE TABLE jobs (id int PRIMARY KEY, step text, forced bool, _sc_found bool, _sc_kind text)")
    sc.execute("INSERT INTO jobs VALUES (1, 'queued', false, false, 'a')")
    track(sc, "jobs")
    before = snapshot(sc, "jobs")
    run_id = run_bot("UPDATE jobs SET step = 'done', forced = true, _sc_found = true, _sc_kind = 'b'",
                     "INSERT INTO jobs VALUES (2, 'new', true, true, 'c')")
    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    assert snapshot(sc, "jobs") == before

    sc.execute("CREATE TABLE tasks (id int PRIMARY KEY, _kind text)")
    result = cli("track", "tasks")
    assert result.exit_code == 2
    assert "table public.tasks has a column named _kind, a name sidecar's history keeps for its own use" \
        in result.stderr
    assert sc.execute("SELECT count(*) FROM sidecar.tracked WHERE relid = 'tasks'::regclass").fetchone()[0] == 0
    # On a tracked table, the DDL that would bring the name in is refused, and so left undone.
    with pytest.raises(psycopg.Error, match="has a column named _stmt"):
        sc.execute("ALTER TABLE jobs RENAME COLUMN step TO _stmt")
    assert [r[0] for r in sc.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass "
                                     "AND attnum = 2")] == ["step"]


@pytest.mark.parametrize("kind", ["undo", "sql script"])
def test_values_at_the_edges_come_back_exactly(sc, run_bot, cli, pg_major, kind):
    numeric_inf = ", 'Infinity'::numeric, '-Infinity'::numeric" if pg_major >= 14 else ""
    sc.execute(
        "CREATE TABLE edge (id int PRIMARY KEY, f float8, f2 float8, f3 float8, n numeric, n2 numeric(30,10),"
        " big text, arr int[], txt text[], doc jsonb, bin bytea" + (", ni numeric, nn numeric" if numeric_inf else "")
        + ")")
    sc.execute(
        "INSERT INTO edge VALUES (1, 'NaN', 'Infinity', '-Infinity', 'NaN', 12345678901234567890.0123456789,"
        " repeat('x', 1048576), '{}', '{\"\",NULL,\"a,b\"}',"
        " '{\"a\": {\"b\": [1, 2.50, {\"c\": null}], \"d\": \"\\u00e9\"}}',"
        " (SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') FROM generate_series(1, 255) g)"
        + numeric_inf + ")")
    sc.execute("UPDATE edge SET n = power(10::numeric, 900) + 0.5 WHERE id = 1")
    track(sc, "edge")
    before = snapshot(sc, "edge")
    run_id = run_bot("UPDATE edge SET f = 0, f2 = 1, f3 = 2, n = 3, n2 = 4, big = 'small', arr = '{1}', "
                     "txt = NULL, doc = '{}', bin = '\\x00'" + (", ni = 0, nn = 0" if numeric_inf else ""),
                     "INSERT INTO edge (id) VALUES (2)")
    if kind == "undo":
        undo(sc, run_id)
    else:
        run_sql_script(sc, cli("undo", str(run_id), "--sql").output)
    assert snapshot(sc, "edge") == before


@pytest.fixture
def events(sc):
    """A tracked table partitioned by region: eu holds rows 1 and 3, us row 2."""
    sc.execute("CREATE TABLE events (id int, region text, note text, PRIMARY KEY (id, region)) "
               "PARTITION BY LIST (region)")
    sc.execute("CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')")
    sc.execute("CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')")
    sc.execute("INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'eu', 'c')")
    track(sc, "events")
    return sc


def test_partitioned_table_capture_covers_every_partition_and_undo_lands_right(sc, events, run_bot):
    before = snapshot(sc, "events", "id")
    run_id = run_bot("UPDATE events SET note = 'bot'",
                     "INSERT INTO events VALUES (4, 'us', 'new')",
                     "DELETE FROM events WHERE id = 3",
                     "UPDATE events SET region = 'us' WHERE id = 1")  # moves the row across partitions
    counts = sc.execute("SELECT op, count(*) FROM sidecar.statements WHERE run_id = %s GROUP BY op ORDER BY op",
                        (run_id,)).fetchall()
    if sc.execute("SELECT capture_mode FROM sidecar.tracked").fetchone()[0] == "statement":
        assert counts == [("D", 1), ("I", 1), ("U", 2)]
    else:
        # Row triggers see the row moved across partitions as a DELETE from one partition and an
        # INSERT into the other (PostgreSQL fires no UPDATE row trigger for it): two statements.
        assert counts == [("D", 2), ("I", 2), ("U", 1)]
    # The UPDATE of rows in both partitions is one statement with every row's images.
    first = sc.execute("SELECT min(stmt_id) FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()[0]
    log = sc.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    images = sc.execute(sql.SQL("SELECT _kind, count(*) FROM sidecar.{} WHERE _stmt = %s GROUP BY 1 ORDER BY 1")
                        .format(sql.Identifier(log)), (first,)).fetchall()
    assert images == [("N", 3), ("O", 3)]
    undo(sc, run_id)
    assert snapshot(sc, "events", "id") == before
    assert sc.execute("SELECT id FROM events_eu ORDER BY id").fetchall() == [(1,), (3,)]
    assert sc.execute("SELECT id FROM events_us ORDER BY id").fetchall() == [(2,)]


def test_statements_on_a_partitioned_table_in_one_transaction_stay_apart(sc, events, run_bot):
    """Row mode tells a statement by its partitions' row counts: one statement's rows in every
    partition are one statement, and the next one, in any partition, is another."""
    # One transaction (one simple query): both partitions, then each alone, then both again.
    run_id = run_bot("UPDATE events SET note = 'w'; UPDATE events SET note = 'x' WHERE region = 'us'; "
                     "UPDATE events SET note = 'y' WHERE region = 'eu'; UPDATE events SET note = 'v'")
    log = sc.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    rows = sc.execute(sql.SQL("SELECT s.op, count(*) FILTER (WHERE l._kind = 'N') FROM sidecar.statements s "
                              "JOIN sidecar.{} l ON l._stmt = s.stmt_id WHERE s.run_id = %s "
                              "GROUP BY s.stmt_id, s.op ORDER BY s.stmt_id").format(sql.Identifier(log)),
                      (run_id,)).fetchall()
    assert rows == [("U", 3), ("U", 1), ("U", 2), ("U", 3)]


def test_row_level_security_table(sc, dsn, run_bot):
    role = f"bot_{uuid.uuid4().hex[:8]}"
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, owner text, body text)")
    sc.execute("INSERT INTO notes VALUES (1, 'bot', 'x'), (2, 'alice', 'private')")
    sc.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    sc.execute("CREATE POLICY own ON notes USING (owner = 'bot')")
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        sc.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {}").format(sql.Identifier(role)))
        track(sc, "notes")
        before = snapshot(sc, "notes")
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        with psycopg.connect(psycopg.conninfo.make_conninfo(**dict(params, user=role)), autocommit=True) as bot:
            # The policy hides alice's row from the bot; its UPDATE touches only its own.
            run_id = run_bot("UPDATE notes SET body = 'bot edit'", "INSERT INTO notes VALUES (3, 'bot', 'n')",
                             connection=bot)
        assert sc.execute("SELECT body FROM notes WHERE id = 2").fetchone()[0] == "private"
        undo(sc, run_id)  # the owner restores, policies do not hide rows from it
        assert snapshot(sc, "notes") == before
    finally:
        sc.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        sc.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_table_renamed_after_capture_still_undoes(sc, run_bot, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open')")
    track(sc, "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'resolved'")
    sc.execute("ALTER TABLE tickets RENAME TO support_tickets")
    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    assert "support_tickets" in result.output
    assert sc.execute("SELECT status FROM support_tickets").fetchone()[0] == "open"


def test_table_dropped_after_capture_is_said_and_the_rest_undone_only_with_force(sc, run_bot, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE scratch (id int PRIMARY KEY)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open')")
    track(sc, "tickets", "scratch")
    run_id = run_bot("UPDATE tickets SET status = 'resolved'", "INSERT INTO scratch VALUES (1)")
    sc.execute("DROP TABLE scratch")
    assert "dropped" in cli("show", str(run_id)).output
    refused = cli("undo", str(run_id), "--yes")
    assert refused.exit_code == 2, refused.output
    assert "was dropped" in refused.output and "--force" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert sc.execute("SELECT status FROM tickets").fetchone()[0] == "resolved"
    forced = cli("undo", str(run_id), "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert sc.execute("SELECT status FROM tickets").fetchone()[0] == "open"


def test_a_dsn_that_does_not_connect_names_no_password(cli_no_dsn):
    result = cli_no_dsn("runs", "--dsn", "postgresql://ops:s3cret-pw@127.0.0.1:1/app")
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output
    assert "cannot connect to" in result.output and "***" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture
def cli_no_dsn():
    from click.testing import CliRunner

    from sidecar.cli import cli

    return lambda *args: CliRunner().invoke(cli, list(args))


def test_no_dsn_keeps_libpqs_first_line_and_says_how_to_give_one(cli_no_dsn, monkeypatch, tmp_path):
    for var in ("SIDECAR_DSN", "DATABASE_URL", "PGSERVICE", "PGPORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGHOST", str(tmp_path))  # no server listens there
    result = cli_no_dsn("runs")
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert f'connection to server on socket "{tmp_path}/.s.PGSQL.' in line  # libpq's first line
    assert "No such file or directory" in line
    assert line.endswith("pass --dsn or set SIDECAR_DSN")


def test_a_bad_dsn_says_to_check_it_not_to_pass_one(cli_no_dsn, monkeypatch):
    monkeypatch.delenv("SIDECAR_DSN", raising=False)
    result = cli_no_dsn("runs", "--dsn", "postgresql://ops@127.0.0.1:1/app")
    assert result.exit_code == 1
    assert 'connection to server at "127.0.0.1", port 1 failed' in result.output
    assert result.output.strip().endswith("check the --dsn value")
    assert "pass --dsn" not in result.output
