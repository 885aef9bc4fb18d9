"""AsyncRun meets issue 28's automation API as Run does (tests/test_agent_api.py, told on psycopg's
AsyncConnection): failures recorded as they happened, typed errors, the idempotency key,
same_work, a finished run refusing writes, its own held writes and pauses."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

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


def story(coro_fn, *args):
    return asyncio.run(coro_fn(*args))


async def connect(dsn):
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name="support-agent")


def _run(conn, run_id):
    return conn.execute("SELECT status, error, error_detail FROM sidecar.runs WHERE run_id = %s",
                        (run_id,)).fetchone()


def _failures(conn, run_id):
    return conn.execute("SELECT key, error FROM sidecar.step_failures WHERE run_id = %s ORDER BY failure_id",
                        (run_id,)).fetchall()


def _closed(conn):
    return [r[0] for r in conn.execute("SELECT id FROM tickets WHERE status = 'closed' ORDER BY id")]


async def _close(conn, t):
    await conn.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
    if t == 107:
        raise RuntimeError("no customer for ticket 107")


def test_an_async_loop_records_its_own_exception_and_a_loop_left_early_says_so(desk, dsn):
    async def agent():
        async with await connect(dsn) as conn:
            with pytest.raises(RuntimeError, match="no customer"):
                async with sidecar.AsyncRun(conn, "support-agent") as failing:
                    async for t in failing.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                        await _close(conn, t)
            async with sidecar.AsyncRun(conn, "support-agent") as left:
                async for t in left.steps(range(108, 111), key=lambda t: f"close:ticket-{t}"):
                    await _close(conn, t)
                    break  # the agent stops after one ticket; the run ends normally
            return failing.run_id, left.run_id

    failing, left = story(agent)
    assert _failures(desk, failing) == [("close:ticket-107", "RuntimeError: no customer for ticket 107")]
    assert _run(desk, failing)[:2] == ("failed", "RuntimeError: no customer for ticket 107")
    (key, error), = _failures(desk, left)
    assert key == "close:ticket-108" and "left before this step finished" in error
    assert _run(desk, left)[0] == "succeeded"
    assert _closed(desk) == [101, 102, 103, 104, 105, 106]  # 107 and 108 rolled back with their steps


def test_a_pause_caught_inside_an_async_step_fails_the_run_as_paused(desk, dsn, sc):
    async def agent():
        async with await connect(dsn) as conn:
            with pytest.raises(errors.Paused) as raised:
                async with sidecar.AsyncRun(conn, "support-agent") as run:
                    async for t in run.steps(range(101, 111), key=lambda t: f"close:ticket-{t}"):
                        if t == 104:
                            sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
                        try:
                            await conn.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (t,))
                        except psycopg.Error:
                            pass  # the agent swallows the error and goes on
            return run.run_id, raised.value

    run_id, paused = story(agent)
    assert paused.reason == "refunds look wrong" and paused.sqlstate == "SC001"
    status, error, _ = _run(desk, run_id)
    assert status == "failed" and error.startswith('Paused: sidecar: automation "support-agent" is paused since')
    assert _failures(desk, run_id)[0][0] == "close:ticket-104"
    assert _failures(desk, run_id)[0][1].startswith("Paused: ")
    assert _closed(desk) == [101, 102, 103]


def test_an_async_agent_reads_its_held_writes_and_pauses(desk, dsn, cli, sc):
    cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--reason", "refund over limit")

    async def agent():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "support-agent") as run:
                assert await run.paused() == []
                async with run.action("refund:ticket-107"):
                    await conn.execute("INSERT INTO refunds VALUES (1, 107, 900)")
                async with run.action("refund:ticket-108"):
                    await conn.execute("INSERT INTO refunds VALUES (2, 108, 20)")
                held = await run.held()
                await run.raise_if_held("refund:ticket-108")  # that action's write landed
                with pytest.raises(errors.Held) as raised:
                    await run.raise_if_held()
                sc.execute("SELECT sidecar.pause('support-agent', 'refunds look wrong')")
                pauses = await run.paused()
            return held, raised.value, pauses

    held, raised, pauses = story(agent)
    assert [(h.action, h.table, h.op, h.key, h.status) for h in held] == [
        ("refund:ticket-107", "public.refunds", "insert", {"id": 1}, "pending")]
    assert raised.pending_ids == [held[0].pending_id] and "refund over limit" in raised.message
    assert [(p.scope, p.target, p.reason) for p in pauses] == [("automation", "support-agent", "refunds look wrong")]


def test_async_step_keys_are_refused_for_other_work_unless_the_same_work(desk, dsn):
    async def agent():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "support-agent") as run:
                with pytest.raises(errors.StepConflict) as twice:
                    async for t in run.steps([101, 102], key=lambda t: "close:ticket"):
                        await _close(conn, t)
                assert twice.value.key == "close:ticket"
                async with run.step("close:ticket-101") as step:
                    assert not step.skip
                    await _close(conn, 101)
                with pytest.raises(errors.StepConflict):
                    async with run.step("close:ticket-101"):
                        await _close(conn, 102)
                async with run.step("close:ticket-101", same_work=True) as step:
                    assert step.skip
                done = [t async for t in run.steps([103, 103], key=lambda t: f"close:ticket-{t}", same_work=True)]
            return done

    assert story(agent) == [103]
    assert _closed(desk) == [101]


def test_writes_through_a_finished_async_run_are_refused(desk, dsn):
    async def agent():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "support-agent") as run:
                pass
            with pytest.raises(errors.RunFinished):
                async with run.action("close:ticket-101"):
                    await conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 101")
            with pytest.raises(errors.RunFinished):
                async with run.step("close:ticket-101"):
                    pass
            with pytest.raises(errors.NotARun):
                sidecar.AsyncRun(conn, "support-agent").action("x")
            with pytest.raises(sidecar.errors.UsageError, match="entered once"):
                async with run:
                    pass

    story(agent)
    assert _closed(desk) == []


def test_a_second_async_run_with_the_same_key_is_a_rerun_and_does_nothing_twice(desk, dsn):
    async def nightly():
        async with await connect(dsn) as conn:
            async with sidecar.AsyncRun(conn, "refund-bot", key="nightly-2026-12-03") as run:
                async for t in run.steps(range(101, 104), key=lambda t: f"refund:ticket-{t}"):
                    await conn.execute("INSERT INTO refunds VALUES (%s, %s, 10)", (t, t))
            return run.run_id

    first, second = story(nightly), story(nightly)  # the scheduler fired twice
    assert desk.execute("SELECT count(*) FROM refunds").fetchone()[0] == 3
    assert desk.execute("SELECT rerun_of, lineage, status FROM sidecar.runs WHERE run_id = %s",
                        (second,)).fetchone() == (first, first, "succeeded")
    with pytest.raises(sidecar.errors.UsageError, match="not both"):
        sidecar.AsyncRun(None, "refund-bot", run_id=first, key="nightly-2026-12-03")
