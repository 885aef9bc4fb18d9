"""The automation's side of the Python API, as a support agent built from the README meets it:
failures recorded as they happened, typed errors, its own held writes and pauses, no silent skips."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import sidecar
from sidecar import errors
from tests.fix_sidecar import track


@pytest.fixture
def desk(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE refunds (id int PRIMARY KEY, ticket_id int, amount numeric)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(101, 110) g")
    track(sc, "tickets", "refunds")
    return sc


def _run(conn, run_id):
    return conn.execute("SELECT status, error, error_detail FROM sidecar.runs WHERE run_id = %s",
                        (run_id,)).fetchone()


def _failures(conn, run_id):
    return conn.execute("SELECT key, error FROM sidecar.step_failures WHERE run_id = %s ORDER BY failure_id",
                        (run_id,)).fetchall()


def _close(conn, t):
    conn.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
    if t == 107:
        raise RuntimeError("no customer for ticket 107")


# Item 1: failures recorded as they happened.

def test_a_loop_over_run_steps_records_the_loops_own_exception(desk, bot):
    with pytest.raises(RuntimeError, match="no customer"):
        with sidecar.Run(bot, "support-agent") as run:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                _close(bot, t)

    assert _failures(desk, run.run_id) == [("close:ticket-107", "RuntimeError: no customer for ticket 107")]
    assert _run(desk, run.run_id)[:2] == ("failed", "RuntimeError: no customer for ticket 107")
    # The failed ticket's write rolled back with its step; the ones before it stay.
    assert desk.execute("SELECT count(*) FROM tickets WHERE status = 'closed'").fetchone()[0] == 6


def test_an_iterator_kept_in_a_variable_gives_the_agent_its_own_exception(desk, bot):
    with pytest.raises(RuntimeError, match="no customer"):
        with sidecar.Run(bot, "support-agent") as run:
            todo = run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}")
            for t in todo:
                _close(bot, t)

    assert _failures(desk, run.run_id) == [("close:ticket-107", "RuntimeError: no customer for ticket 107")]
    assert _run(desk, run.run_id)[:2] == ("failed", "RuntimeError: no customer for ticket 107")
    del todo


def test_leaving_the_loop_early_rolls_the_step_back_and_says_so(desk, bot):
    with sidecar.Run(bot, "support-agent") as run:
        try:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                _close(bot, t)
        except RuntimeError:
            pass  # the agent handles it and ends the run normally
    (key, error), = _failures(desk, run.run_id)
    assert key == "close:ticket-107" and "left before this step finished" in error
    assert _run(desk, run.run_id)[0] == "succeeded"


def test_a_pause_caught_inside_a_step_becomes_the_runs_error_not_the_commit(desk, bot, sc):
    with pytest.raises(errors.Paused) as raised:
        with sidecar.Run(bot, "support-agent") as run:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                if t == 104:
                    sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
                try:
                    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
                except psycopg.Error:
                    pass  # the agent swallows the error and goes on
    assert raised.value.reason == "refunds look wrong"
    status, error, _ = _run(desk, run.run_id)
    assert status == "failed"
    assert error.startswith("Paused: sidecar: automation \"support-agent\" is paused since")
    assert "InFailedSqlTransaction" not in error
    assert _failures(desk, run.run_id)[0][1].startswith("Paused: ")
    (step,) = [s for s in sidecar.steps.step_states(desk, run.run_id) if s.state == "failed"]
    assert "sqlstate: SC001" in step.diagnostics and "hint: " in step.diagnostics


# Items 2 and 3: one-line stored errors, typed exceptions.

def test_a_pause_reaches_python_typed_with_who_why_and_since(desk, bot, sc):
    sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
    with pytest.raises(errors.Paused) as raised:
        with sidecar.Run(bot, "support-agent", run_id=uuid.uuid4()):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
    paused = raised.value
    assert isinstance(paused, psycopg.DatabaseError) and isinstance(paused, sidecar.errors.SidecarError)
    assert paused.sqlstate == "SC001"
    assert (paused.scope, paused.target, paused.reason) == ("automation", "support-agent", "refunds look wrong")
    assert paused.paused_by == sc.info.user and paused.since is not None
    assert paused.message.startswith('sidecar: automation "support-agent" is paused since') and "\n" not in paused.message
    assert "sidecar resume" in paused.hint


def test_the_stored_error_is_one_line_and_the_full_report_stays_for_operators(desk, bot, sc, cli):
    with pytest.raises(errors.Paused):
        with sidecar.Run(bot, "support-agent") as run:
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
            sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 102")
    status, error, detail = _run(desk, run.run_id)
    assert "\n" not in error and len(error) < 200
    assert "CONTEXT" not in error and "PL/pgSQL" not in error
    assert "context: " in detail and "hint: " in detail

    shown = cli("show", str(run.run_id))
    status_line = next(line for line in shown.output.splitlines() if line.startswith("  status"))
    assert status_line.startswith("  status      failed (Paused: sidecar: automation")
    assert "PL/pgSQL" not in shown.output
    assert "PL/pgSQL" in json.loads(cli("show", str(run.run_id), "--json").output)["run"]["error_detail"]


# Item 4: the agent sees its held writes and pauses without reading sidecar's tables.

@pytest.fixture
def agent_role(desk, dsn):
    role = f"agent_{uuid.uuid4().hex[:8]}"
    desk.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    desk.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON tickets, refunds TO {}").format(sql.Identifier(role)))
    conn = psycopg.connect(make_conninfo(**dict(conninfo_to_dict(dsn), user=role)), autocommit=True)
    yield conn
    conn.close()
    desk.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))


def test_an_agent_lists_its_own_held_writes_and_gets_held_typed(desk, agent_role, cli):
    cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--reason", "refund over limit")
    with sidecar.Run(agent_role, "support-agent") as run:
        with run.action("refund:ticket-107"):
            row = agent_role.execute("INSERT INTO refunds VALUES (1, 107, 900) RETURNING id").fetchone()
        assert row is None  # held: nothing landed, so nothing returned
        held = run.held()
        with pytest.raises(errors.Held) as raised:
            run.raise_if_held()
    assert [(h.action, h.table, h.op, h.key, h.status) for h in held] == [
        ("refund:ticket-107", "public.refunds", "insert", {"id": 1}, "pending")]
    assert raised.value.pending_ids == [held[0].pending_id] and raised.value.sqlstate == "SC024"
    assert "refund over limit" in raised.value.message
    # The SQL function answers for its own run only.
    assert agent_role.execute("SELECT status FROM sidecar.run_held(%s)", (run.run_id,)).fetchall() == [("pending",)]
    with pytest.raises(errors.NotARun):
        desk_run = desk.execute("SELECT sidecar.start_run('other-bot')").fetchone()[0]
        desk.execute("SELECT sidecar.finish_run()")
        agent_role.execute("SELECT * FROM sidecar.run_held(%s)", (desk_run,))
    # After a decision, the agent reads it.
    assert cli("reject", str(held[0].pending_id), "--reason", "already refunded").exit_code == 0
    assert [(h.status, h.decided_why) for h in run.held()] == [("rejected", "already refunded")]


def test_an_agent_asks_whether_it_is_paused(desk, agent_role, sc):
    with sidecar.Run(agent_role, "support-agent") as run:
        assert run.paused() == []
        sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
        (pause,) = run.paused()
    assert (pause.scope, pause.target, pause.reason, pause.paused_by) == (
        "automation", "support-agent", "refunds look wrong", sc.info.user)


def test_show_of_a_run_whose_only_write_was_held_lists_it(desk, bot, cli):
    cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--reason", "refund over limit")
    with sidecar.Run(bot, "support-agent") as run:
        with run.action("refund:ticket-107"):
            bot.execute("INSERT INTO refunds VALUES (1, 107, 900)")
    shown = cli("show", str(run.run_id))
    assert "held        1 change for review, 1 still waiting (sidecar queue)" in shown.output
    assert "action refund:ticket-107: Add refunds #1" in shown.output
    held = json.loads(cli("show", str(run.run_id), "--json").output)["held"]
    assert [(h["action"], h["status"]) for h in held] == [("refund:ticket-107", "pending")]


# Item 5: no silent skips, no silent escapes.

def test_two_items_with_one_step_key_are_refused_unless_said_to_be_the_same_work(desk, bot):
    with sidecar.Run(bot, "support-agent") as run:
        with pytest.raises(errors.StepConflict) as raised:
            for t in run.steps([101, 102], key=lambda t: "close:ticket"):
                _close(bot, t)
        assert raised.value.key == "close:ticket"
        assert desk.execute("SELECT count(*) FROM tickets WHERE status = 'closed'").fetchone()[0] == 0
        done = [t for t in run.steps([101, 101], key=lambda t: f"close:ticket-{t}", same_work=True)]
        assert done == [101]


def test_a_step_key_done_by_this_run_is_refused_for_other_work(desk, bot):
    with sidecar.Run(bot, "support-agent") as run:
        with run.step("close:ticket-101") as step:
            assert not step.skip
            _close(bot, 101)
        with pytest.raises(errors.StepConflict):
            with run.step("close:ticket-101"):
                _close(bot, 102)
        with run.step("close:ticket-101", same_work=True) as step:
            assert step.skip
    assert desk.execute("SELECT id FROM tickets WHERE status = 'closed'").fetchall() == [(101,)]


def test_writes_through_a_finished_run_are_refused(desk, bot):
    with sidecar.Run(bot, "support-agent") as run:
        pass
    with pytest.raises(errors.RunFinished):
        with run.action("close:ticket-101"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
    with pytest.raises(errors.RunFinished):
        run.step("close:ticket-101").__enter__()
    with pytest.raises(errors.NotARun):
        sidecar.Run(bot, "support-agent").action("x")
    assert desk.execute("SELECT count(*) FROM tickets WHERE status = 'closed'").fetchone()[0] == 0


# Item 6: reruns.

def test_steps_shows_a_runs_steps_without_opening_a_rerun(desk, bot, cli):
    with pytest.raises(RuntimeError):
        with sidecar.Run(bot, "support-agent") as run:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                _close(bot, t)
    before = desk.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0]
    result = cli("steps", str(run.run_id)[:8])
    assert result.exit_code == 0, result.output
    assert "completed     close:ticket-106" in result.output
    assert "failed        close:ticket-107  (RuntimeError: no customer for ticket 107)" in result.output
    assert "never started close:ticket-108" in result.output
    assert desk.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == before
    states = json.loads(cli("steps", str(run.run_id), "--json").output)["steps"]
    assert states[6] == {"key": "close:ticket-107", "state": "failed",
                         "detail": "RuntimeError: no customer for ticket 107", "diagnostics": None}


def test_a_rerun_just_opened_waits_for_its_automation(desk, bot, cli):
    with pytest.raises(RuntimeError):
        with sidecar.Run(bot, "support-agent") as run:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                _close(bot, t)
    opened = cli("rerun", str(run.run_id))
    rerun_id = opened.output.split("Rerun ")[1].split(":")[0]
    assert sidecar.steps.get(desk, rerun_id).state == "waiting"
    agent = bot
    with sidecar.Run(agent, "support-agent", run_id=rerun_id) as rerun:
        assert sidecar.steps.get(desk, rerun_id).state == "running"
        for t in rerun.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
    assert sidecar.steps.get(desk, rerun_id).state == "succeeded"


def test_a_second_run_with_the_same_key_is_a_rerun_and_does_nothing_twice(desk, bot):
    def nightly():
        with sidecar.Run(bot, "refund-bot", key="nightly-2026-12-03") as run:
            for t in run.steps(range(101, 104), key=lambda t: f"refund:ticket-{t}"):
                bot.execute("INSERT INTO refunds VALUES (%s, %s, 10)", (t, t))
        return run.run_id

    first, second = nightly(), nightly()  # the scheduler fired twice

    assert desk.execute("SELECT count(*) FROM refunds").fetchone()[0] == 3
    assert desk.execute("SELECT rerun_of, lineage FROM sidecar.runs WHERE run_id = %s",
                        (second,)).fetchone() == (first, first)
    assert sidecar.steps.get(desk, second).run_key == "nightly-2026-12-03"
    # Another key is another run.
    with sidecar.Run(bot, "refund-bot", key="nightly-2026-12-04") as run:
        pass
    assert desk.execute("SELECT rerun_of FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone()[0] is None


# Item 7: state words.

def test_after_the_undo_of_an_undo_the_original_is_not_undone(desk, bot, cli):
    with sidecar.Run(bot, "support-agent") as run:
        bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
    assert cli("undo", str(run.run_id), "--yes").exit_code == 0
    undo = desk.execute("SELECT run_id FROM sidecar.runs WHERE undo_of = %s", (run.run_id,)).fetchone()[0]
    assert sidecar.steps.get(desk, run.run_id).state == "undone"
    assert cli("undo", str(undo), "--yes").exit_code == 0

    assert sidecar.steps.get(desk, run.run_id).state == "succeeded"
    line = next(line for line in cli("runs").output.splitlines() if line.startswith(str(run.run_id)[:8]))
    assert "undone" not in line
    assert sidecar.steps.count_runs(desk, status="undone") == 1  # the first undo, undone by the second


def test_a_blocked_step_is_shown_blocked_not_failed(desk, bot, cli, make_conn):
    with pytest.raises(RuntimeError):
        with sidecar.Run(bot, "support-agent") as run:
            for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}",
                               touches=lambda t: [("tickets", {"id": t})]):
                _close(bot, t)
    desk.execute("UPDATE tickets SET status = 'handled by Dana' WHERE id = 109")  # a person
    opened = cli("rerun", str(run.run_id))
    rerun_id = opened.output.split("Rerun ")[1].split(":")[0]
    agent = make_conn()
    rerun = sidecar.Run(agent, "support-agent", run_id=rerun_id).__enter__()
    for t in rerun.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
        agent.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
    pid = agent.info.backend_pid
    agent.close()  # the agent's process ends before it finishes the run
    for _ in range(100):
        if not desk.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            break
        time.sleep(0.05)
    assert sidecar.steps.get(desk, rerun_id).state == "abandoned"
    shown = cli("steps", rerun_id).output
    assert "blocked       close:ticket-109  (a person changed tickets #109 after the run)" in shown
    assert "failed        close:ticket-109" not in shown


def test_a_typed_database_error_reaching_the_cli_is_one_line(desk, bot, sc, capsys):
    from sidecar.cli._common import handles_errors

    sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")

    @handles_errors
    def command():
        with sidecar.Run(bot, "support-agent", run_id=uuid.uuid4()):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")

    with pytest.raises(SystemExit) as code:
        command()
    assert code.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith('sidecar: automation "support-agent" is paused since') and "DETAIL" not in err
    assert err.rstrip().endswith("nothing was changed")


def test_a_pause_caught_in_a_runs_own_transaction_fails_the_run_as_paused(desk, make_conn, sc):
    agent = make_conn(autocommit=False)
    with pytest.raises(errors.Paused):
        with sidecar.Run(agent, "support-agent") as run:
            agent.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
            sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
            try:
                agent.execute("UPDATE tickets SET status = 'closed' WHERE id = 102")
            except psycopg.Error:
                pass
    status, error, _ = _run(desk, run.run_id)
    assert status == "failed" and error.startswith('Paused: sidecar: automation "support-agent" is paused')
    assert desk.execute("SELECT count(*) FROM tickets WHERE status = 'closed'").fetchone()[0] == 0
