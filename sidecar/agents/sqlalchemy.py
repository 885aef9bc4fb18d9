"""Tag the transactions of SQLAlchemy 2.x with a run (rollback-sidecar[sqlalchemy]).

Public path: `sidecar.sqlalchemy`.

    import sidecar.sqlalchemy

    with Session(engine) as session, sidecar.sqlalchemy.run(session, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.action("close:ticket-42"):
            session.execute(update(Ticket).where(Ticket.id == 42).values(status="resolved"))

    async with AsyncSession(engine) as session:
        async with sidecar.sqlalchemy.run(session, "ticket-bot") as run:
            async with run.action("close:ticket-42"):
                await session.execute(...)

Every transaction the Session (or Connection) begins while the run is open
starts with `SET LOCAL sidecar.run_id / sidecar.action` (SQLAlchemy's
`after_begin` / `begin` events): nothing is set on the database session, so a
pooled connection goes back to the pool untagged and PgBouncer's transaction
pooling is safe. Any driver: psycopg, asyncpg.

As `sidecar.Run`: the run starts (refused while its automation is paused) in a
transaction of its own, which commits what the session had pending; at the end
of the block the session's open transaction is committed, or rolled back when
the block raises, and the run finishes as succeeded or failed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..errors import UsageError
from ..steps import context as _context
from ..steps import protocol

try:  # the asyncio layer needs greenlet, which rollback-sidecar[sqlalchemy] installs
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
except ImportError:  # pragma: no cover - a SQLAlchemy without its asyncio extra
    AsyncConnection = AsyncSession = ()  # type: ignore[assignment,misc]

__all__ = ["SessionRun", "run"]

_START, _UNTAG, _FINISH, _TAG = (text(protocol.sqlalchemy_text(s)) for s in (
    protocol.START, protocol.UNTAG_SESSION, protocol.FINISH, protocol.TAG_TRANSACTION))
# sidecar.set_context with typed parameters (asyncpg binds none untyped).
_SET_CONTEXT = text("SELECT sidecar.set_context(CAST(:why AS text), CAST(:read AS jsonb), "
                    "CAST(:confidence AS float8), CAST(:extra AS jsonb))")


def _context_params(context: dict[str, Any]) -> dict[str, Any] | None:
    """set_context's parameters as JSON text, checked as sidecar.Run checks them (None: nothing to set)."""
    params = _context.context_params(**context)
    if params is None:
        return None
    why, read, confidence, extra = params
    try:
        return {"why": why, "read": json.dumps(read.obj) if read is not None else None, "confidence": confidence,
                "extra": json.dumps(extra.obj) if extra is not None else None}
    except TypeError as exc:
        raise _context.ContextError(f"context must be JSON: {exc}") from None


def run(target, automation: str, meta: dict[str, Any] | None = None, *,
        run_id: str | uuid.UUID | None = None, key: str | None = None) -> "SessionRun":
    """A run tagging `target` (a Session, AsyncSession, Connection or AsyncConnection).

    Use it with `with` (sync) or `async with` (AsyncSession, AsyncConnection).
    run_id attaches to a run that exists (one `sidecar rerun` opened); key is an idempotency key,
    as for `sidecar.Run` (a second run of the automation with it is a rerun of the first).
    """
    return SessionRun(target, automation, meta, run_id=run_id, key=key)


class SessionRun:
    """A run over a SQLAlchemy Session or Connection; see `run`."""

    def __init__(self, target, automation: str, meta: dict[str, Any] | None = None, *,
                 run_id: str | uuid.UUID | None = None, key: str | None = None):
        if run_id and key:
            raise UsageError("sidecar.sqlalchemy.run takes run_id (attach to a run) or key (an idempotency key), "
                             "not both")
        if not isinstance(target, (Session, Connection, AsyncSession, AsyncConnection)):
            raise UsageError(f"sidecar.sqlalchemy.run takes a Session, AsyncSession or Connection, "
                             f"not {type(target).__name__}")
        if not automation or not automation.strip():
            raise UsageError("sidecar.sqlalchemy.run needs the automation's name, e.g. 'ticket-bot'")
        self.target = target
        self.automation = automation
        self.meta = meta or {}
        self.key = key
        self.run_id: uuid.UUID | None = protocol.run_id_of(run_id)
        self._action: str | None = None
        self._action_context: dict[str, Any] | None = None  # set_context's parameters for the action
        self._listening = False

    # -- what the events see --------------------------------------------------

    @property
    def _sync_target(self) -> Session | Connection:
        if isinstance(self.target, AsyncSession):
            return self.target.sync_session
        if isinstance(self.target, AsyncConnection):
            return self.target.sync_connection
        return self.target

    def _tag(self, connection: Connection) -> None:
        connection.execute(_TAG, protocol.tag(self.run_id, self.automation, self._action))
        if self._action_context:
            connection.execute(_SET_CONTEXT, self._action_context)

    def _after_begin(self, session, transaction, connection) -> None:  # Session's after_begin
        self._tag(connection)

    def _begin(self, connection) -> None:  # Connection's begin
        self._tag(connection)

    def _listen(self) -> None:
        target = self._sync_target
        if isinstance(target, Session):
            event.listen(target, "after_begin", self._after_begin)
        else:
            event.listen(target, "begin", self._begin)
        self._listening = True

    def _unlisten(self) -> None:
        if not self._listening:
            return
        target = self._sync_target
        if isinstance(target, Session):
            event.remove(target, "after_begin", self._after_begin)
        else:
            event.remove(target, "begin", self._begin)
        self._listening = False

    def _in_transaction(self) -> bool:
        return self._sync_target.in_transaction()

    # -- sync -----------------------------------------------------------------

    def __enter__(self) -> "SessionRun":
        if isinstance(self.target, (AsyncSession, AsyncConnection)):
            raise UsageError("an AsyncSession's run is entered with `async with`")
        target = self._sync_target
        if self.run_id is None:
            try:
                self.run_id = target.execute(_START, protocol.start(self.automation, self.meta, self.key)).scalar_one()
                target.execute(_UNTAG)
                target.commit()
            except BaseException:
                target.rollback()  # refused (a pause): the session is usable again, no run exists
                raise
        self._listen()
        return self

    def _current_connection(self) -> Connection:
        target = self._sync_target
        return target.connection() if isinstance(target, Session) else target

    def __exit__(self, exc_type, exc, tb) -> None:
        target = self._sync_target
        try:
            if self._in_transaction():
                if exc is None:
                    try:
                        target.commit()
                    except BaseException as err:  # the commit failed: so did the run
                        exc = err
                        target.rollback()
                        raise
                else:
                    target.rollback()
        finally:
            self._unlisten()
            target.execute(_FINISH, protocol.finish(self.run_id, exc))
            target.commit()

    def action(self, key: str, **context: Any) -> "_Action":
        """Group the block's writes into one action: `with run.action(key, why=..., confidence=0.8):`
        (or `async with`). Context as for `sidecar.Run.action`, set in each transaction of the action."""
        if not key:
            raise UsageError("an action needs a key, e.g. 'close:ticket-42'")
        return _Action(self, key, _context_params(context))

    # -- async ----------------------------------------------------------------

    async def __aenter__(self) -> "SessionRun":
        if not isinstance(self.target, (AsyncSession, AsyncConnection)):
            raise UsageError("a Session's run is entered with `with`, not `async with`")
        if self.run_id is None:
            try:
                result = await self.target.execute(_START, protocol.start(self.automation, self.meta, self.key))
                self.run_id = result.scalar_one()
                await self.target.execute(_UNTAG)
                await self.target.commit()
            except BaseException:
                await self.target.rollback()  # refused (a pause): the session is usable again, no run exists
                raise
        self._listen()
        return self

    async def _execute_tag(self) -> None:
        await self.target.execute(_TAG, protocol.tag(self.run_id, self.automation, self._action))
        if self._action_context:
            await self.target.execute(_SET_CONTEXT, self._action_context)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if self._in_transaction():
                if exc is None:
                    try:
                        await self.target.commit()
                    except BaseException as err:  # the commit failed: so did the run
                        exc = err
                        await self.target.rollback()
                        raise
                else:
                    await self.target.rollback()
        finally:
            self._unlisten()
            await self.target.execute(_FINISH, protocol.finish(self.run_id, exc))
            await self.target.commit()


class _Action:
    """The run's current action for the block; a transaction already open is re-tagged."""

    def __init__(self, owner: SessionRun, key: str, context: dict[str, Any] | None):
        self.owner, self.key, self.context = owner, key, context
        self._was: tuple[str | None, dict | None] = (None, None)

    def _swap(self, to: tuple[str | None, dict | None]) -> None:
        self._was = self.owner._action, self.owner._action_context
        self.owner._action, self.owner._action_context = to

    def __enter__(self) -> "_Action":
        self._swap((self.key, self.context))
        if self.owner._in_transaction():
            self.owner._tag(self.owner._current_connection())
        return self

    def __exit__(self, *exc) -> None:
        self.owner._action, self.owner._action_context = self._was
        if self.owner._in_transaction() and exc[0] is None:
            self.owner._tag(self.owner._current_connection())

    async def __aenter__(self) -> "_Action":
        self._swap((self.key, self.context))
        if self.owner._in_transaction():
            await self.owner._execute_tag()
        return self

    async def __aexit__(self, *exc) -> None:
        self.owner._action, self.owner._action_context = self._was
        if self.owner._in_transaction() and exc[0] is None:
            await self.owner._execute_tag()
