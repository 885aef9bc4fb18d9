"""The pause gate in an incident: a pause stops the next write of sessions already open,
a resume lets them through, and an undo works under every kind of pause."""

from __future__ import annotations

import psycopg
import pytest

import sidecar
from tests.fix_sidecar import snapshot, track

PAUSES = {
    # kind: (pause args, resume args, what the refusal names)
    "automation": (("ticket-bot",), ("ticket-bot",), 'automation "ticket-bot" is paused'),
    "every": (("*",), ("*",), 'automation "*" (every automation) is paused'),
    "table": (("--table", "tickets"), ("--table", "tickets"), "table public.tickets is paused"),
}


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 5) g")
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    track(sc, "tickets", "notes")
    return sc


def _open_session(make_conn):
    """A bot's session with a run already started and one write done before any pause."""
    bot = make_conn(application_name="ticket-bot")
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'bot 1' WHERE id = 1")
    return bot, run_id


WRITES = {
    "UPDATE": "UPDATE tickets SET status = 'while paused' WHERE id = 2",
    "INSERT": "INSERT INTO tickets VALUES (9, 'while paused')",
    "DELETE": "DELETE FROM tickets WHERE id = 3",
}


@pytest.mark.parametrize("kind", PAUSES)
def test_a_pause_stops_every_kind_of_write_of_a_session_already_open(tickets, make_conn, cli, kind):
    bot, run_id = _open_session(make_conn)
    before = snapshot(tickets, "tickets")
    pause_args, _, names = PAUSES[kind]
    result = cli("pause", *pause_args, "--reason", "incident 7")
    assert result.exit_code == 0, result.output

    for op, statement in WRITES.items():
        with pytest.raises(psycopg.Error) as caught:
            bot.execute(statement)
        assert caught.value.sqlstate == "SC001", op
        assert names in str(caught.value) and "incident 7" in str(caught.value), op
        assert "Nothing of this statement was written" in caught.value.diag.message_hint
    assert snapshot(tickets, "tickets") == before
    # Nothing of the refused writes was captured either: only the write before the pause.
    assert tickets.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s",
                           (run_id,)).fetchone()[0] == 1


@pytest.mark.parametrize("kind", PAUSES)
def test_resume_lets_the_same_session_write_again(tickets, make_conn, cli, kind):
    bot, run_id = _open_session(make_conn)
    pause_args, resume_args, _ = PAUSES[kind]
    assert cli("pause", *pause_args, "--reason", "incident 7").exit_code == 0
    with pytest.raises(psycopg.Error):
        bot.execute(WRITES["UPDATE"])

    result = cli("resume", *resume_args)
    assert result.exit_code == 0, result.output
    for statement in WRITES.values():
        bot.execute(statement)
    rows = dict(tickets.execute("SELECT id, status FROM tickets").fetchall())
    assert rows[2] == "while paused" and rows[9] == "while paused" and 3 not in rows
    assert tickets.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s",
                           (run_id,)).fetchone()[0] == 4
    assert tickets.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    kinds = [r[0] for r in tickets.execute("SELECT kind FROM sidecar.events ORDER BY event_id")]
    assert kinds[-2:] == ["pause", "resume"]


def test_a_table_pause_stops_only_that_table(tickets, make_conn, cli):
    bot, _ = _open_session(make_conn)
    assert cli("pause", "--table", "tickets", "--reason", "bad matches").exit_code == 0
    bot.execute("INSERT INTO notes VALUES (1, 'still allowed')")
    with pytest.raises(psycopg.Error) as caught:
        bot.execute(WRITES["UPDATE"])
    assert caught.value.sqlstate == "SC001"
    assert caught.value.diag.message_hint.endswith("sidecar resume --table public.tickets")
    assert tickets.execute("SELECT body FROM notes").fetchall() == [("still allowed",)]


def test_an_automation_pause_stops_only_that_automation(tickets, make_conn, cli):
    bot, _ = _open_session(make_conn)
    other = make_conn(application_name="billing-bot")
    other.execute("SELECT sidecar.start_run('billing-bot')")
    assert cli("pause", "ticket-bot", "--reason", "wrong refunds").exit_code == 0
    other.execute("UPDATE tickets SET status = 'billing' WHERE id = 4")
    with pytest.raises(psycopg.Error) as caught:
        bot.execute(WRITES["UPDATE"])
    assert caught.value.sqlstate == "SC001"
    assert tickets.execute("SELECT status FROM tickets WHERE id = 4").fetchone()[0] == "billing"


@pytest.mark.parametrize("capture", ["tagged", "all"])
def test_untagged_writes_pass_every_pause(sc, cli, capture):
    """A person's writes are never gated, on a table captured for runs only or for everyone."""
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 5) g")
    track(sc, "tickets", capture=capture)
    for pause_args, _, _ in PAUSES.values():
        assert cli("pause", *pause_args, "--reason", "incident 7").exit_code == 0
    sc.execute("UPDATE tickets SET status = 'a person' WHERE id = 5")
    sc.execute("INSERT INTO tickets VALUES (6, 'a person')")
    sc.execute("DELETE FROM tickets WHERE id = 4")
    assert sc.execute("SELECT id, status FROM tickets WHERE id >= 4 ORDER BY id").fetchall() == [
        (5, "a person"), (6, "a person")]
    captured = sc.execute("SELECT string_agg(op::text, '' ORDER BY stmt_id) FROM sidecar.statements "
                          "WHERE run_id IS NULL").fetchone()[0]
    assert captured == ("UID" if capture == "all" else None)


@pytest.mark.parametrize("kind", ["automation", "every"])
def test_a_paused_automation_cannot_start_a_run(tickets, make_conn, cli, kind):
    pause_args, resume_args, _ = PAUSES[kind]
    assert cli("pause", *pause_args, "--reason", "incident 7").exit_code == 0
    bot = make_conn(application_name="ticket-bot")
    with pytest.raises(psycopg.Error) as caught:
        bot.execute("SELECT sidecar.start_run('ticket-bot')")
    assert caught.value.sqlstate == "SC001"
    assert tickets.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == 0
    assert cli("resume", *resume_args).exit_code == 0
    bot.execute("SELECT sidecar.start_run('ticket-bot')")


def test_resume_of_what_is_not_paused_says_so(tickets, cli):
    assert tickets.execute("SELECT sidecar.resume('ticket-bot')").fetchone()[0] is False
    assert tickets.execute("SELECT sidecar.resume_table('tickets')").fetchone()[0] is False
    assert cli("pause", "ticket-bot", "--reason", "x").exit_code == 0
    # Resuming another scope lifts nothing.
    assert tickets.execute("SELECT sidecar.resume_table('tickets')").fetchone()[0] is False
    assert tickets.execute("SELECT sidecar.resume('*')").fetchone()[0] is False
    assert tickets.execute("SELECT target FROM sidecar.pauses").fetchall() == [("ticket-bot",)]


def test_each_resume_lifts_only_its_own_pause(tickets, make_conn, cli):
    bot, _ = _open_session(make_conn)
    for pause_args, _, _ in PAUSES.values():
        assert cli("pause", *pause_args, "--reason", "incident 7").exit_code == 0

    def left():
        return sorted(tickets.execute("SELECT scope || ':' || target FROM sidecar.pauses").fetchall())

    tracked = tickets.execute("SELECT tracked_id FROM sidecar.tracked WHERE relid = 'tickets'::regclass").fetchone()[0]
    assert cli("resume", "ticket-bot").exit_code == 0
    assert left() == [("automation:*",), (f"table:{tracked}",)]
    assert cli("resume", "--table", "tickets").exit_code == 0
    assert left() == [("automation:*",)]
    with pytest.raises(psycopg.Error):
        bot.execute(WRITES["UPDATE"])
    assert cli("resume", "*").exit_code == 0
    assert left() == []
    bot.execute(WRITES["UPDATE"])


def test_pause_table_of_an_untracked_table_is_refused(sc, cli):
    sc.execute("CREATE TABLE loose (id int PRIMARY KEY)")
    result = cli("pause", "--table", "loose", "--reason", "x")
    assert result.exit_code == 2
    assert "table public.loose is not tracked" in result.output
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


# -- undo under every kind of pause -------------------------------------------


def _bad_run(tickets, make_conn):
    bot = make_conn(application_name="ticket-bot")
    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("close:1"):
            bot.execute("UPDATE tickets SET status = 'bot' WHERE id = 1")
        with run.action("close:2"):
            bot.execute("UPDATE tickets SET status = 'bot' WHERE id = 2")
            bot.execute("INSERT INTO tickets VALUES (7, 'bot')")
            bot.execute("DELETE FROM tickets WHERE id = 3")
    return run.run_id


SCOPES = {
    "run": ((), {1, 2, 3, 7}),
    "action": (("--action", "close:2"), {2, 3, 7}),
    "row": (("--row", "tickets:2"), {2}),
}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", PAUSES)
def test_undo_works_under_every_kind_of_pause(tickets, make_conn, cli, kind, scope):
    before = dict(tickets.execute("SELECT id, status FROM tickets").fetchall())
    run_id = _bad_run(tickets, make_conn)
    after = dict(tickets.execute("SELECT id, status FROM tickets").fetchall())
    assert cli("pause", *PAUSES[kind][0], "--reason", "incident 7").exit_code == 0
    args, restored = SCOPES[scope]

    result = cli("undo", str(run_id), *args, "--yes")

    assert result.exit_code == 0, result.output
    now = dict(tickets.execute("SELECT id, status FROM tickets").fetchall())
    for key in {1, 2, 3, 7}:
        assert now.get(key) == (before if key in restored else after).get(key), key
    undo_run = tickets.execute("SELECT run_id FROM sidecar.runs WHERE undo_of = %s", (run_id,)).fetchone()
    assert undo_run is not None
    # The pause is still there.
    assert tickets.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 1


@pytest.mark.parametrize("kind", PAUSES)
def test_undo_sql_script_runs_under_every_kind_of_pause(tickets, make_conn, cli, dsn, kind):
    before = snapshot(tickets, "tickets")
    run_id = _bad_run(tickets, make_conn)
    assert cli("pause", *PAUSES[kind][0], "--reason", "incident 7").exit_code == 0
    result = cli("undo", str(run_id), "--sql")
    assert result.exit_code == 0, result.output
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute(result.output)
    assert snapshot(tickets, "tickets") == before


@pytest.mark.parametrize("kind", PAUSES)
def test_an_undo_can_itself_be_undone_under_a_pause(tickets, make_conn, cli, kind):
    run_id = _bad_run(tickets, make_conn)
    after = snapshot(tickets, "tickets")
    assert cli("pause", *PAUSES[kind][0], "--reason", "incident 7").exit_code == 0
    assert cli("undo", str(run_id), "--yes").exit_code == 0
    undo_run = tickets.execute("SELECT run_id FROM sidecar.runs WHERE undo_of = %s", (run_id,)).fetchone()[0]
    result = cli("undo", str(undo_run), "--yes")
    assert result.exit_code == 0, result.output
    assert snapshot(tickets, "tickets") == after


@pytest.mark.parametrize("kind", PAUSES)
def test_a_pause_stops_the_first_write_after_a_schema_change_nothing_watched(tickets, make_conn, cli, kind):
    """Without the event triggers, the first write after ALTER TABLE takes capture's shape-check
    path: the pause holds there too, and an undo still passes it."""
    tickets.execute("ALTER EVENT TRIGGER sidecar_watch_alter DISABLE")
    tickets.execute("ALTER EVENT TRIGGER sidecar_watch_drop DISABLE")
    assert cli("install").exit_code == 0  # capture now checks each statement's table shape itself
    bot, run_id = _open_session(make_conn)
    tickets.execute("ALTER TABLE tickets ADD COLUMN note text")
    assert cli("pause", *PAUSES[kind][0], "--reason", "incident 7").exit_code == 0
    with pytest.raises(psycopg.Error) as caught:
        bot.execute(WRITES["UPDATE"])
    assert caught.value.sqlstate == "SC001"
    assert tickets.execute("SELECT status FROM tickets WHERE id = 2").fetchone()[0] == "open"
    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    assert tickets.execute("SELECT status FROM tickets WHERE id = 1").fetchone()[0] == "open"
