"""Steps and reruns: a batch that dies half-way is finished by a rerun, never doubled."""

from __future__ import annotations

import json
import threading
import time
import uuid

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


def note_batch(conn, run, die_at=None, killer=None, did=None, same_work=False):
    """The automation: one note per ticket, each ticket one step (the tickets it did go to `did`)."""
    for t in run.steps(range(1, N + 1), key=lambda t: f"note:ticket-{t}",
                       touches=lambda t: [("tickets", {"id": t})], same_work=same_work):
        if did is not None:
            did.append(t)
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
    errors: list[BaseException] = []
    both_in = threading.Barrier(2, timeout=30)
    attached: list[int] = []
    did: dict[int, list[int]] = {0: [], 1: []}

    def attempt(i):
        conn = make_conn()
        try:
            with sidecar.Run(conn, "note-bot", run_id=rerun_id) as run:
                attached.append(conn.info.backend_pid)
                both_in.wait()  # both sessions hold the rerun before either starts a step
                # Two attempts of one run do the same work: said so, a step the other did is skipped.
                note_batch(conn, run, did=did[i], same_work=True)
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(attached)) == 2  # the two attempts overlapped, in two sessions
    # Neither failed: each step waits for the other session's attempt of it, then is skipped as done.
    assert errors == []
    assert sorted(did[0] + did[1]) == list(range(3, N + 1))  # each step left done exactly once
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
    run_id = bot.execute("SELECT sidecar.start_run('note-bot')").fetchone()[0]
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
        assert who == (run_id,)
        assert bot.execute("SELECT count(*) FROM sidecar.step_done('note:ticket-2')").fetchone()[0] == 0
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


def test_rerun_step_redoes_only_the_steps_named(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn, die_at=6)
    result = cli("rerun", str(run_id)[:8], "--step", "note:ticket-8", "--step", "note:ticket-6")
    assert result.exit_code == 0, result.output
    rerun_id = result.output.split("Rerun ")[1].split(":")[0]
    assert result.output.split("Rerun ")[1].split(": ", 1)[1].splitlines()[0] == "note:ticket-6, note:ticket-8"
    bot = make_conn()
    with sidecar.Run(bot, "note-bot", run_id=rerun_id) as run:
        note_batch(bot, run)
    noted = {r[0] for r in notes.execute("SELECT ticket_id FROM billing_notes")}
    assert noted == {1, 2, 3, 4, 5, 6, 8}
    # The rest is still left for another rerun.
    again = cli("rerun", str(run_id)[:8])
    assert again.exit_code == 0, again.output
    assert again.output.split("Rerun ")[1].split(": ", 1)[1].splitlines()[0] == "note:ticket-7, note:ticket-9, note:ticket-10"


def test_rerun_step_that_the_run_never_had_is_refused(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn, die_at=6)
    result = cli("rerun", str(run_id)[:8], "--step", "note:ticket-99")
    assert result.exit_code == 2
    assert f"run {run_id} has no step 'note:ticket-99'" in result.output
    assert notes.execute("SELECT count(*) FROM sidecar.runs WHERE rerun_of = %s", (run_id,)).fetchone()[0] == 0


def test_step_done_names_the_run_that_did_the_step(notes, make_conn, cli):
    run_id = kill_batch(notes, make_conn, die_at=6)
    rerun_id = cli("rerun", str(run_id)[:8]).output.split("Rerun ")[1].split(":")[0]
    bot = make_conn()
    with sidecar.Run(bot, "note-bot", run_id=rerun_id) as run:
        note_batch(bot, run)
        done = dict(bot.execute("SELECT key, (SELECT run_id FROM sidecar.step_done(key)) "
                                "FROM unnest(ARRAY['note:ticket-1', 'note:ticket-5', 'note:ticket-6', "
                                "'note:ticket-10']) key").fetchall())
    assert done == {"note:ticket-1": run_id, "note:ticket-5": run_id,
                    "note:ticket-6": uuid.UUID(rerun_id), "note:ticket-10": uuid.UUID(rerun_id)}


def test_two_attempts_of_one_step_wait_for_each_other(notes, make_conn):
    """The second session's begin_step waits while the first has the step open, then sees it done
    (a second attempt of the run's own step says it is the same work: p_same_work)."""
    first, second = make_conn(autocommit=False), make_conn(autocommit=False)
    run_id = first.execute("SELECT sidecar.start_run('note-bot')").fetchone()[0]
    first.commit()
    second.execute("SELECT set_config('sidecar.run_id', %s, false)", (str(run_id),))
    second.commit()
    assert first.execute("SELECT sidecar.begin_step('note:ticket-1')").fetchone()[0] is True
    first.execute("INSERT INTO billing_notes (ticket_id, note) VALUES (1, 'first')")
    answer: list[bool] = []
    waiter = threading.Thread(target=lambda: answer.append(
        second.execute("SELECT sidecar.begin_step('note:ticket-1', true)").fetchone()[0]))
    waiter.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and notes.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            (second.info.backend_pid,)).fetchone()[0] == 0 and waiter.is_alive():
        time.sleep(0.05)
    assert waiter.is_alive() and answer == []  # waiting for the first attempt, not going ahead
    first.execute("SELECT sidecar.end_step()")
    first.commit()
    waiter.join(timeout=10)
    assert answer == [False]  # the loser sees the step done, and skips it
    second.rollback()
    assert count_notes(notes) == (1, 1)
