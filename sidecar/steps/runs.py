"""Run tagging for automations, and reading runs back."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..capture.history import row_counts
from ..capture.tracking import regclass
from ..errors import UsageError

_UUID_PREFIX = re.compile(r"^[0-9a-fA-F-]+$")


class Run:
    """A run of an automation, tagging this connection's writes.

        with sidecar.Run(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
            conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    The run finishes as succeeded, or as failed with the exception's text when
    the block raises (the exception still propagates).
    """

    def __init__(self, conn: psycopg.Connection, automation: str, meta: dict[str, Any] | None = None,
                 *, run_id: str | uuid.UUID | None = None):
        """run_id attaches to a run that already exists (one `sidecar rerun` opened)."""
        self.conn = conn
        self.automation = automation
        self.meta = meta or {}
        self.run_id: uuid.UUID | None = uuid.UUID(str(run_id)) if run_id else None

    @classmethod
    def from_env(cls, conn: psycopg.Connection, automation: str, meta: dict[str, Any] | None = None) -> "Run":
        """Attach to $SIDECAR_RUN_ID when `sidecar rerun --exec` started us, else start a new run."""
        import os

        return cls(conn, automation, meta, run_id=os.environ.get("SIDECAR_RUN_ID") or None)

    def __enter__(self) -> "Run":
        if self.run_id is None:
            self.run_id = self.conn.execute(
                "SELECT sidecar.start_run(%s, %s)", (self.automation, Jsonb(self.meta))
            ).fetchone()[0]
        else:
            self.conn.execute("SELECT set_config('sidecar.run_id', %s, false)", (str(self.run_id),))
            self.conn.execute("SELECT set_config('sidecar.automation', %s, false)", (self.automation,))
        if not self.conn.autocommit:
            self.conn.commit()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.conn.closed:
            return
        if exc is None:
            if not self.conn.autocommit:
                self.conn.commit()
            self._finish("succeeded", None)
        else:
            # The block's transaction may be aborted: the failure is recorded outside it.
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.rollback()
            self._finish("failed", f"{type(exc).__name__}: {exc}")

    def _finish(self, status: str, error: str | None) -> None:
        self.conn.execute("SELECT sidecar.finish_run(%s, %s, %s)", (status, error, self.run_id))
        if not self.conn.autocommit:
            self.conn.commit()

    def action(self, key: str) -> "_Action":
        """Group the writes of the block into one action (one undo unit)."""
        return _Action(self.conn, key)

    def step(self, key: str) -> "Step":
        """One idempotent unit of work, committed with its writes:

            with run.step("note:ticket-42") as step:
                if step.skip:
                    continue          # done before, by this run or the one it reruns
                conn.execute("INSERT INTO billing_notes ...")
        """
        return Step(self, key)

    def plan(self, steps: list[str | dict]) -> None:
        """Declare the run's steps up front (keys, or {"key", "touches": [{"table", "key"}]})."""

        names: dict[str, str] = {}
        for step in steps:
            # Names are resolved here, with the caller's search_path (the SQL function takes qualified names).
            for target in step.get("touches", []) if isinstance(step, dict) else []:
                target["table"] = names.setdefault(target["table"], regclass(self.conn, target["table"]))
        self.conn.execute("SELECT sidecar.plan_steps(%s)", (Jsonb(steps),))
        if not self.conn.autocommit:
            self.conn.commit()

    def steps(self, items, key, touches=None):
        """Yield the items whose step still has to be done, each inside its own step.

            for ticket in run.steps(tickets, key=lambda t: f"note:ticket-{t.id}"):
                conn.execute("INSERT INTO billing_notes ...", ...)

        The plan is declared first, so a rerun knows what never started. An
        exception inside the loop rolls that step back, records it as failed
        and ends the loop.
        """
        items = list(items)
        self.plan([{"key": key(i), "touches": [{"table": t, "key": k} for t, k in (touches(i) if touches else [])]}
                   for i in items])
        for item in items:
            with self.step(key(item)) as step:
                if step.skip:
                    continue
                yield item


class Step:
    def __init__(self, run: Run, key: str):
        self.run, self.key = run, key
        self.skip = False
        self.done_by: tuple[uuid.UUID, datetime] | None = None
        self._tx = None

    def __enter__(self) -> "Step":
        conn = self.run.conn
        self._tx = conn.transaction()
        self._tx.__enter__()
        if not conn.execute("SELECT sidecar.begin_step(%s)", (self.key,)).fetchone()[0]:
            self.skip = True
            self.done_by = conn.execute("SELECT run_id, completed_at FROM sidecar.step_done(%s)", (self.key,)).fetchone()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        conn = self.run.conn
        if exc_type is None and not self.skip:
            try:
                conn.execute("SELECT sidecar.end_step()")
            except BaseException as err:
                self._tx.__exit__(type(err), err, err.__traceback__)
                raise
        self._tx.__exit__(exc_type, exc, tb)
        if exc_type is not None and not conn.closed and not isinstance(exc, psycopg.OperationalError):
            with conn.transaction():
                conn.execute("SELECT sidecar.fail_step(%s, %s)", (self.key, f"{exc_type.__name__}: {exc}"))
        return False


class _Action:
    def __init__(self, conn: psycopg.Connection, key: str):
        self.conn, self.key = conn, key

    def __enter__(self) -> "_Action":
        self.conn.execute("SELECT set_config('sidecar.action', %s, false)", (self.key,))
        return self

    def __exit__(self, *exc) -> None:
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            return
        self.conn.execute("SELECT set_config('sidecar.action', '', false)")


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

    @property
    def state(self) -> str:
        """What a person reads: succeeded, failed, running, abandoned (no live session), undone."""
        if self.undone_by:
            return "undone"
        if self.status == "running" and not self.alive:
            return "abandoned"
        return self.status


# The run states a person reads, in CLI, console and JSON alike (RunInfo.state).
STATES = ("running", "succeeded", "failed", "abandoned", "undone")

_ALIVE = """EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = r.backend_pid
               AND (r.backend_start IS NULL OR a.backend_start = r.backend_start))"""

# RunInfo.state in SQL, over sidecar.runs r: for filters and counts.
STATE_SQL = f"""CASE WHEN r.undone_by IS NOT NULL THEN 'undone'
     WHEN r.status = 'running' AND NOT {_ALIVE} THEN 'abandoned' ELSE r.status END"""

_RUN_SELECT = f"""
SELECT r.run_id, r.automation, r.status, r.meta, r.started_at, r.started_by, r.finished_at, r.error,
       r.undo_of, r.rerun_of,
       r.undone_by,
       (SELECT count(*) FROM sidecar.steps st WHERE st.run_id = r.run_id) AS steps_done,
       {_ALIVE} AS alive
FROM sidecar.runs r
"""


def _to_info(conn: psycopg.Connection, row: tuple, with_rows: bool = True) -> RunInfo:

    info = RunInfo(*row[:11], rows={}, steps_done=row[11], alive=row[12])
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
        f"SELECT r.automation, {STATE_SQL}, count(*) FROM sidecar.runs r WHERE r.undo_of IS NULL GROUP BY 1, 2"
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
    return conn.execute("SELECT count(*) FROM sidecar.runs r WHERE " + _RUN_FILTER,
                        {"a": automation, "s": since, "st": status}).fetchone()[0]
