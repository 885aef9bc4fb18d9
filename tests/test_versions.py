"""What differs between the PostgreSQL majors sidecar supports (14 to 18), each side tested.

Every difference has a test for the servers that have the feature and one for those that do
not, so that the whole suite, run on each major (`.ci/run`), proves both paths:

- MERGE (15+): one statement firing the INSERT, UPDATE and DELETE triggers; on 14 a bot gets
  the same from a writable CTE, captured and undone the same way;
- MERGE ... WHEN NOT MATCHED BY SOURCE (17+): a MERGE that deletes rows its source lacks;
- UNIQUE NULLS NOT DISTINCT (15+): an undo that would give a row back a NULL another row
  holds now is a conflict; with NULLs distinct (every major) it is no conflict at all;
- virtual generated columns (18+, the default kind there): left to the database by capture
  and undo, as stored ones are on every major.

Driven through the `sidecar` CLI and SQL only.
"""

from __future__ import annotations

import json

import pytest

from tests.fix_sidecar import snapshot


def _track(cli, *tables: str) -> None:
    for table in tables:
        result = cli("track", table)
        assert result.exit_code == 0, result.output


def _run(bot, *statements: str) -> str:
    """The bot's run: each statement its own transaction; returns the run id."""
    run_id = str(bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0])
    for statement in statements:
        bot.execute(statement)
    bot.execute("SELECT sidecar.finish_run()")
    return run_id


@pytest.fixture
def tickets(sc, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)")
    sc.execute("INSERT INTO tickets VALUES (41, 'open'), (42, 'needs review'), (44, 'waiting')")
    _track(cli, "tickets")
    return sc


def _changes(cli, run_id: str) -> str:
    shown = cli("show", run_id)
    assert shown.exit_code == 0, shown.output
    return shown.stdout


# -- MERGE (15+) and its equivalent on 14 ----------------------------------------------------

# The same net change, written two ways: 41 updated, 44 deleted, 61 added.
NET_CHANGES = ("tickets #41: status 'open' -> 'closed'", "tickets #44: deleted (was status 'waiting')",
               "tickets #61: added (status 'new')")


@pytest.mark.pg_version(min=15)
def test_merge_is_captured_and_undone(tickets, bot, cli):
    before = snapshot(tickets, "tickets")
    run_id = _run(bot, """MERGE INTO tickets t
        USING (VALUES (41, 'closed'), (44, 'spam'), (61, 'new')) AS s(id, status) ON t.id = s.id
        WHEN MATCHED AND s.status = 'spam' THEN DELETE
        WHEN MATCHED THEN UPDATE SET status = s.status
        WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.status)""")
    shown = _changes(cli, run_id)
    for change in NET_CHANGES:
        assert change in shown, shown

    result = cli("undo", run_id, "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(tickets, "tickets") == before


@pytest.mark.pg_version(max=14)
def test_before_15_merge_is_refused_and_a_writable_cte_is_captured_and_undone(tickets, bot, cli):
    """On 14 the bot's MERGE is a syntax error that leaves nothing behind; the same change as one
    statement (a writable CTE) fires the same three triggers and is undone the same way."""
    import psycopg

    before = snapshot(tickets, "tickets")
    with pytest.raises(psycopg.errors.SyntaxError):
        _run(bot, "MERGE INTO tickets t USING (VALUES (41)) AS s(id) ON t.id = s.id "
                  "WHEN MATCHED THEN DELETE")
    bot.execute("SELECT sidecar.finish_run('failed')")
    assert snapshot(tickets, "tickets") == before
    run_id = _run(bot, """WITH gone AS (DELETE FROM tickets WHERE id = 44),
                               changed AS (UPDATE tickets SET status = 'closed' WHERE id = 41)
                          INSERT INTO tickets VALUES (61, 'new')""")
    shown = _changes(cli, run_id)
    for change in NET_CHANGES:
        assert change in shown, shown

    result = cli("undo", run_id, "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(tickets, "tickets") == before


@pytest.mark.pg_version(min=17)
def test_merge_not_matched_by_source_deletes_are_captured_and_undone(tickets, bot, cli):
    before = snapshot(tickets, "tickets")
    run_id = _run(bot, """MERGE INTO tickets t USING (VALUES (41, 'closed')) AS s(id, status) ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET status = s.status
        WHEN NOT MATCHED BY SOURCE THEN DELETE""")
    assert tickets.execute("SELECT id FROM tickets").fetchall() == [(41,)]
    shown = _changes(cli, run_id)
    assert "tickets #42: deleted (was status 'needs review')" in shown, shown

    assert cli("undo", run_id, "--yes").exit_code == 0
    assert snapshot(tickets, "tickets") == before


@pytest.mark.pg_version(min=15, max=16)
def test_before_17_merge_not_matched_by_source_is_refused_and_nothing_lands(tickets, bot):
    import psycopg

    before = snapshot(tickets, "tickets")
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    with pytest.raises(psycopg.errors.SyntaxError):
        bot.execute("MERGE INTO tickets t USING (VALUES (41)) AS s(id) ON t.id = s.id "
                    "WHEN NOT MATCHED BY SOURCE THEN DELETE")
    assert snapshot(tickets, "tickets") == before
    assert tickets.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 0


# -- unique keys and NULLs ---------------------------------------------------------------------


def _coupons(sc, cli, nulls: str) -> None:
    sc.execute(f"CREATE TABLE coupons (id int PRIMARY KEY, code text, UNIQUE {nulls} (code))")
    sc.execute("INSERT INTO coupons VALUES (1, NULL), (2, 'B')")
    _track(cli, "coupons")


@pytest.mark.pg_version(min=15)
def test_nulls_not_distinct_a_null_taken_since_is_a_conflict(sc, bot, cli, make_conn):
    _coupons(sc, cli, "NULLS NOT DISTINCT")
    run_id = _run(bot, "UPDATE coupons SET code = 'A' WHERE id = 1")
    sc.execute("UPDATE coupons SET code = NULL WHERE id = 2")  # a person: the one NULL is row 2's now

    result = cli("undo", run_id, "--yes", "--json")

    assert result.exit_code == 3, result.output
    conflicts = json.loads(result.stdout)["undo"]["conflicts"]
    assert [(c["key"], c["reason"]) for c in conflicts] == [
        ({"id": 1}, "another row holds its old value of a unique key now, so it cannot be restored as it was")]
    assert sc.execute("SELECT id, code FROM coupons ORDER BY id").fetchall() == [(1, "A"), (2, None)]


def test_nulls_distinct_a_null_held_by_another_row_is_no_conflict(sc, bot, cli):
    """Every major (and the only kind before 15): two rows may hold NULL, so the undo puts it back."""
    _coupons(sc, cli, "")
    run_id = _run(bot, "UPDATE coupons SET code = 'A' WHERE id = 1")
    sc.execute("UPDATE coupons SET code = NULL WHERE id = 2")

    result = cli("undo", run_id, "--yes")

    assert result.exit_code == 0, result.output
    assert sc.execute("SELECT id, code FROM coupons ORDER BY id").fetchall() == [(1, None), (2, None)]


@pytest.mark.pg_version(max=14)
def test_before_15_nulls_not_distinct_is_refused(sc):
    import psycopg

    with pytest.raises(psycopg.errors.SyntaxError):
        sc.execute("CREATE TABLE coupons (id int PRIMARY KEY, code text UNIQUE NULLS NOT DISTINCT)")


# -- generated columns -------------------------------------------------------------------------


def _invoices(sc, cli, kind: str) -> None:
    sc.execute(f"CREATE TABLE invoices (id int PRIMARY KEY, net int NOT NULL, "
               f"gross int GENERATED ALWAYS AS (net * 2) {kind})")
    sc.execute("INSERT INTO invoices (id, net) VALUES (1, 10), (2, 20)")
    _track(cli, "invoices")


@pytest.mark.parametrize("kind", [
    "STORED",
    pytest.param("VIRTUAL", marks=pytest.mark.pg_version(min=18)),
])
def test_generated_columns_are_left_to_the_database(sc, bot, cli, kind):
    _invoices(sc, cli, kind)
    before = snapshot(sc, "invoices")
    run_id = _run(bot, "UPDATE invoices SET net = 15 WHERE id = 1", "DELETE FROM invoices WHERE id = 2",
                  "INSERT INTO invoices (id, net) VALUES (3, 30)")
    assert "invoices #1: net 10 -> 15" in _changes(cli, run_id)

    result = cli("undo", run_id, "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "invoices") == before == ["(1,10,20)", "(2,20,40)"]


@pytest.mark.pg_version(max=17)
def test_before_18_virtual_generated_columns_are_refused(sc):
    import psycopg

    with pytest.raises(psycopg.errors.SyntaxError):
        sc.execute("CREATE TABLE invoices (id int PRIMARY KEY, net int, gross int GENERATED ALWAYS AS (net * 2) VIRTUAL)")
