"""`AsyncRun`: `sidecar.Run` for psycopg's AsyncConnection, for automations written with asyncio.

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with sidecar.AsyncRun(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
            async with run.action("close:ticket-42"):
                await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
            async for ticket in run.steps(fetch_tickets(), key=lambda t: f"note:ticket-{t}"):
                await conn.execute("INSERT INTO notes ...")

It mirrors sidecar/steps/runs.py method for method (read one through the other, as psycopg's
connection.py and connection_async.py): the same statements (steps/protocol.py), in the same
order, with the same semantics (typed errors, the idempotency key, same_work, a finished
run refusing writes, held()/paused()/raise_if_held()); what needs no I/O lives in
protocol.BaseRun, shared with Run; only the I/O is awaited. `steps` takes a sync or an async
iterable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg

from ..errors import TransactionAborted, UsageError, full_text, one_line
from ..steps import context as _context
from ..steps import own_run, protocol
from ..steps._step import _in_error
from ..steps.protocol import LEFT_EARLY

__all__ = ["AsyncRun", "AsyncStep"]


class AsyncRun(protocol.BaseRun):
    """A run of an automation, tagging this AsyncConnection's writes; see `sidecar.Run`."""

    conn: psycopg.AsyncConnection

    async def __aenter__(self) -> "AsyncRun":
        self._check_enter()
        self._loops: list[AsyncIterator] = []  # the `steps` loops, ended by __aexit__
        async with self.conn.transaction():
            if self.run_id is None:
                cur = await self.conn.execute(protocol.START, protocol.start(self.automation, self.meta, self.key))
                self.run_id = (await cur.fetchone())[0]
            else:
                await self.conn.execute(protocol.ATTACH, protocol.attach(self.run_id, self.automation))
            if self.pooled:
                await self.conn.execute(protocol.UNTAG_SESSION)
        if not self.conn.autocommit:
            await self.conn.commit()
        self._started = True
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._finished = True
        if self.conn.closed:
            return
        await self._close_steps(exc)
        if self._open_step is not None:
            # A step entered by hand and left open: it ends with the block's exception.
            if exc is not None:
                await self._open_step.__aexit__(exc_type, exc, tb)
            else:
                await self._open_step._abandon()
        if exc is None and _in_error(self.conn):
            # The block caught a failed statement and went on: its transaction cannot commit.
            await self.conn.rollback()
            err = await self._why_aborted("a statement of the run failed and its error was caught, so its "
                                          "transaction could not commit; it was rolled back")
            await self._finish(err)
            raise err
        if exc is None:
            if not self.conn.autocommit:
                await self.conn.commit()
            await self._record_unfinished(LEFT_EARLY)
            await self._finish(None)
        else:
            # The block's transaction may be aborted: the failure is recorded outside it.
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await self.conn.rollback()
            try:
                await self._record_unfinished(one_line(exc), full_text(exc))
                await self._finish(exc)
            except psycopg.Error as err:
                # Recording the failure failed too (the session is gone...): the block's own exception goes on.
                exc.add_note(f"sidecar: the run's failure could not be recorded: {one_line(err)}")

    async def _finish(self, exc: BaseException | None) -> None:
        await self.conn.execute(protocol.FINISH, protocol.finish(self.run_id, exc))
        if not self.conn.autocommit:
            await self.conn.commit()

    async def _close_steps(self, exc: BaseException | None) -> None:
        """End the `steps` loops the block left: the step it was on rolls back and is recorded failed.

        A sync generator is closed as soon as its loop is left; an async one only when the event
        loop gets to it, so the run does it first, with the block's exception (its one line is the
        step's error; left by `break`, the step is recorded as left early)."""
        for loop in reversed(self._loops):
            try:
                if exc is not None and not isinstance(exc, GeneratorExit):
                    await loop.athrow(exc)
                else:
                    await loop.aclose()
            except BaseException:  # noqa: BLE001 - the block's exception propagates, not this one
                pass
        self._loops = []

    @asynccontextmanager
    async def transaction(self, action: str | None = None) -> AsyncIterator[psycopg.AsyncTransaction]:
        """One transaction tagged with the run (and the action, if given), whatever the session holds."""
        self._check_open("transaction")
        async with self.conn.transaction() as tx:
            await self._tag_transaction(action)
            yield tx

    async def _tag_transaction(self, action: str | None = None) -> None:
        await self.conn.execute(protocol.TAG_TRANSACTION, self._tag_params(action))

    async def _fail_step(self, key: str, error: str, detail: str | None) -> None:
        async with self.conn.transaction():
            if self.pooled:
                await self._tag_transaction()
            await self.conn.execute(protocol.FAIL_STEP, protocol.step_failed(key, error, detail))

    async def _record_unfinished(self, error: str, detail: str | None = None) -> None:
        key = self._take_unfinished()
        if key is not None:
            await self._fail_step(key, error, detail)

    async def _why_aborted(self, what: str) -> Exception:
        """After a caught failure rolled a transaction back: Paused when the automation is paused, else
        TransactionAborted."""
        pauses = [p for p in await self.paused() if p.scope == "automation"]
        if pauses:
            return own_run.paused_error(pauses[0])
        return TransactionAborted(f"sidecar: {what}",
                                  hint="Let the error propagate, or roll back and retry the step")

    def action(self, key: str, **context: Any):
        """Group the writes of the block into one action (one undo unit), with its context
        (why=, read=, confidence=, ...; see `Run.action`). Pooled: one transaction."""
        self._check_open("action")
        if self.pooled:
            return _AsyncPooledAction(self, key, context)
        return _AsyncAction(self.conn, key, context)

    def step(self, key: str, *, same_work: bool = False, **context: Any) -> "AsyncStep":
        """One idempotent unit of work, committed with its writes; see `Run.step`. A key this run
        completed already is refused (StepConflict) unless same_work=True."""
        return AsyncStep(self, key, context, same_work=same_work)

    async def plan(self, steps: list[str | dict]) -> None:
        """Declare the run's steps up front (keys, or {"key", "touches": [{"table", "key"}]})."""
        self._check_open("plan")
        names: dict[str, str] = {}
        for step in steps:
            # Names are resolved here, with the caller's search_path (the SQL function takes qualified names).
            for target in step.get("touches", []) if isinstance(step, dict) else []:
                if target["table"] not in names:
                    names[target["table"]] = await self._regclass(target["table"])
                target["table"] = names[target["table"]]
        async with self.conn.transaction():
            if self.pooled:
                await self._tag_transaction()
            await self.conn.execute(protocol.PLAN, {"steps": json.dumps(steps)})
        if not self.conn.autocommit:
            await self.conn.commit()

    async def _regclass(self, table: str) -> str:
        try:
            async with self.conn.transaction():
                cur = await self.conn.execute(protocol.REGCLASS, {"table": table})
                row = await cur.fetchone()
        except (psycopg.errors.InvalidName, psycopg.errors.SyntaxError):
            row = None
        if row is None or row[0] is None:
            raise UsageError(protocol.no_such_table(table))
        return row[0]

    def steps(self, items: Iterable | AsyncIterable, key, touches=None, *, same_work: bool = False,
              **context) -> AsyncIterator:
        """Yield the items whose step still has to be done, each inside its own step; see `Run.steps`.

            async for ticket in run.steps(tickets, key=lambda t: f"note:ticket-{t.id}"):
                await conn.execute("INSERT INTO billing_notes ...", ...)

        Two items with one key are refused (StepConflict) unless same_work=True. Left by an
        exception, the step it was on is rolled back and recorded failed with that exception.
        Left early by `break`, that step is rolled back and recorded failed as left early when
        the run ends (a sync loop does it at once).
        """
        loop = self._steps(items, key, touches, same_work, context)
        self._loops.append(loop)
        return loop

    async def _steps(self, items, key, touches, same_work, context) -> AsyncIterator:
        if isinstance(items, AsyncIterable):
            items = [item async for item in items]
        else:
            items = list(items)
        keys = [key(i) for i in items]
        await self.plan(protocol.steps_plan(items, keys, touches, same_work))
        for item, k in zip(items, keys):
            step = AsyncStep(self, k, same_work=same_work)
            await step.__aenter__()
            if step.skip:
                await step.__aexit__(None, None, None)
                continue
            try:
                if context:
                    await step.context(**_context.for_item(item, context))
                yield item
            except GeneratorExit:
                await step._abandon()
                raise
            except BaseException as exc:  # thrown into the loop (athrow)
                await step.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            await step.__aexit__(None, None, None)

    async def held(self) -> list[own_run.HeldWrite]:
        """The run's writes a hold rule held, with queue ids and decisions; see `Run.held`."""
        cur = await self.conn.execute(protocol.HELD, {"run": str(self.run_id) if self.run_id else None})
        return [own_run.HeldWrite(*row) for row in await cur.fetchall()]

    async def paused(self) -> list[own_run.Pause]:
        """The pauses that stop the run's writes now: empty when it is not paused."""
        cur = await self.conn.execute(protocol.PAUSED, {"run": str(self.run_id) if self.run_id else None})
        return [own_run.Pause(*row) for row in await cur.fetchall()]

    async def raise_if_held(self, action: str | None = None) -> None:
        """Raise Held when writes of the run (of one action, if given) wait for review; call it
        after a step, not inside one (see `Run.raise_if_held`)."""
        waiting = protocol.waiting(await self.held(), action)
        if waiting:
            raise own_run.held_error(waiting, self.run_id)


async def _set_context(conn: psycopg.AsyncConnection, context: dict[str, Any]) -> None:
    """`sidecar.steps.context.set_context`, awaited."""
    params = _context.context_params(**context)
    if params is None:
        return
    try:
        async with conn.transaction():  # a savepoint: a refused context leaves the transaction usable
            await conn.execute(_context.SET_CONTEXT, params)
    except psycopg.Error as exc:
        error = _context.context_error(exc)
        if error is None:
            raise
        raise error from None
    except TypeError as exc:  # a value JSON cannot hold
        raise _context.ContextError(f"context must be JSON: {exc}") from None


class AsyncStep:
    """`async with run.step(key) as step:`; `step.skip` is true when it was done before (`step.done_by`).
    Mirrors sidecar/steps/_step.py's Step."""

    def __init__(self, run: AsyncRun, key: str, context: dict[str, Any] | None = None, *, same_work: bool = False):
        self.run, self.key, self.same_work = run, key, same_work
        self._context = context or {}
        self.skip = False
        self.done_by: tuple[uuid.UUID, datetime] | None = None
        self._tx: psycopg.AsyncTransaction | None = None
        self._closed = False

    async def __aenter__(self) -> "AsyncStep":
        run = self.run
        run._check_open("step")
        await run._record_unfinished(LEFT_EARLY)
        conn = run.conn
        self._tx = conn.transaction()
        await self._tx.__aenter__()
        try:
            if run.pooled:
                await run._tag_transaction()
            cur = await conn.execute(protocol.BEGIN_STEP, protocol.begin_step(self.key, self.same_work))
            if not (await cur.fetchone())[0]:
                self.skip = True
                self.done_by = await (await conn.execute(protocol.STEP_DONE, {"key": self.key})).fetchone()
            elif self._context:
                await self.context(**self._context)
        except BaseException as err:
            self._closed = True
            await self._tx.__aexit__(type(err), err, err.__traceback__)
            raise
        run._open_step = self
        return self

    async def context(self, **context: Any) -> None:
        """Add context to this step's action (merged; the later key wins)."""
        await _set_context(self.run.conn, context)

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if self._closed:
            return False
        self._closed = True
        run, conn = self.run, self.run.conn
        if run._open_step is self:
            run._open_step = None
        if conn.closed:
            return False
        if exc_type is None and not self.skip:
            if _in_error(conn):
                # The block caught a failed statement and went on: the step cannot commit.
                await self._rollback()
                err = await run._why_aborted(f"a statement of step {self.key!r} failed and its error was caught, "
                                             "so the step could not commit; it was rolled back")
                await self._fail(err)
                raise err
            try:
                await conn.execute(protocol.END_STEP)
            except BaseException as err:
                await self._tx.__aexit__(type(err), err, err.__traceback__)
                await self._fail(err)
                raise
        await self._tx.__aexit__(exc_type, exc, tb)
        if exc_type is not None:
            await self._fail(exc)
        return False

    async def _rollback(self) -> None:
        await self._tx.__aexit__(psycopg.Rollback, psycopg.Rollback(self._tx), None)

    async def _fail(self, exc: BaseException) -> None:
        if self.skip or isinstance(exc, psycopg.OperationalError) or self.run.conn.closed:
            return
        await self.run._fail_step(self.key, one_line(exc), full_text(exc))

    async def _abandon(self) -> None:
        """The loop left this step without finishing it: roll back; the run records why when it ends."""
        if self._closed:
            return
        self._closed = True
        if self.run._open_step is self:
            self.run._open_step = None
        if self.run.conn.closed:
            return
        await self._rollback()
        if not self.skip:
            self.run._unfinished = self.key


class _AsyncAction:
    def __init__(self, conn: psycopg.AsyncConnection, key: str, context: dict[str, Any] | None = None):
        self.conn, self.key = conn, key
        self._context = context or {}

    async def __aenter__(self) -> "_AsyncAction":
        await self.conn.execute(protocol.SET_ACTION, {"action": self.key})
        if self._context:
            try:
                await self.context(**self._context)
            except BaseException:
                await self.__aexit__()
                raise
        return self

    async def context(self, **context: Any) -> None:
        """Add context to this action (merged; the later key wins)."""
        await _set_context(self.conn, context)

    async def __aexit__(self, *exc) -> None:
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            return
        await self.conn.execute(protocol.CLEAR_ACTION)


class _AsyncPooledAction:
    """A pooled run's action: one transaction that tags itself (SET LOCAL), with its context."""

    def __init__(self, run: AsyncRun, key: str, context: dict[str, Any]):
        self.run, self.key, self._context = run, key, context
        self._tx = None

    async def __aenter__(self) -> "_AsyncPooledAction":
        self._tx = self.run.conn.transaction()
        await self._tx.__aenter__()
        try:
            await self.run._tag_transaction(self.key)
            if self._context:
                await self.context(**self._context)
        except BaseException as err:
            await self._tx.__aexit__(type(err), err, err.__traceback__)
            raise
        return self

    async def context(self, **context: Any) -> None:
        """Add context to this action (merged; the later key wins)."""
        await _set_context(self.run.conn, context)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self._tx.__aexit__(exc_type, exc, tb)
