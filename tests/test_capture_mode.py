"""Capture modes: row triggers (--capture-mode row) write the same history as statement
triggers, group a statement's rows under one statement row, and undo exactly what ran."""

import psycopg
import pytest
from psycopg import sql

import sidecar.capture.schema
from tests.fix_sidecar import snapshot, track, undo


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text, n int)")
    sc.execute("INSERT INTO tickets SELECT g, 'open', 0 FROM generate_series(1, 5) g")
    track(sc, "tickets", capture_mode="row")
    return sc


def _row_level(conn) -> dict[str, bool]:
    """Each capture trigger of tickets: fires per row?"""
    return {name: bool(tgtype & 1) for name, tgtype in conn.execute(
        "SELECT tgname, tgtype FROM pg_trigger WHERE tgrelid = 'tickets'::regclass "
        "AND tgname LIKE 'sidecar\\_capture\\_%' ORDER BY 1")}


def _statements(conn, run_id):
    conn.execute("SELECT sidecar._settle()")  # row mode writes statement rows when history is read
    return conn.execute("SELECT op::text, count(*) FROM sidecar.statements s WHERE run_id = %s "
                        "GROUP BY stmt_id, op ORDER BY stmt_id", (run_id,)).fetchall()


def _images(conn, run_id):
    conn.execute("SELECT sidecar._settle()")
    log = conn.execute("SELECT log_table FROM sidecar.tracked WHERE relid = 'tickets'::regclass").fetchone()[0]
    return conn.execute(sql.SQL(
        "SELECT s.op::text, l._kind::text, l.id, l.status, l.n FROM sidecar.{} l "
        "JOIN sidecar.statements s ON s.stmt_id = l._stmt WHERE s.run_id = %s "
        "ORDER BY l._stmt, l.id, l._kind DESC").format(sql.Identifier(log)), (run_id,)).fetchall()


def test_row_mode_uses_row_triggers_and_switches_back(tickets, cli):
    assert _row_level(tickets) == {"sidecar_capture_delete": True, "sidecar_capture_insert": True,
                                   "sidecar_capture_update": True}
    result = cli("track", "tickets", "--capture-mode", "statement")
    assert result.exit_code == 0, result.output
    assert set(_row_level(tickets).values()) == {False}
    # Tracking again without a mode keeps the table's mode.
    assert cli("track", "tickets").exit_code == 0
    assert set(_row_level(tickets).values()) == {False}
    result = cli("track", "tickets", "--capture-mode", "row")
    assert "(capture tagged, row triggers, key id)" in result.output
    assert set(_row_level(tickets).values()) == {True}


def test_row_mode_one_statement_row_per_statement(tickets, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'done' WHERE id <= 3",
                     "UPDATE tickets SET n = n + 1 WHERE id <= 2",
                     "INSERT INTO tickets VALUES (6, 'new', 0), (7, 'new', 0)",
                     "DELETE FROM tickets WHERE id = 5",
                     "UPDATE tickets SET status = status WHERE id = 4")  # changes nothing: not captured
    assert _statements(tickets, run_id) == [("U", 1), ("U", 1), ("I", 1), ("D", 1)]
    assert [(op, kind, i) for op, kind, i, *_ in _images(tickets, run_id)] == [
        ("U", "O", 1), ("U", "N", 1), ("U", "O", 2), ("U", "N", 2), ("U", "O", 3), ("U", "N", 3),
        ("U", "O", 1), ("U", "N", 1), ("U", "O", 2), ("U", "N", 2),
        ("I", "N", 6), ("I", "N", 7), ("D", "O", 5)]


def test_row_mode_statements_sharing_a_timestamp_stay_apart_and_undo_exactly(tickets, bot):
    """Two UPDATEs of the same row in one function call (one statement_timestamp, one
    transaction, one action): each is its own statement, so undo finds the first before-image."""
    before = snapshot(tickets, "tickets")
    tickets.execute("""CREATE FUNCTION twice() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE tickets SET status = 'one', n = 1 WHERE id = 1;
            UPDATE tickets SET status = 'two', n = 2 WHERE id = 1;
            UPDATE tickets SET status = 'three', n = 3 WHERE id IN (1, 2);
        END $$""")
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("SELECT twice()")
    bot.execute("SELECT sidecar.finish_run()")
    assert [op for op, _ in _statements(tickets, run_id)] == ["U", "U", "U"]
    undo(tickets, run_id)
    assert snapshot(tickets, "tickets") == before


def test_row_mode_without_table_statistics_keeps_each_row_apart_and_undoes_exactly(tickets, bot):
    """With track_counts off the statement key has no count: every row is its own statement,
    never grouped with a later change of the same row."""
    before = snapshot(tickets, "tickets")
    bot.execute("SET track_counts = off")
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    with bot.transaction():
        bot.execute("UPDATE tickets SET n = 1 WHERE id IN (1, 2)")
        bot.execute("UPDATE tickets SET n = 2 WHERE id = 1")
    bot.execute("SELECT sidecar.finish_run()")
    assert [(kind, i, n) for _, kind, i, _, n in _images(tickets, run_id)] == [
        ("O", 1, 0), ("N", 1, 1), ("O", 2, 0), ("N", 2, 1), ("O", 1, 1), ("N", 1, 2)]
    assert len(_statements(tickets, run_id)) == 3
    undo(tickets, run_id)
    assert snapshot(tickets, "tickets") == before


def test_row_mode_rolled_back_savepoint_leaves_nothing_and_later_rows_land(tickets, bot):
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    with bot.transaction():
        bot.execute("UPDATE tickets SET n = 10 WHERE id = 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            with bot.transaction():
                bot.execute("UPDATE tickets SET n = 20 WHERE id = 1")
                bot.execute("SELECT 1/0")
        bot.execute("UPDATE tickets SET n = 30 WHERE id = 1")
    bot.execute("SELECT sidecar.finish_run()")
    assert [(kind, n) for _, kind, _, _, n in _images(tickets, run_id)] == [("O", 0), ("N", 10), ("O", 10), ("N", 30)]


def test_row_mode_untagged_writes_cost_no_history(tickets):
    tickets.execute("UPDATE tickets SET n = 5")
    tickets.execute("DELETE FROM tickets WHERE id = 5")
    tickets.execute("SELECT sidecar._settle()")
    assert tickets.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 0


def test_row_mode_capture_all_records_untagged_writes(sc):
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    track(sc, "notes", capture="all", capture_mode="row")
    sc.execute("INSERT INTO notes VALUES (1, 'a'), (2, 'b')")
    sc.execute("UPDATE notes SET body = 'c'")
    sc.execute("SELECT sidecar._settle()")
    assert sc.execute("SELECT op::text, run_id FROM sidecar.statements ORDER BY stmt_id").fetchall() == [
        ("I", None), ("U", None)]


def test_row_mode_paused_automation_writes_nothing(tickets, bot, sc):
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    sc.execute("SELECT sidecar.pause('ticket-bot', 'checking')")
    with pytest.raises(psycopg.Error) as err:
        bot.execute("UPDATE tickets SET n = 9 WHERE id = 1")
    assert err.value.diag.sqlstate == "SC001"
    assert sc.execute("SELECT n FROM tickets WHERE id = 1").fetchone()[0] == 0
    assert _statements(sc, run_id) == []


def test_bad_capture_mode_is_refused(sc, cli):
    sc.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(psycopg.Error, match="capture mode 'rows' is not known; use statement or row"):
        sc.execute("SELECT sidecar.track('t', 'tagged', NULL, NULL, 'rows')")
    assert sc.execute("SELECT count(*) FROM sidecar.tracked").fetchone()[0] == 0
    result = cli("track", "t", "--capture-mode", "rows")
    assert result.exit_code != 0 and "rows" in result.output


def test_row_mode_pause_that_only_looks_like_it_applies_lets_the_write_land(tickets, bot, sc):
    """The trigger's one look at the pauses finds a superset of those that apply: an
    automation named like the table's tracked id is paused. The write lands, once."""
    tracked_id = sc.execute("SELECT tracked_id FROM sidecar.tracked WHERE relid = 'tickets'::regclass").fetchone()[0]
    sc.execute("SELECT sidecar.pause(%s, 'another automation')", (str(tracked_id),))
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET n = 9 WHERE id <= 2")
    bot.execute("UPDATE tickets SET n = 8 WHERE id = 3")
    bot.execute("SELECT sidecar.finish_run()")
    assert _statements(sc, run_id) == [("U", 1), ("U", 1)]
    assert [(kind, i, n) for _, kind, i, _, n in _images(sc, run_id)] == [
        ("O", 1, 0), ("N", 1, 9), ("O", 2, 0), ("N", 2, 9), ("O", 3, 0), ("N", 3, 8)]



# -- statement rows made from heads when history is read (migration 027) ---------------------


def _plain(dsn):
    """A connection that does not settle by itself (tests/fix_db.Reader does)."""
    return psycopg.connect(dsn, autocommit=True)


def test_row_mode_writes_only_images_and_readers_make_the_statements(tickets, bot, dsn):
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    with bot.transaction():
        bot.execute("UPDATE tickets SET status = 'done' WHERE id <= 2")
        bot.execute("SET LOCAL sidecar.action = 'close:3'")
        bot.execute("DELETE FROM tickets WHERE id = 3")
    bot.execute("INSERT INTO tickets VALUES (6, 'new', 0)")
    with _plain(dsn) as raw:
        assert raw.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 0
        assert raw.execute("SELECT sidecar._settle()").fetchone()[0] == 3
        assert raw.execute("SELECT sidecar._settle()").fetchone()[0] == 0
        rows = raw.execute(
            "SELECT s.op::text, a.key, s.at = a.started_at, s.db_user = session_user FROM sidecar.statements s "
            "JOIN sidecar.actions a USING (action_id) WHERE s.run_id = %s ORDER BY s.stmt_id", (run_id,)).fetchall()
    assert [(op, key.split(":")[0] if key.startswith("tx:") else key) for op, key, *_ in rows] == [
        ("U", "tx"), ("D", "close:3"), ("I", "tx")]
    assert rows[0][1] != rows[2][1] and all(r[2] and r[3] for r in rows[1:])


def test_row_mode_a_transaction_open_across_settles_is_settled_once_it_commits(tickets, bot, make_conn, dsn):
    """Statement ids are drawn in one order and committed in another: what a transaction still
    open wrote is settled by a later read, however many reads came in between."""
    slow = make_conn(autocommit=False, application_name="ticket-bot")
    run_id = slow.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    slow.commit()
    slow.execute("UPDATE tickets SET n = 1 WHERE id = 1")  # the lower statement id, left open
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    with _plain(dsn) as raw:
        for id_ in (2, 3, 4):
            bot.execute("UPDATE tickets SET n = 2 WHERE id = %s", (id_,))
            raw.execute("SELECT sidecar._settle()")
        assert raw.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 3
        slow.commit()
        assert raw.execute("SELECT sidecar._settle()").fetchone()[0] == 1
        assert raw.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()[0] == 1


def test_row_mode_a_pause_stops_a_session_that_has_written_already(tickets, bot, sc):
    """A session keeps its gate answer only until something moves sidecar.gate_seq."""
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET n = 1 WHERE id = 1")
    sc.execute("SELECT sidecar.pause('ticket-bot', 'wrong refunds')")
    with pytest.raises(psycopg.Error) as err:
        bot.execute("UPDATE tickets SET n = 2 WHERE id = 2")
    assert err.value.diag.sqlstate == "SC001" and "wrong refunds" in str(err.value)
    assert sc.execute("SELECT n FROM tickets WHERE id = 2").fetchone()[0] == 0
    sc.execute("SELECT sidecar.resume('ticket-bot')")
    bot.execute("UPDATE tickets SET n = 3 WHERE id = 3")
    assert [n for _, n in _statements(sc, run_id)] == [1, 1]


def test_row_mode_a_run_undone_meanwhile_refuses_its_sessions_next_write(tickets, bot, cli, sc):
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET n = 1 WHERE id = 1")
    assert cli("undo", str(run_id), "--yes").exit_code == 0
    with pytest.raises(psycopg.Error) as err:
        bot.execute("UPDATE tickets SET n = 2 WHERE id = 2")
    assert err.value.diag.sqlstate == "SC009"
    assert sc.execute("SELECT n FROM tickets ORDER BY id").fetchall() == [(0,)] * 5


def test_a_table_leaving_row_mode_takes_its_statements_along(tickets, bot, dsn):
    """Only row-mode tables are read for heads: a table switched to statement mode is settled
    as it switches, so none of its row-mode statements is left behind."""
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET n = 1 WHERE id <= 2")
    with _plain(dsn) as raw:
        raw.execute("SELECT sidecar.track('tickets', 'tagged', NULL, NULL, 'statement')")
        assert raw.execute("SELECT op::text FROM sidecar.statements WHERE run_id = %s",
                           (run_id,)).fetchall() == [("U",)]


def test_row_mode_a_column_added_while_a_session_writes_on_is_captured(tickets, bot):
    """Without the event triggers that re-render capture on ALTER TABLE, every statement checks
    the table's shape, also in a session that kept its gate answer."""
    tickets.execute("ALTER EVENT TRIGGER sidecar_watch_alter DISABLE")
    tickets.execute("ALTER EVENT TRIGGER sidecar_watch_drop DISABLE")
    sidecar.capture.schema.install(tickets)
    assert tickets.execute("SELECT bool_or(shape_watched) FROM sidecar.tracked").fetchone()[0] is False
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET n = 1 WHERE id = 1")
    tickets.execute("ALTER TABLE tickets ADD COLUMN priority int")
    bot.execute("UPDATE tickets SET priority = 2 WHERE id IN (2, 3)")
    bot.execute("UPDATE tickets SET priority = 3 WHERE id = 4")
    assert [op for op, _ in _statements(tickets, run_id)] == ["U", "U", "U"]
    log = tickets.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    assert tickets.execute(sql.SQL(
        "SELECT l._kind::text, l.id, l.priority FROM sidecar.{} l JOIN sidecar.statements s ON s.stmt_id = l._stmt "
        "WHERE s.run_id = %s ORDER BY l._stmt, l.id, l._kind DESC").format(sql.Identifier(log)), (run_id,)
    ).fetchall()[2:] == [("O", 2, None), ("N", 2, 2), ("O", 3, None), ("N", 3, 2), ("O", 4, None), ("N", 4, 3)]
