"""`AsyncRun`: `sidecar.Run` for psycopg's AsyncConnection, for automations written with asyncio.

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with sidecar.AsyncRun(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
            async with run.action("close:ticket-42"):
                await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
            async for ticket in run.steps(fetch_tickets(), key=lambda t: f"note:ticket-{t}"):
                await conn.execute("INSERT INTO notes ...")

It mirrors sidecar/steps/runs.py method for method (read one through the other, as psycopg's
connection.py and connection_async.py): the same statements (steps/protocol.py), in the same
order, with the same semantics; only the I/O is awaited. `steps` takes a sync or an async
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

from ..errors import UsageError
from ..steps import context as _context
from ..steps import protocol

__all__ = ["AsyncRun", "AsyncStep"]


class AsyncRun(protocol.BaseRun):
    """A run of an automation, tagging this AsyncConnection's writes; see `sidecar.Run`."""

    conn: psycopg.AsyncConnection

    async def __aenter__(self) -> "AsyncRun":
        self._loops: list[AsyncIterator] = []  # the `steps` loops, ended by __aexit__
        if self.run_id is None:
            async with self.conn.transaction():
                cur = await self.conn.execute(protocol.START, protocol.start(self.automation, self.meta))
                self.run_id = (await cur.fetchone())[0]
                if self.pooled:
                    await self.conn.execute(protocol.UNTAG_SESSION)
        elif not self.pooled:
            await self.conn.execute(protocol.ATTACH, protocol.attach(self.run_id, self.automation))
        if not self.conn.autocommit:
            await self.conn.commit()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self.conn.closed:
            return
        await self._close_steps(exc)
        if exc is None:
            if not self.conn.autocommit:
                await self.conn.commit()
        else:
            # The block's transaction may be aborted: the failure is recorded outside it.
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await self.conn.rollback()
        await self.conn.execute(protocol.FINISH, protocol.finish(self.run_id, exc))
        if not self.conn.autocommit:
            await self.conn.commit()

    async def _close_steps(self, exc: BaseException | None) -> None:
        """End the `steps` loops the block left: the step it was on rolls back and is recorded failed.

        A sync generator is closed as soon as its loop is left; an async one only when the event
        loop gets to it, so the run does it first, with the block's exception (its text is the
        step's error)."""
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
        async with self.conn.transaction() as tx:
            await self._tag_transaction(action)
            yield tx

    async def _tag_transaction(self, action: str | None = None) -> None:
        await self.conn.execute(protocol.TAG_TRANSACTION, self._tag_params(action))

    def action(self, key: str, **context: Any):
        """Group the writes of the block into one action (one undo unit), with its context
        (why=, read=, confidence=, ...; see `Run.action`). Pooled: one transaction."""
        if self.pooled:
            return _AsyncPooledAction(self, key, context)
        return _AsyncAction(self.conn, key, context)

    def step(self, key: str, **context: Any) -> "AsyncStep":
        """One idempotent unit of work, committed with its writes; see `Run.step`."""
        return AsyncStep(self, key, context)

    async def plan(self, steps: list[str | dict]) -> None:
        """Declare the run's steps up front (keys, or {"key", "touches": [{"table", "key"}]})."""
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

    def steps(self, items: Iterable | AsyncIterable, key, touches=None, **context) -> AsyncIterator:
        """Yield the items whose step still has to be done, each inside its own step; see `Run.steps`.

            async for ticket in run.steps(tickets, key=lambda t: f"note:ticket-{t.id}"):
                await conn.execute("INSERT INTO billing_notes ...", ...)

        Left by an exception, the step it was on is rolled back and recorded failed with the
        exception's text. Left early by `break`, that step is unfinished: it is rolled back and
        recorded failed when the run ends (a sync loop does it at once).
        """
        loop = self._steps(items, key, touches, context)
        self._loops.append(loop)
        return loop

    async def _steps(self, items, key, touches, context) -> AsyncIterator:
        if isinstance(items, AsyncIterable):
            items = [item async for item in items]
        else:
            items = list(items)
        await self.plan(protocol.plan(items, key, touches))
        for item in items:
            async with self.step(key(item)) as step:
                if step.skip:
                    continue
                await step.context(**_context.for_item(item, context))
                yield item


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
    def __init__(self, run: AsyncRun, key: str, context: dict[str, Any] | None = None):
        self.run, self.key = run, key
        self._context = context or {}
        self.skip = False
        self.done_by: tuple[uuid.UUID, datetime] | None = None
        self._tx = None

    async def __aenter__(self) -> "AsyncStep":
        conn = self.run.conn
        self._tx = conn.transaction()
        await self._tx.__aenter__()
        if self.run.pooled:
            await self.run._tag_transaction()
        if not (await (await conn.execute(protocol.BEGIN_STEP, {"key": self.key})).fetchone())[0]:
            self.skip = True
            self.done_by = await (await conn.execute(protocol.STEP_DONE, {"key": self.key})).fetchone()
        elif self._context:
            try:
                await self.context(**self._context)
            except BaseException as err:
                await self._tx.__aexit__(type(err), err, err.__traceback__)
                raise
        return self

    async def context(self, **context: Any) -> None:
        """Add context to this step's action (merged; the later key wins)."""
        await _set_context(self.run.conn, context)

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        conn = self.run.conn
        if exc_type is None and not self.skip:
            try:
                await conn.execute(protocol.END_STEP)
            except BaseException as err:
                await self._tx.__aexit__(type(err), err, err.__traceback__)
                raise
        await self._tx.__aexit__(exc_type, exc, tb)
        if exc_type is not None and not conn.closed and not isinstance(exc, psycopg.OperationalError):
            async with conn.transaction():
                if self.run.pooled:
                    await self.run._tag_transaction()
                await conn.execute(protocol.FAIL_STEP, protocol.step_failure(self.key, exc))
        return False


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
