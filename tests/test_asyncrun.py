"""sidecar.AsyncRun: Run's stories (tests/test_runs.py, test_rerun.py, test_pgbouncer.py) told on
psycopg's AsyncConnection."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import sidecar
import sidecar.capture.history
import sidecar.steps.context
from sidecar.errors import UsageError
from tests.fix_sidecar import track

N = 6


@pytest.fixture
def notes(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE billing_notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
               " ticket_id int REFERENCES tickets, note text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, %s) g", (N,))
    track(sc, "tickets", "billing_notes")
    return sc


def story(coro_fn, *args, **kwargs):
    return asyncio.run(coro_fn(*args, **kwargs))


def run_row(conn, run_id):
    return conn.execute("SELECT automation, status, error, meta, finished_at IS NOT NULL FROM sidecar.runs "
                        "WHERE run_id = %s", (run_id,)).fetchone()


async def connect(dsn, **kwargs):
    kwargs.setdefault("autocommit", True)
    return await psycopg.AsyncConnection.connect(dsn, application_name="note-bot", **kwargs)


def test_async_run_records_success_and_meta_and_untags_the_session(notes, dsn):
    async def bot():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "note-bot", meta={"prompt": "v3"}) as run:
                assert (await (await conn.execute("SHOW sidecar.run_id")).fetchone())[0] == str(run.run_id)
                async with run.action("close:ticket-2"):
                    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 2")
                await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 3")
            assert (await (await conn.execute("SHOW sidecar.run_id")).fetchone())[0] == ""
            await conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")  # not the run's
            return run.run_id

    run_id = story(bot)
    assert run_row(notes, run_id) == ("note-bot", "succeeded", None, {"prompt": "v3"}, True)
    changes = [(c.action, c.key) for c in sidecar.capture.history.changes(notes, run_id)]
    assert changes[0] == ("close:ticket-2", {"id": 2})
    assert changes[1][0].startswith("tx:") and changes[1][1] == {"id": 3}
    assert notes.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 2


def test_async_run_records_failure_and_rolls_the_block_back(notes, dsn):
    async def bot():
        async with await connect(dsn, autocommit=False) as conn:
            with pytest.raises(ValueError, match="customer not found"):
                async with sidecar.AsyncRun(conn, "note-bot") as run:
                    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 2")
                    raise ValueError("customer not found for ticket 2")
            return run.run_id

    run_id = story(bot)
    assert run_row(notes, run_id) == ("note-bot", "failed", "ValueError: customer not found for ticket 2", {}, True)
    assert notes.execute("SELECT status FROM tickets WHERE id = 2").fetchone()[0] == "open"


def test_async_run_that_fails_in_the_database_is_failed(notes, dsn):
    async def bot():
        async with await connect(dsn, autocommit=False) as conn:
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                async with sidecar.AsyncRun(conn, "note-bot") as run:
                    await conn.execute("INSERT INTO billing_notes (ticket_id, note) VALUES (99, 'x')")
            return run.run_id

    _, status, error, _, finished = run_row(notes, story(bot))
    assert (status, finished) == ("failed", True) and error.startswith("ForeignKeyViolation: ")


async def note_batch(conn, run, tickets, die_at=None):
    """The automation, async: one note per ticket, each ticket one step; tickets come from an async source."""
    async def source():
        for t in tickets:
            await asyncio.sleep(0)
            yield t

    async for t in run.steps(source(), key=lambda t: f"note:ticket-{t}",
                             touches=lambda t: [("tickets", {"id": t})]):
        await conn.execute("INSERT INTO billing_notes (ticket_id, note) VALUES (%s, 'matched')", (t,))
        await conn.execute("UPDATE tickets SET status = 'noted' WHERE id = %s", (t,))
        if t == die_at:
            raise RuntimeError(f"model timed out on ticket {t}")


def count_notes(conn):
    return conn.execute("SELECT count(*), count(DISTINCT ticket_id) FROM billing_notes").fetchone()


def test_async_steps_commit_one_by_one_and_a_rerun_does_only_what_is_left(notes, dsn, cli):
    async def first():
        async with await connect(dsn) as conn:
            with pytest.raises(RuntimeError, match="ticket 4"):
                async with sidecar.AsyncRun(conn, "note-bot") as run:
                    await note_batch(conn, run, range(1, N + 1), die_at=4)
            return run.run_id

    run_id = story(first)
    assert count_notes(notes) == (3, 3)  # step 4 rolled back with its writes; the loop ended there
    assert notes.execute("SELECT key, error FROM sidecar.step_failures WHERE run_id = %s",
                         (run_id,)).fetchall() == [("note:ticket-4", "RuntimeError: model timed out on ticket 4")]

    result = cli("rerun", str(run_id)[:8])
    assert result.exit_code == 0, result.output
    assert "never started note:ticket-5" in result.output
    rerun_id = result.output.split("Rerun ")[1].split(":")[0]

    async def rerun():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "note-bot", run_id=rerun_id) as run:
                await note_batch(conn, run, range(1, N + 1))
                async with run.step("note:ticket-1") as step:  # done by the first run: skipped, and says by whom
                    assert step.skip and step.done_by[0] == run_id

    story(rerun)
    assert count_notes(notes) == (N, N)
    assert notes.execute("SELECT rerun_of, status FROM sidecar.runs WHERE run_id = %s",
                         (rerun_id,)).fetchone() == (run_id, "succeeded")


def test_async_plan_names_a_missing_table(notes, dsn):
    async def bot():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "note-bot") as run:
                await run.plan([{"key": "k", "touches": [{"table": "no_such_table", "key": {"id": 1}}]}])

    with pytest.raises(UsageError, match="table no_such_table does not exist"):
        story(bot)


def test_a_paused_automation_cannot_start_an_async_run(notes, dsn):
    notes.execute("SELECT sidecar.pause('note-bot', 'notes look wrong')")

    async def bot():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "note-bot"):
                pass

    with pytest.raises(psycopg.Error, match="paused") as refused:
        story(bot)
    assert refused.value.sqlstate == "SC001"


def test_a_pooled_async_run_through_pgbouncer(notes, pgbouncer, dsn, pooled_conn):
    from psycopg.conninfo import conninfo_to_dict

    someone = pooled_conn(application_name="support-desk")

    async def bot():
        conn = await psycopg.AsyncConnection.connect(pgbouncer.dsn_for(conninfo_to_dict(dsn)["dbname"]),
                                                     autocommit=True, prepare_threshold=None)
        async with conn:
            async with sidecar.AsyncRun(conn, "note-bot", pooled=True) as run:
                async with run.action("close:ticket-1"):
                    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 1")
                assert someone.execute("SHOW sidecar.run_id").fetchone()[0] == ""
                someone.execute("UPDATE tickets SET status = 'closed' WHERE id = 6")  # not the run's
                await note_batch(conn, run, [2, 3])
            return run.run_id

    run_id = story(bot)
    assert notes.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone() == ("succeeded",)
    assert sorted((c.action, c.table) for c in sidecar.capture.history.changes(notes, run_id)) == [
        ("close:ticket-1", "public.tickets"), ("note:ticket-2", "public.billing_notes"),
        ("note:ticket-2", "public.tickets"), ("note:ticket-3", "public.billing_notes"),
        ("note:ticket-3", "public.tickets")]
    assert notes.execute("SELECT count(*) FROM sidecar.statements s JOIN sidecar.actions a USING (action_id) "
                         "WHERE a.run_id <> %s", (run_id,)).fetchone()[0] == 0


def action_context(conn, run_id, key):
    return conn.execute("SELECT context FROM sidecar.actions WHERE run_id = %s AND key = %s",
                        (run_id, key)).fetchone()[0]


def test_async_actions_and_steps_carry_context(notes, dsn):
    async def bot():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "note-bot") as run:
                async with run.action("close:ticket-1", why="customer confirmed", read=[sidecar.row("tickets", 1)],
                                      confidence=0.62, model="gpt-x") as action:
                    await conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
                    await action.context(confidence=0.7)
                async with run.step("note:ticket-2", why="needs a note") as step:
                    await conn.execute("UPDATE tickets SET status = 'noted' WHERE id = 2")
                async for t in run.steps([3], key=lambda t: f"note:ticket-{t}", why=lambda t: f"ticket {t} answered"):
                    await conn.execute("UPDATE tickets SET status = 'noted' WHERE id = %s", (t,))
                with pytest.raises(sidecar.steps.context.ContextError, match="confidence must be a number from 0 to 1"):
                    async with run.action("close:ticket-4", confidence=7):
                        pass
                assert not step.skip
            return run.run_id

    run_id = story(bot)
    assert action_context(notes, run_id, "close:ticket-1") == {
        "why": "customer confirmed", "read": [{"table": "tickets", "key": 1}], "confidence": 0.7, "model": "gpt-x"}
    assert action_context(notes, run_id, "note:ticket-2") == {"why": "needs a note"}
    assert action_context(notes, run_id, "note:ticket-3") == {"why": "ticket 3 answered"}
