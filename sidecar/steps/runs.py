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
from ..errors import TransactionAborted, UsageError, full_text, one_line
from . import _step, own_run, protocol
from . import context as _context
from ._step import LEFT_EARLY, Step, _in_error

_UUID_PREFIX = re.compile(r"^[0-9a-fA-F-]+$")


class Run(protocol.BaseRun):
    """A run of an automation, tagging this connection's writes.

        with sidecar.Run(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
            conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    The run finishes as succeeded, or as failed with the exception's one-line text
    when the block raises (the exception still propagates). `run.run_id` is its id.
    key: an idempotency key; a second run of the automation with the same key is a
    rerun of the first (its steps done are skipped).

    pooled=True leaves nothing on the session, for PgBouncer's transaction
    pooling: each `run.action(key)`, `run.step(key)` and `run.transaction()` is
    one transaction that tags itself (SET LOCAL); writes outside them are not
    the run's.
    """

    conn: psycopg.Connection

    def __enter__(self) -> "Run":
        self._check_enter()
        with self.conn.transaction():
            if self.run_id is None:
                self.run_id = self.conn.execute(
                    protocol.START, protocol.start(self.automation, self.meta, self.key)).fetchone()[0]
            else:
                self.conn.execute(protocol.ATTACH, protocol.attach(self.run_id, self.automation))
            if self.pooled:
                self.conn.execute(protocol.UNTAG_SESSION)
        if not self.conn.autocommit:
            self.conn.commit()
        self._started = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finished = True
        if self.conn.closed:
            return
        if self._open_step is not None:
            # A loop over run.steps kept in a variable: its step ends with the block's exception.
            if exc is not None:
                self._open_step.__exit__(exc_type, exc, tb)
            else:
                self._open_step._abandon()
        if exc is None and _in_error(self.conn):
            # The block caught a failed statement and went on: its transaction cannot commit.
            self.conn.rollback()
            err = self._why_aborted("a statement of the run failed and its error was caught, so its "
                                    "transaction could not commit; it was rolled back")
            self._finish(err)
            raise err
        if exc is None:
            if not self.conn.autocommit:
                self.conn.commit()
            self._record_unfinished(LEFT_EARLY)
            self._finish(None)
        else:
            # The block's transaction may be aborted: the failure is recorded outside it.
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.rollback()
            try:
                self._record_unfinished(one_line(exc), full_text(exc))
                self._finish(exc)
            except psycopg.Error as err:
                # Recording the failure failed too (the session is gone...): the block's own exception goes on.
                exc.add_note(f"sidecar: the run's failure could not be recorded: {one_line(err)}")

    def _finish(self, exc: BaseException | None) -> None:
        self.conn.execute(protocol.FINISH, protocol.finish(self.run_id, exc))
        if not self.conn.autocommit:
            self.conn.commit()

    @contextmanager
    def transaction(self, action: str | None = None) -> Iterator[psycopg.Transaction]:
        """One transaction tagged with the run (and the action, if given), whatever the session holds."""
        self._check_open("transaction")
        with self.conn.transaction() as tx:
            self._tag_transaction(action)
            yield tx

    def _tag_transaction(self, action: str | None = None) -> None:
        self.conn.execute(protocol.TAG_TRANSACTION, self._tag_params(action))

    def _fail_step(self, key: str, error: str, detail: str | None) -> None:
        with self.conn.transaction():
            if self.pooled:
                self._tag_transaction()
            self.conn.execute(protocol.FAIL_STEP, protocol.step_failed(key, error, detail))

    def _record_unfinished(self, error: str, detail: str | None = None) -> None:
        key = self._take_unfinished()
        if key is not None:
            self._fail_step(key, error, detail)

    def _why_aborted(self, what: str) -> Exception:
        """After a caught failure rolled a transaction back: Paused when the automation is paused, else
        TransactionAborted."""
        pauses = [p for p in self.paused() if p.scope == "automation"]
        if pauses:
            return own_run.paused_error(pauses[0])
        return TransactionAborted(f"sidecar: {what}",
                                  hint="Let the error propagate, or roll back and retry the step")

    def action(self, key: str, **context: Any):
        """Group the writes of the block into one action (one undo unit). Pooled: one transaction.

        Context for the people who review and undo it (sidecar.steps.context):
        ``why=`` the model's reason, ``read=[...]`` what it read (``sidecar.row(table, key)`` or short
        texts), ``confidence=`` 0..1, any other keyword as JSON (``model=``, ``prompt_version=``).

        In autocommit mode an action is not a transaction: each statement commits on its own, so a
        write before an exception stays (and is captured). Without autocommit, the block's writes
        commit with the caller's transaction.
        """
        self._check_open("action")
        if self.pooled:
            return _PooledAction(self, key, context)
        return _Action(self.conn, key, context)

    def step(self, key: str, *, same_work: bool = False, **context: Any) -> Step:
        """One idempotent unit of work, committed with its writes:

            with run.step("note:ticket-42", why="...", confidence=0.9) as step:
                if step.skip:
                    continue          # done before, by this run or the one it reruns
                conn.execute("INSERT INTO billing_notes ...")

        The context (as for ``action``) is set when the step runs, not when it is skipped.
        A key this run completed already is refused (StepConflict) unless same_work=True.
        """
        return Step(self, key, context, same_work=same_work)

    def plan(self, steps: list[str | dict]) -> None:
        """Declare the run's steps up front (keys, or {"key", "touches": [{"table", "key"}]})."""
        self._check_open("plan")
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

    def steps(self, items, key, touches=None, *, same_work: bool = False, **context):
        """Yield the items whose step still has to be done, each inside its own step.

            for ticket in run.steps(tickets, key=lambda t: f"note:ticket-{t.id}",
                                    why=lambda t: t.reason, confidence=0.9):
                conn.execute("INSERT INTO billing_notes ...", ...)

        Context keywords (as for ``action``) take a value or a callable of the item.

        The plan is declared first, so a rerun knows what never started. Two items with one key
        are refused (StepConflict) unless same_work=True. An exception inside the loop rolls that
        step back, records it as failed with that exception, and ends the loop; so does leaving
        the loop early (break): the current item's step is rolled back.
        """
        return _step.iterate(self, items, key, touches, same_work, context)

    def held(self) -> list[own_run.HeldWrite]:
        """The run's writes a hold rule held, with queue ids and decisions (pending, conflict, approved,
        rejected)."""
        return own_run.held(self.conn, self.run_id)

    def paused(self) -> list[own_run.Pause]:
        """The pauses that stop the run's writes now: empty when it is not paused."""
        return own_run.paused(self.conn, self.run_id)

    def raise_if_held(self, action: str | None = None) -> None:
        """Raise Held when writes of the run (of one action, if given) wait for review.

        Call it after a step, not inside one: raised inside, it rolls the step back, and the held
        write with it (it never reaches the queue).
        """
        waiting = protocol.waiting(self.held(), action)
        if waiting:
            raise own_run.held_error(waiting, self.run_id)


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


# The words people read for a run's state, in the CLI, its JSON and the console.
STATES = ("running", "waiting", "succeeded", "failed", "abandoned", "undone")


def state_word(status: str, *, undone: bool = False, alive: bool = True, waiting: bool = False) -> str:
    """A run's state in one word:

    - undone: an undo of the whole run is in effect (not itself undone);
    - waiting: opened by `sidecar rerun`, no session has attached or written yet;
    - abandoned: running, but no live session holds it;
    - else its status: running, succeeded, failed.
    """
    if undone:
        return "undone"
    if status == "running" and not alive:
        return "waiting" if waiting else "abandoned"
    return status


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
    # The undo in effect: None when the run was never undone whole, or its undo was undone in turn.
    undone_by: uuid.UUID | None
    rows: dict[str, int]

    steps_done: int = 0
    alive: bool = True
    # False: rows are the counts kept at rows_counted_at of a big run that has written since.
    rows_complete: bool = True
    rows_counted_at: datetime | None = None
    # The failure's full diagnostics (detail, hint, context), for operators; error is its one line.
    error_detail: str | None = None
    run_key: str | None = None
    waiting: bool = False
    purged_at: datetime | None = None  # set: the captured changes were removed (sidecar purge)

    @property
    def state(self) -> str:
        """What a person reads: running, waiting, succeeded, failed, abandoned, undone (state_word)."""
        return state_word(self.status, undone=self.undone_by is not None, alive=self.alive, waiting=self.waiting)


# A run's undo is in effect unless that undo was undone in turn (and that one not undone again).
_RUN_FROM = """
FROM sidecar.runs r
LEFT JOIN sidecar.runs ru ON ru.run_id = r.undone_by
LEFT JOIN sidecar.runs ruu ON ruu.run_id = ru.undone_by
"""
_UNDONE_BY = "CASE WHEN ru.undone_by IS NULL OR ruu.undone_by IS NOT NULL THEN r.undone_by END"

_ALIVE = """EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = r.backend_pid
               AND (r.backend_start IS NULL OR a.backend_start = r.backend_start))"""
_WAITING = """r.backend_pid IS NULL AND r.rerun_of IS NOT NULL
            AND NOT EXISTS (SELECT FROM sidecar.actions ac WHERE ac.run_id = r.run_id)"""

# state_word in SQL, over _RUN_FROM: the state filters and counts read what RunInfo.state says.
STATE_SQL = f"""CASE WHEN {_UNDONE_BY} IS NOT NULL THEN 'undone'
     WHEN r.status = 'running' AND NOT {_ALIVE} THEN CASE WHEN {_WAITING} THEN 'waiting' ELSE 'abandoned' END
     ELSE r.status END"""

_RUN_SELECT = f"""
SELECT r.run_id, r.automation, r.status, r.meta, r.started_at, r.started_by, r.finished_at, r.error,
       r.undo_of, r.rerun_of,
       {_UNDONE_BY} AS undone_by,
       (SELECT count(*) FROM sidecar.steps st WHERE st.run_id = r.run_id) AS steps_done,
       {_ALIVE} AS alive,
       r.error_detail, coalesce(r.run_key, r.meta ->> 'run_key') AS run_key,
       {_WAITING} AS waiting,
       r.purged_at
{_RUN_FROM}"""


def _to_info(conn: psycopg.Connection, row: tuple, with_rows: bool = True) -> RunInfo:

    info = RunInfo(*row[:11], rows={}, steps_done=row[11], alive=row[12], error_detail=row[13], run_key=row[14],
                   waiting=row[15], purged_at=row[16])
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
        raise UsageError(f"run {run_ref} is not known", shell="sidecar runs lists the runs")
    matches = conn.execute(
        "SELECT run_id FROM sidecar.runs WHERE run_id::text LIKE %s ORDER BY started_at LIMIT 3",
        (ref + "%",),
    ).fetchall()
    if not matches:
        raise UsageError(f"no run id starts with {run_ref}", shell="sidecar runs lists the runs")
    if len(matches) > 1:
        raise UsageError(f"run id prefix {run_ref} is ambiguous ({len(matches)}+ runs); give more characters")
    return matches[0][0]


def get(conn: psycopg.Connection, run_ref: str | uuid.UUID) -> RunInfo:
    run_id = run_ref if isinstance(run_ref, uuid.UUID) else resolve(conn, run_ref)
    row = conn.execute(_RUN_SELECT + " WHERE r.run_id = %s", (run_id,)).fetchone()
    return _to_info(conn, row)


# Runs by automation, start time and state (a run's state as RunInfo.state names it).
_RUN_FILTER = f"""
    (%(a)s::text IS NULL OR r.automation = %(a)s) AND (%(s)s::timestamptz IS NULL OR r.started_at >= %(s)s)
    AND (%(st)s::text IS NULL OR ({STATE_SQL}) = %(st)s)
"""


def check_state(state: str | None) -> str | None:
    """A state filter as given, or a UsageError naming the states."""
    if state and state not in STATES:
        raise UsageError(f"status {state!r} is not a run state; choose one of {', '.join(STATES)}")
    return state or None


def state_counts(conn: psycopg.Connection) -> dict[str, dict[str, int]]:
    """Runs per automation and state (undo runs left out): {automation: {state: n}}."""
    out: dict[str, dict[str, int]] = {}
    for automation, state, n in conn.execute(
        f"SELECT r.automation, {STATE_SQL}, count(*) {_RUN_FROM} WHERE r.undo_of IS NULL GROUP BY 1, 2"
    ):
        out.setdefault(automation, {})[state] = n
    return out


def list_runs(
    conn: psycopg.Connection,
    *,
    automation: str | None = None,
    since: datetime | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[RunInfo]:
    """Runs, newest first; status is one of STATES."""
    check_state(status)
    rows = conn.execute(
        _RUN_SELECT + " WHERE " + _RUN_FILTER + " ORDER BY r.started_at DESC, r.run_id OFFSET %(o)s LIMIT %(n)s",
        {"a": automation, "s": since, "st": status, "o": offset, "n": limit},
    ).fetchall()
    return [_to_info(conn, r) for r in rows]


def count_runs(conn: psycopg.Connection, *, automation: str | None = None, since: datetime | None = None,
               status: str | None = None) -> int:
    return conn.execute("SELECT count(*) " + _RUN_FROM + " WHERE " + _RUN_FILTER,
                        {"a": automation, "s": since, "st": status}).fetchone()[0]
