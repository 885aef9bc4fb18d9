"""Behind a real PgBouncer in transaction pooling mode: what leaks, and what works.

Two clients (the bot and someone else) share the pooler's one server connection, as the
users of a busy pooler do. A session-level SET made by one is seen by the other; SET LOCAL,
`sidecar.Run(pooled=True)`, steps, pause and holds work.
"""

from __future__ import annotations

import psycopg
import pytest

import sidecar
import sidecar.capture.history
from sidecar.review import rules
from tests.fix_sidecar import track


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(40, 45) g")
    sc.execute("CREATE TABLE notes (id serial PRIMARY KEY, ticket_id int NOT NULL, body text NOT NULL)")
    track(sc, "tickets", "notes")
    return sc


@pytest.fixture
def bot(tickets, pooled_conn):
    return pooled_conn(application_name="ticket-bot")


@pytest.fixture
def someone(tickets, pooled_conn):
    """Another client of the same pooler, not an automation."""
    return pooled_conn(application_name="support-desk")


def runs_of_statements(conn) -> list:
    """The run of each captured statement, oldest first."""
    return [r[0] for r in conn.execute(
        "SELECT a.run_id FROM sidecar.statements s JOIN sidecar.actions a USING (action_id) ORDER BY s.stmt_id")]


def test_a_session_level_set_leaks_to_the_next_client_of_the_pooler(tickets, bot, someone):
    run_id = bot.execute("SELECT gen_random_uuid()").fetchone()[0]
    bot.execute(f"SET sidecar.run_id = '{run_id}'")  # what a pooler makes unsafe
    # Someone else's next transaction lands on the same server connection, and inherits the tag:
    assert someone.execute("SHOW sidecar.run_id").fetchone()[0] == str(run_id)
    someone.execute("UPDATE tickets SET status = 'closed' WHERE id = 40")
    assert runs_of_statements(tickets) == [run_id]  # a person's write, taken for the bot's
    someone.execute("RESET sidecar.run_id")


def test_set_local_tags_one_transaction_and_leaves_nothing_behind(tickets, bot, someone):
    run_id = bot.execute("SELECT gen_random_uuid()").fetchone()[0]
    with bot.transaction():
        bot.execute("SELECT set_config('sidecar.run_id', %s, true)", (str(run_id),))  # SET LOCAL
        bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    assert someone.execute("SHOW sidecar.run_id").fetchone()[0] == ""
    someone.execute("UPDATE tickets SET status = 'closed' WHERE id = 40")
    assert runs_of_statements(tickets) == [run_id]  # only the bot's write is the run's


def test_a_pooled_run_tags_its_actions_and_steps_and_nothing_else(tickets, bot, someone):
    with sidecar.Run(bot, "ticket-bot", meta={"via": "pgbouncer"}, pooled=True) as run:
        assert someone.execute("SHOW sidecar.run_id").fetchone()[0] == ""
        with run.action("close:ticket-41"):
            bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
        someone.execute("UPDATE tickets SET status = 'closed' WHERE id = 40")  # between the run's transactions
        for ticket in run.steps([42, 43], key=lambda t: f"note:ticket-{t}"):
            bot.execute("INSERT INTO notes (ticket_id, body) VALUES (%s, 'refund sent')", (ticket,))
        someone.execute("UPDATE tickets SET status = 'closed' WHERE id = 45")

    assert tickets.execute("SELECT status, error FROM sidecar.runs WHERE run_id = %s",
                           (run.run_id,)).fetchone() == ("succeeded", None)
    changes = [(c.action, c.table, c.op) for c in sidecar.capture.history.changes(tickets, run.run_id)]
    assert sorted(changes) == [("close:ticket-41", "public.tickets", "U"),
                               ("note:ticket-42", "public.notes", "I"), ("note:ticket-43", "public.notes", "I")]
    assert runs_of_statements(tickets) == [run.run_id] * 3  # someone's two updates are not the run's
    assert tickets.execute("SELECT key FROM sidecar.steps WHERE run_id = %s ORDER BY key",
                           (run.run_id,)).fetchall() == [("note:ticket-42",), ("note:ticket-43",)]


def test_a_pause_stops_a_pooled_run(tickets, bot):
    with pytest.raises(psycopg.Error) as refused:
        with sidecar.Run(bot, "ticket-bot", pooled=True) as run:
            with run.action("close:ticket-41"):
                bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
            tickets.execute("SELECT sidecar.pause('ticket-bot', 'refunds look wrong')")
            with run.action("close:ticket-42"):
                bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    assert refused.value.sqlstate == "SC001"
    assert tickets.execute("SELECT id FROM tickets WHERE status = 'resolved'").fetchall() == [(41,)]
    assert tickets.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone() == ("failed",)
    # And a new run cannot start through the pooler either.
    with pytest.raises(psycopg.Error, match="paused"):
        with sidecar.Run(bot, "ticket-bot", pooled=True):
            pass


def test_a_hold_rule_holds_a_pooled_runs_write(tickets, bot):
    rules.add_rule(tickets, "tickets", when="NEW.status = 'refunded'", reason="refunds need a person")
    with sidecar.Run(bot, "ticket-bot", pooled=True) as run:
        with run.action("refund:ticket-44"):
            bot.execute("UPDATE tickets SET status = 'refunded' WHERE id = 44")
    assert tickets.execute("SELECT status FROM tickets WHERE id = 44").fetchone() == ("open",)
    assert tickets.execute("SELECT run_id, key, status FROM sidecar.pending").fetchall() == [
        (run.run_id, {"id": 44}, "pending")]


def test_a_sqlalchemy_session_run_through_the_pooler(tickets, pgbouncer, dsn):
    pytest.importorskip("sqlalchemy", reason="rollback-sidecar[sqlalchemy] is not installed")
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    import sidecar.sqlalchemy

    url = f"postgresql+psycopg://{pgbouncer.user}@{pgbouncer.host}:{pgbouncer.port}/{conninfo_to_dict(dsn)['dbname']}"
    engine = create_engine(url, connect_args={"prepare_threshold": None})
    with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot") as run:
        with run.action("close:ticket-41"):
            session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 41"))
        session.commit()
        with engine.connect() as other:  # another user of the pool, and of the pooler's server connection
            assert other.execute(text("SHOW sidecar.run_id")).scalar() == ""
            other.execute(text("UPDATE tickets SET status = 'closed' WHERE id = 40"))
            other.commit()
    engine.dispose()
    assert runs_of_statements(tickets) == [run.run_id]


def test_an_asyncpg_session_run_through_the_pooler(tickets, pgbouncer, dsn):
    pytest.importorskip("asyncpg", reason="rollback-sidecar[asyncpg] is not installed")
    import asyncio
    import uuid

    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    import sidecar.sqlalchemy

    url = f"postgresql+asyncpg://{pgbouncer.user}@{pgbouncer.host}:{pgbouncer.port}/{conninfo_to_dict(dsn)['dbname']}"

    async def story():
        # PgBouncer before 1.21 keeps no prepared statements: asyncpg's caches off, statement names unique.
        engine = create_async_engine(url, connect_args={
            "statement_cache_size": 0, "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"})
        async with AsyncSession(engine) as session:
            async with sidecar.sqlalchemy.run(session, "ticket-bot") as run:
                async with run.action("close:ticket-41"):
                    await session.execute(text("UPDATE tickets SET status = 'resolved' WHERE id = 41"))
                await session.commit()
                async with engine.connect() as other:
                    assert (await other.execute(text("SHOW sidecar.run_id"))).scalar() == ""
                    await other.execute(text("UPDATE tickets SET status = 'closed' WHERE id = 40"))
                    await other.commit()
        await engine.dispose()
        return run.run_id

    run_id = asyncio.run(story())
    assert runs_of_statements(tickets) == [run_id]


def test_a_pooled_runs_action_carries_its_context(tickets, bot):
    with sidecar.Run(bot, "ticket-bot", pooled=True) as run:
        with run.action("close:ticket-41", why="customer confirmed", confidence=0.9):
            bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    assert tickets.execute("SELECT context FROM sidecar.actions WHERE run_id = %s",
                           (run.run_id,)).fetchone()[0] == {"why": "customer confirmed", "confidence": 0.9}


def test_a_pooled_run_keeps_issue_28s_api_through_the_pooler(tickets, bot, someone):
    """Idempotency key, a step's failure recorded as it happened, held writes read back: each in a
    transaction of its own that tags itself, nothing left on the pooler's session."""
    rules.add_rule(tickets, "notes", when="NEW.body = 'refund'", reason="refunds need a person")

    def nightly(die_at=None):
        with sidecar.Run(bot, "ticket-bot", key="nightly-2026-12-03", pooled=True) as run:
            for t in run.steps(range(40, 44), key=lambda t: f"note:ticket-{t}"):
                bot.execute("INSERT INTO notes (ticket_id, body) VALUES (%s, %s)",
                            (t, "refund" if t == 43 else "noted"))
                if t == die_at:
                    raise RuntimeError(f"model timed out on ticket {t}")
            assert someone.execute("SHOW sidecar.run_id").fetchone()[0] == ""
            assert run.paused() == []
            held = run.held()
            with pytest.raises(sidecar.Held):
                run.raise_if_held()
        return run.run_id, held

    with pytest.raises(RuntimeError, match="timed out"):
        nightly(die_at=41)
    first = tickets.execute("SELECT run_id FROM sidecar.runs WHERE run_key = 'nightly-2026-12-03'").fetchone()[0]
    assert tickets.execute("SELECT key, error FROM sidecar.step_failures WHERE run_id = %s", (first,)).fetchall() == [
        ("note:ticket-41", "RuntimeError: model timed out on ticket 41")]
    second, held = nightly()  # the scheduler fires again: a rerun of the first run, steps done skipped
    assert tickets.execute("SELECT rerun_of, status FROM sidecar.runs WHERE run_id = %s",
                           (second,)).fetchone() == (first, "succeeded")
    assert tickets.execute("SELECT ticket_id FROM notes ORDER BY ticket_id").fetchall() == [(40,), (41,), (42,)]
    assert [(h.action, h.status) for h in held] == [("note:ticket-43", "pending")]
    assert tickets.execute("SELECT pending_id, run_id, status FROM sidecar.pending").fetchall() == [
        (held[0].pending_id, second, "pending")]
    assert set(runs_of_statements(tickets)) == {first, second}
