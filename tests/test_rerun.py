"""Steps and reruns: a batch that dies half-way is finished by a rerun, never doubled."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

import sidecar
from tests.fix_sidecar import track

N = 10


@pytest.fixture
def notes(sc):
    sc.execute(
        "CREATE TABLE tickets (id int PRIMARY KEY, status text);"
        "CREATE TABLE billing_notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " ticket_id int REFERENCES tickets, note text)"
    )
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, %s) g", (N,))
    track(sc, "tickets", "billing_notes")
    return sc


def note_batch(conn, run, die_at=None, killer=None):
    """The automation: one note per ticket, each ticket one step."""
    for t in run.steps(range(1, N + 1), key=lambda t: f"note:ticket-{t}",
                       touches=lambda t: [("tickets", {"id": t})]):
        conn.execute("INSERT INTO billing_notes (ticket_id, note) VALUES (%s, 'matched')", (t,))
        conn.execute("UPDATE tickets SET status = 'noted' WHERE id = %s", (t,))
        if t == die_at:
            killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def count_notes(conn):
    return conn.execute("SELECT count(*), count(DISTINCT ticket_id) FROM billing_notes").fetchone()


def kill_batch(notes, make_conn, die_at=6):
    bot = make_conn(application_name="note-bot")
    admin = make_conn()
    with pytest.raises(psycopg.OperationalError):
        with sidecar.Run(bot, "note-bot") as run:
            note_batch(bot, run, die_at=die_at, killer=admin)
    return run.run_id


def test_killed_batch_keeps_completed_steps_and_shows_abandoned(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn)
    # Steps 1..5 committed with their writes; step 6 died with its transaction.
    assert count_notes(notes) == (5, 5)
    assert notes.execute("SELECT count(*) FROM sidecar.steps WHERE run_id = %s", (run_id,)).fetchone()[0] == 5
    runs = json.loads(cli("runs", "--json").output)["runs"]
    assert runs[0]["status"] == "running" and runs[0]["alive"] is False and runs[0]["steps_done"] == 5
    assert "abandoned" in cli("runs").output


def test_rerun_does_only_what_is_left(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn)
    result = cli("rerun", str(run_id)[:8])
    assert result.exit_code == 0, result.output
    assert "completed     note:ticket-5" in result.output
    # The step the bot was cut off on could not record its failure; the rerun names it all the same.
    assert "failed        note:ticket-6  (the run stopped while on it (its session ended))" in result.output
    assert "never started note:ticket-7" in result.output
    rerun_id = result.output.split("Rerun ")[1].split(":")[0]
    bot = make_conn()
    with sidecar.Run(bot, "note-bot", run_id=rerun_id) as run:
        note_batch(bot, run)
    assert count_notes(notes) == (N, N)
    row = notes.execute("SELECT rerun_of, status FROM sidecar.runs WHERE run_id = %s", (rerun_id,)).fetchone()
    assert row == (run_id, "succeeded")
    # Once more: everything is done, so no rerun is opened (no empty run left behind).
    runs_before = notes.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0]
    again = cli("rerun", str(run_id)[:8])
    assert again.exit_code == 0, again.output
    assert "Nothing left to redo: no rerun opened." in again.output
    assert notes.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == runs_before
    assert count_notes(notes) == (N, N)


def test_a_rerun_says_which_done_steps_were_undone_since(notes, make_conn, cli):
    """An undone step is still done for the lineage, so a rerun does not redo it (the operator
    undid it on purpose): the rerun says so rather than calling it completed."""
    run_id = kill_batch(notes, make_conn)
    assert cli("undo", str(run_id), "--action", "note:ticket-2", "--yes").exit_code == 0

    result = cli("rerun", str(run_id)[:8])

    assert result.exit_code == 0, result.output
    undo_run = notes.execute("SELECT run_id FROM sidecar.runs WHERE undo_of = %s", (run_id,)).fetchone()[0]
    assert (f"completed     note:ticket-2  (by run {str(run_id)[:8]}; undone since by run {str(undo_run)[:8]}, "
            "and not redone by a rerun)") in result.output
    assert f"completed     note:ticket-3  (by run {str(run_id)[:8]})\n" in result.output
    assert "Rerun " in result.output and "note:ticket-2," not in result.output.split("Rerun ")[1]


def test_two_concurrent_reruns_still_give_exactly_n(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn, die_at=3)
    rerun_id = cli("rerun", str(run_id)).output.split("Rerun ")[1].split(":")[0]
    errors = []

    def attempt():
        conn = make_conn()
        try:
            with sidecar.Run(conn, "note-bot", run_id=rerun_id) as run:
                note_batch(conn, run)
        except Exception as exc:  # a clear failure is allowed; a double write is not
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_notes(notes) == (N, N)


def test_rerun_skips_a_step_whose_row_a_person_changed(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn, die_at=6)
    notes.execute("UPDATE tickets SET status = 'handled by Dana' WHERE id = 8")  # a person, untagged
    result = cli("rerun", str(run_id)[:8])
    assert "Step note:ticket-8 skipped: a person changed tickets #8 after the run" in result.output
    rerun_id = result.output.split("Rerun ")[1].split(":")[0]
    bot = make_conn()
    with sidecar.Run(bot, "note-bot", run_id=rerun_id) as run:
        note_batch(bot, run)
    assert count_notes(notes) == (N - 1, N - 1)
    assert notes.execute("SELECT status FROM tickets WHERE id = 8").fetchone()[0] == "handled by Dana"
    log = notes.execute("SELECT summary, detail FROM sidecar.events WHERE kind = 'rerun'").fetchone()
    assert "1 step skipped" in log[0]
    assert any("note:ticket-8 skipped" in line for line in log[1]["log"])
    # --force redoes it anyway.
    forced = cli("rerun", str(run_id)[:8], "--force")
    assert "allowed despite" in notes.execute(
        "SELECT detail::text FROM sidecar.events WHERE kind = 'rerun' ORDER BY event_id DESC LIMIT 1").fetchone()[0]
    assert "note:ticket-8" in forced.output.split("Rerun ")[1]


def test_rerun_of_a_live_run_needs_force(notes, make_conn, cli):
    bot = make_conn()
    run_id = bot.execute("SELECT sidecar.start_run('note-bot')").fetchone()[0]
    bot.execute("SELECT sidecar.plan_steps('[\"a\", \"b\"]')")
    result = cli("rerun", str(run_id))
    assert result.exit_code == 2
    assert "still held by a live session" in result.output
    assert cli("rerun", str(run_id), "--force").exit_code == 0


def test_sql_steps_skip_what_is_done_and_say_who_did_it(notes, make_conn):
    bot = make_conn()
    bot.execute("SELECT sidecar.start_run('note-bot')")
    with bot.transaction():
        assert bot.execute("SELECT sidecar.begin_step('note:ticket-1')").fetchone()[0] is True
        bot.execute("INSERT INTO billing_notes (ticket_id, note) VALUES (1, 'x')")
        bot.execute("SELECT sidecar.end_step()")
    # The same run beginning a key it completed is a second piece of work under one key: refused...
    with pytest.raises(psycopg.Error) as conflict:
        bot.execute("SELECT sidecar.begin_step('note:ticket-1')")
    assert conflict.value.sqlstate == "SC012"
    assert "already done by this run" in conflict.value.diag.message_primary
    # ...unless the caller says it is the same work: then it is skipped.
    with bot.transaction():
        assert bot.execute("SELECT sidecar.begin_step('note:ticket-1', p_same_work => true)").fetchone()[0] is False
        who = bot.execute("SELECT run_id FROM sidecar.step_done('note:ticket-1')").fetchone()
        assert who is not None
    # A step is an action: one undo unit.
    assert notes.execute("SELECT key FROM sidecar.actions").fetchall() == [("note:ticket-1",)]
    with pytest.raises(psycopg.Error) as err:
        bot.execute("SELECT sidecar.end_step()")
    assert err.value.sqlstate == "SC007"
    assert "no step is open in this transaction" in str(err.value)


def test_rerun_exec_runs_the_command_attached(notes, make_conn, cli, dsn, tmp_path):
    run_id = kill_batch(notes, make_conn, die_at=2)
    out = tmp_path / "env.txt"
    result = cli("rerun", str(run_id)[:8], "--exec",
                 f'echo "$SIDECAR_RUN_ID $SIDECAR_RERUN_OF $SIDECAR_STEPS" > {out}')
    assert result.exit_code == 0, result.output
    rerun_id, rerun_of, steps = out.read_text().split()
    assert rerun_of == str(run_id)
    assert steps.split(",")[0] == "note:ticket-2"
    assert notes.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (rerun_id,)).fetchone()[0] == "succeeded"
