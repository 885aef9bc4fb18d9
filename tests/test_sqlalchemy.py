"""SQLAlchemy 2.x: a Session, AsyncSession or Connection tagged with a run, through psycopg and asyncpg.

Each transaction tags itself (SET LOCAL): a pooled connection goes back untagged, and the
next user's writes are not the run's.
"""

from __future__ import annotations

import asyncio

import pytest
from psycopg.conninfo import conninfo_to_dict

sqlalchemy = pytest.importorskip("sqlalchemy", reason="rollback-sidecar[sqlalchemy] is not installed")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import sidecar.capture.history  # noqa: E402
import sidecar.sqlalchemy  # noqa: E402
import sidecar.steps.context  # noqa: E402
from tests.fix_sidecar import track  # noqa: E402


def url(dsn: str, driver: str) -> str:
    """A SQLAlchemy URL for the test's database (trust authentication: no password)."""
    p = conninfo_to_dict(dsn)
    return f"postgresql+{driver}://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)")
    sc.execute("INSERT INTO tickets VALUES (41, 'open'), (42, 'open'), (43, 'open')")
    track(sc, "tickets")
    return sc


def captured(conn, run_id) -> list[tuple[str, str, dict]]:
    """(action, op, key) of each change the run recorded."""
    return [(c.action, c.op, c.key) for c in sidecar.capture.history.changes(conn, run_id)]


def statements(conn) -> int:
    return conn.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0]


def run_row(conn, run_id):
    return conn.execute("SELECT automation, status, error, meta FROM sidecar.runs WHERE run_id = %s",
                        (run_id,)).fetchone()


def test_session_run_tags_each_transaction_and_the_pooled_connection_goes_back_untagged(tickets, dsn):
    engine = create_engine(url(dsn, "psycopg"), pool_size=1, max_overflow=0)
    with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.action("close:ticket-42"):
            session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        session.commit()
        # While the run goes on, the pool's one connection serves someone else: nothing of the run is on it.
        with engine.begin() as other:
            assert other.execute(text("SELECT current_setting('sidecar.run_id', true)")).scalar() in ("", None)
            other.execute(text("UPDATE tickets SET status = 'closed' WHERE id = 41"))
        session.execute(text("UPDATE tickets SET status = 'waiting' WHERE id = 43"))
    assert run_row(tickets, run.run_id) == ("ticket-bot", "succeeded", None, {"prompt": "v3"})
    changes = captured(tickets, run.run_id)
    assert changes[0] == ("close:ticket-42", "U", {"id": 42})
    assert changes[1][1:] == ("U", {"id": 43}) and changes[1][0].startswith("tx:")
    assert statements(tickets) == 2  # the other user's update is not captured
    engine.dispose()


def test_session_run_that_raises_rolls_back_and_is_failed(tickets, dsn):
    engine = create_engine(url(dsn, "psycopg"))
    with pytest.raises(ValueError, match="no refund"):
        with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
            session.execute(text("UPDATE tickets SET status = 'refunded' WHERE id = 42"))
            raise ValueError("no refund for ticket 42")
    assert run_row(tickets, run.run_id)[1:3] == ("failed", "ValueError: no refund for ticket 42")
    assert tickets.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "open"
    engine.dispose()


def test_a_paused_automation_cannot_start_a_run(tickets, dsn):
    tickets.execute("SELECT sidecar.pause('ticket-bot', 'refunds look wrong')")
    engine = create_engine(url(dsn, "psycopg"))
    with Session(engine) as session:
        with pytest.raises(DBAPIError, match="paused"):
            with sidecar.sqlalchemy.run(session, "ticket-bot"):
                pass
        assert session.execute(text("SELECT status FROM tickets WHERE id = 42")).scalar() == "open"  # usable
    assert tickets.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == 0
    engine.dispose()


def test_connection_run_tags_its_transactions(tickets, dsn):
    engine = create_engine(url(dsn, "psycopg"), pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        with sidecar.sqlalchemy.run(conn, "ticket-bot") as run:
            with run.action("close:ticket-42"):
                conn.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        conn.execute(text("UPDATE tickets SET status = 'closed' WHERE id = 41"))  # after the run: not its
        conn.commit()
    assert captured(tickets, run.run_id) == [("close:ticket-42", "U", {"id": 42})]
    assert statements(tickets) == 1
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_async_session_run_with_both_drivers(tickets, dsn, driver):
    async def story():
        engine = create_async_engine(url(dsn, driver), pool_size=1, max_overflow=0)
        async with AsyncSession(engine) as session:
            async with sidecar.sqlalchemy.run(session, "ticket-bot", meta={"driver": driver}) as run:
                async with run.action("close:ticket-42"):
                    await session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
                    await session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 43"))
                await session.commit()
                # The same pooled connection, another user, while the run goes on: untagged, not captured.
                async with engine.begin() as other:
                    setting = await other.execute(text("SELECT current_setting('sidecar.run_id', true)"))
                    assert setting.scalar() in ("", None)
                    await other.execute(text("UPDATE tickets SET status = 'closed' WHERE id = 41"))
        await engine.dispose()
        return run.run_id

    run_id = asyncio.run(story())
    assert run_row(tickets, run_id) == ("ticket-bot", "succeeded", None, {"driver": driver})
    assert captured(tickets, run_id) == [("close:ticket-42", "U", {"id": 42}), ("close:ticket-42", "U", {"id": 43})]
    assert statements(tickets) == 2  # the run's two; the other user's update is not captured
    assert tickets.execute("SELECT status FROM tickets WHERE id = 41").fetchone()[0] == "closed"


def test_async_session_run_that_raises_is_failed(tickets, dsn):
    async def story():
        engine = create_async_engine(url(dsn, "asyncpg"))
        try:
            async with AsyncSession(engine) as session:
                async with sidecar.sqlalchemy.run(session, "ticket-bot") as run:
                    await session.execute(text("UPDATE tickets SET status = 'refunded' WHERE id = 42"))
                    raise RuntimeError("model timed out")
        except RuntimeError:
            return run.run_id
        finally:
            await engine.dispose()

    run_id = asyncio.run(story())
    assert run_row(tickets, run_id)[1:3] == ("failed", "RuntimeError: model timed out")
    assert tickets.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "open"


def test_wrong_target_and_wrong_with_say_what_to_do(tickets, dsn):
    with pytest.raises(Exception, match="takes a Session, AsyncSession or Connection, not str"):
        sidecar.sqlalchemy.run("postgresql://", "ticket-bot")
    engine = create_engine(url(dsn, "psycopg"))
    with Session(engine) as session, pytest.raises(Exception, match="entered with `with`"):
        asyncio.run(sidecar.sqlalchemy.run(session, "ticket-bot").__aenter__())
    engine.dispose()


def test_an_action_begun_inside_an_open_transaction_retags_it(tickets, dsn):
    engine = create_engine(url(dsn, "psycopg"))
    with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
        session.execute(text("UPDATE tickets SET status = 'seen' WHERE id = 41"))
        with run.action("close:ticket-42"):
            session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        session.execute(text("UPDATE tickets SET status = 'seen' WHERE id = 43"))
    engine.dispose()
    actions = [(a, k["id"]) for a, _, k in captured(tickets, run.run_id)]
    assert actions[1] == ("close:ticket-42", 42)
    assert actions[0][0] == actions[2][0] and actions[0][0].startswith("tx:")  # one transaction, no action


def test_a_commit_that_fails_at_the_end_fails_the_run(tickets, dsn):
    tickets.execute("CREATE TABLE notes (id int PRIMARY KEY, ticket_id int REFERENCES tickets "
                    "DEFERRABLE INITIALLY DEFERRED)")
    engine = create_engine(url(dsn, "psycopg"))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
            session.execute(text("INSERT INTO notes VALUES (1, 99)"))  # checked at commit
    engine.dispose()
    status, error = run_row(tickets, run.run_id)[1:3]
    assert status == "failed" and error.startswith("IntegrityError: ")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_an_action_carries_its_context_in_each_of_its_transactions(tickets, dsn, driver):
    async def async_story():
        engine = create_async_engine(url(dsn, driver))
        async with AsyncSession(engine) as session:
            async with sidecar.sqlalchemy.run(session, "ticket-bot") as run:
                async with run.action("close:ticket-42", why="customer confirmed", read=["email: thanks"],
                                      confidence=0.62, model="gpt-x"):
                    await session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        await engine.dispose()
        return run.run_id

    if driver == "asyncpg":
        run_id = asyncio.run(async_story())
    else:
        engine = create_engine(url(dsn, driver))
        with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
            with run.action("close:ticket-42", why="customer confirmed", read=["email: thanks"],
                            confidence=0.62, model="gpt-x"):
                session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        engine.dispose()
        run_id = run.run_id
    assert tickets.execute("SELECT context FROM sidecar.actions WHERE run_id = %s", (run_id,)).fetchone()[0] == {
        "why": "customer confirmed", "read": ["email: thanks"], "confidence": 0.62, "model": "gpt-x"}


def test_bad_context_is_refused_before_anything_runs(tickets, dsn):
    engine = create_engine(url(dsn, "psycopg"))
    with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
        with pytest.raises(sidecar.steps.context.ContextError, match="confidence must be a number from 0 to 1"):
            run.action("close:ticket-42", confidence="high")
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_second_run_with_the_same_key_is_a_rerun_of_the_first(tickets, dsn, driver):
    """The idempotency key of issue 28, as sidecar.Run(conn, "bot", key=...) has it."""
    def nightly():
        engine = create_engine(url(dsn, "psycopg"))
        with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot", key="nightly-2026-12-03") as run:
            session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 42"))
        engine.dispose()
        return run.run_id

    async def nightly_async():
        engine = create_async_engine(url(dsn, "asyncpg"))
        async with AsyncSession(engine) as session:
            async with sidecar.sqlalchemy.run(session, "ticket-bot", key="nightly-2026-12-03") as run:
                await session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 43"))
        await engine.dispose()
        return run.run_id

    first = nightly() if driver == "psycopg" else asyncio.run(nightly_async())
    second = nightly() if driver == "psycopg" else asyncio.run(nightly_async())
    assert tickets.execute("SELECT rerun_of, lineage, run_key FROM sidecar.runs WHERE run_id = %s",
                           (second,)).fetchone() == (first, first, None)
    assert tickets.execute("SELECT run_key FROM sidecar.runs WHERE run_id = %s", (first,)).fetchone() == (
        "nightly-2026-12-03",)
    with pytest.raises(Exception, match="not both"):
        sidecar.sqlalchemy.run(tickets, "ticket-bot", run_id=first, key="nightly-2026-12-03")
