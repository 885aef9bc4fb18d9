"""Run tagging for automations, and reading runs back."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..capture.history import row_counts
from ..capture.tracking import regclass
from ..errors import UsageError
from . import context as _context
from . import protocol

_UUID_PREFIX = re.compile(r"^[0-9a-fA-F-]+$")


class Run(protocol.BaseRun):
    """A run of an automation, tagging this connection's writes.

        with sidecar.Run(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
            conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    The run finishes as succeeded, or as failed with the exception's text when
    the block raises (the exception still propagates).

    pooled=True leaves nothing on the session, for PgBouncer's transaction
    pooling: each `run.action(key)`, `run.step(key)` and `run.transaction()` is
    one transaction that tags itself (SET LOCAL); writes outside them are not
    the run's.
    """

    def __enter__(self) -> "Run":
        if self.run_id is None:
            with self.conn.transaction():
                self.run_id = self.conn.execute(protocol.START,
                                                protocol.start(self.automation, self.meta)).fetchone()[0]
                if self.pooled:
                    self.conn.execute(protocol.UNTAG_SESSION)
        elif not self.pooled:
            self.conn.execute(protocol.ATTACH, protocol.attach(self.run_id, self.automation))
        if not self.conn.autocommit:
            self.conn.commit()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.conn.closed:
            return
        if exc is None:
            if not self.conn.autocommit:
                self.conn.commit()
        else:
            # The block's transaction may be aborted: the failure is recorded outside it.
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.rollback()
        self.conn.execute(protocol.FINISH, protocol.finish(self.run_id, exc))
        if not self.conn.autocommit:
            self.conn.commit()

    @contextmanager
    def transaction(self, action: str | None = None) -> Iterator[psycopg.Transaction]:
        """One transaction tagged with the run (and the action, if given), whatever the session holds."""
        with self.conn.transaction() as tx:
            self._tag_transaction(action)
            yield tx

    def _tag_transaction(self, action: str | None = None) -> None:
        self.conn.execute(protocol.TAG_TRANSACTION, self._tag_params(action))

    def action(self, key: str, **context: Any):
        """Group the writes of the block into one action (one undo unit). Pooled: one transaction.

        Context for the people who review and undo it (sidecar.steps.context):
        ``why=`` the model's reason, ``read=[...]`` what it read (``sidecar.row(table, key)`` or short
        texts), ``confidence=`` 0..1, any other keyword as JSON (``model=``, ``prompt_version=``).
        """
        if self.pooled:
            return _PooledAction(self, key, context)
        return _Action(self.conn, key, context)

    def step(self, key: str, **context: Any) -> "Step":
        """One idempotent unit of work, committed with its writes:

            with run.step("note:ticket-42", why="...", confidence=0.9) as step:
                if step.skip:
                    continue          # done before, by this run or the one it reruns
                conn.execute("INSERT INTO billing_notes ...")

        The context (as for ``action``) is set when the step runs, not when it is skipped.
        """
        return Step(self, key, context)

    def plan(self, steps: list[str | dict]) -> None:
        """Declare the run's steps up front (keys, or {"key", "touches": [{"table", "key"}]})."""

        names: dict[str, str] = {}
        for step in steps:
            # Names are resolved here, with the caller's search_path (the SQL function takes qualified names).
            for target in step.get("touches", []) if isinstance(step, dict) else []:
                target["table"] = names.setdefault(target["table"], regclass(self.conn, target["table"]))
        with self.conn.transaction():
            if self.pooled:
                self._tag_transaction()
            self.conn.execute(protocol.PLAN, {"steps": json.dumps(steps)})
        if not self.conn.autocommit:
            self.conn.commit()

    def steps(self, items, key, touches=None, **context):
        """Yield the items whose step still has to be done, each inside its own step.

            for ticket in run.steps(tickets, key=lambda t: f"note:ticket-{t.id}",
                                    why=lambda t: t.reason, confidence=0.9):
                conn.execute("INSERT INTO billing_notes ...", ...)

        Context keywords (as for ``action``) take a value or a callable of the item.

        The plan is declared first, so a rerun knows what never started. An
        exception inside the loop rolls that step back, records it as failed
        and ends the loop.
        """
        items = list(items)
        self.plan(protocol.plan(items, key, touches))
        for item in items:
            with self.step(key(item)) as step:
                if step.skip:
                    continue
                step.context(**_context.for_item(item, context))
                yield item


class Step:
    def __init__(self, run: Run, key: str, context: dict[str, Any] | None = None):
        self.run, self.key = run, key
        self._context = context or {}
        self.skip = False
        self.done_by: tuple[uuid.UUID, datetime] | None = None
        self._tx = None

    def __enter__(self) -> "Step":
        conn = self.run.conn
        self._tx = conn.transaction()
        self._tx.__enter__()
        if self.run.pooled:
            self.run._tag_transaction()
        if not conn.execute(protocol.BEGIN_STEP, {"key": self.key}).fetchone()[0]:
            self.skip = True
            self.done_by = conn.execute(protocol.STEP_DONE, {"key": self.key}).fetchone()
        elif self._context:
            try:
                self.context(**self._context)
            except BaseException as err:
                self._tx.__exit__(type(err), err, err.__traceback__)
                raise
        return self

    def context(self, **context: Any) -> None:
        """Add context to this step's action (merged; the later key wins)."""
        _context.set_context(self.run.conn, **context)

    def __exit__(self, exc_type, exc, tb) -> bool:
        conn = self.run.conn
        if exc_type is None and not self.skip:
            try:
                conn.execute(protocol.END_STEP)
            except BaseException as err:
                self._tx.__exit__(type(err), err, err.__traceback__)
                raise
        self._tx.__exit__(exc_type, exc, tb)
        if exc_type is not None and not conn.closed and not isinstance(exc, psycopg.OperationalError):
            with conn.transaction():
                if self.run.pooled:
                    self.run._tag_transaction()
                conn.execute(protocol.FAIL_STEP, protocol.step_failure(self.key, exc))
        return False


class _Action:
    def __init__(self, conn: psycopg.Connection, key: str, context: dict[str, Any] | None = None):
        self.conn, self.key = conn, key
        self._context = context or {}

    def __enter__(self) -> "_Action":
        self.conn.execute(protocol.SET_ACTION, {"action": self.key})
        if self._context:
            try:
                self.context(**self._context)
            except BaseException:
                self.__exit__()
                raise
        return self

    def context(self, **context: Any) -> None:
        """Add context to this action (merged; the later key wins)."""
        _context.set_context(self.conn, **context)

    def __exit__(self, *exc) -> None:
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            return
        self.conn.execute(protocol.CLEAR_ACTION)


class _PooledAction:
    """A pooled run's action: one transaction that tags itself (SET LOCAL), with its context."""

    def __init__(self, run: Run, key: str, context: dict[str, Any]):
        self.run, self.key, self._context = run, key, context
        self._tx = None

    def __enter__(self) -> "_PooledAction":
        self._tx = self.run.conn.transaction()
        self._tx.__enter__()
        try:
            self.run._tag_transaction(self.key)
            if self._context:
                self.context(**self._context)
        except BaseException as err:
            self._tx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def context(self, **context: Any) -> None:
        """Add context to this action (merged; the later key wins)."""
        _context.set_context(self.run.conn, **context)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tx.__exit__(exc_type, exc, tb)


@dataclass
class RunInfo:
    run_id: uuid.UUID
    automation: str
    status: str
    meta: dict
    started_at: datetime
    started_by: str
    finished_at: datetime | None
    error: str | None
    undo_of: uuid.UUID | None
    rerun_of: uuid.UUID | None
    undone_by: uuid.UUID | None
    rows: dict[str, int]

    steps_done: int = 0
    alive: bool = True
    # False: rows are the counts kept at rows_counted_at of a big run that has written since.
    rows_complete: bool = True
    rows_counted_at: datetime | None = None
    purged_at: datetime | None = None  # set: the captured changes were removed (sidecar purge)

    @property
    def state(self) -> str:
        """What a person reads: succeeded, failed, running, abandoned (no live session), undone."""
        if self.undone_by:
            return "undone"
        if self.status == "running" and not self.alive:
            return "abandoned"
        return self.status


_RUN_SELECT = """
SELECT r.run_id, r.automation, r.status, r.meta, r.started_at, r.started_by, r.finished_at, r.error,
       r.undo_of, r.rerun_of,
       r.undone_by,
       (SELECT count(*) FROM sidecar.steps st WHERE st.run_id = r.run_id) AS steps_done,
       EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = r.backend_pid
               AND (r.backend_start IS NULL OR a.backend_start = r.backend_start)) AS alive,
       r.purged_at
FROM sidecar.runs r
"""


def _to_info(conn: psycopg.Connection, row: tuple, with_rows: bool = True) -> RunInfo:

    info = RunInfo(*row[:11], rows={}, steps_done=row[11], alive=row[12], purged_at=row[13])
    if with_rows:
        counts = row_counts(conn, info.run_id)
        info.rows, info.rows_complete, info.rows_counted_at = counts.tables, counts.complete, counts.counted_at
    return info


def resolve(conn: psycopg.Connection, run_ref: str) -> uuid.UUID:
    """A full run id, or a unique prefix of at least 6 characters."""
    ref = run_ref.strip().lower()
    if not _UUID_PREFIX.match(ref) or len(ref.replace("-", "")) < 6:
        raise UsageError(f"run id {run_ref!r} is not a run id or a prefix of at least 6 characters")
    try:
        return_exact = uuid.UUID(ref)
    except ValueError:
        return_exact = None
    if return_exact is not None:
        if conn.execute("SELECT 1 FROM sidecar.runs WHERE run_id = %s", (return_exact,)).fetchone():
            return return_exact
        raise UsageError(f"run {run_ref} is not known; sidecar runs lists the runs")
    matches = conn.execute(
        "SELECT run_id FROM sidecar.runs WHERE run_id::text LIKE %s ORDER BY started_at LIMIT 3",
        (ref + "%",),
    ).fetchall()
    if not matches:
        raise UsageError(f"no run id starts with {run_ref}; sidecar runs lists the runs")
    if len(matches) > 1:
        raise UsageError(f"run id prefix {run_ref} is ambiguous ({len(matches)}+ runs); give more characters")
    return matches[0][0]


def get(conn: psycopg.Connection, run_ref: str | uuid.UUID) -> RunInfo:
    run_id = run_ref if isinstance(run_ref, uuid.UUID) else resolve(conn, run_ref)
    row = conn.execute(_RUN_SELECT + " WHERE r.run_id = %s", (run_id,)).fetchone()
    return _to_info(conn, row)


# Runs by automation, start time and state (a run's state as RunInfo.state names it).
_RUN_FILTER = """
    (%(a)s::text IS NULL OR r.automation = %(a)s) AND (%(s)s::timestamptz IS NULL OR r.started_at >= %(s)s)
    AND (%(st)s::text IS NULL OR CASE WHEN %(st)s = 'undone' THEN r.undone_by IS NOT NULL
                                      ELSE r.status = %(st)s AND r.undone_by IS NULL END)
"""


def list_runs(
    conn: psycopg.Connection,
    *,
    automation: str | None = None,
    since: datetime | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[RunInfo]:
    """Runs, newest first."""
    rows = conn.execute(
        _RUN_SELECT + " WHERE " + _RUN_FILTER + " ORDER BY r.started_at DESC, r.run_id OFFSET %(o)s LIMIT %(n)s",
        {"a": automation, "s": since, "st": status, "o": offset, "n": limit},
    ).fetchall()
    return [_to_info(conn, r) for r in rows]


def count_runs(conn: psycopg.Connection, *, automation: str | None = None, since: datetime | None = None,
               status: str | None = None) -> int:
    return conn.execute("SELECT count(*) FROM sidecar.runs r WHERE " + _RUN_FILTER,
                        {"a": automation, "s": since, "st": status}).fetchone()[0]
