"""Steps: one idempotent unit of work each, committed with its writes; and `run.steps` iteration.

A failure is recorded as it happened: the exception that left the step (not the
GeneratorExit of a loop left early, nor the error of a commit that could not happen).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import psycopg

from ..errors import StepConflict, TransactionAborted, full_text, one_line
from . import context as _context

LEFT_EARLY = ("the loop over run.steps was left before this step finished (break, or an exception caught "
              "outside the loop); its writes were rolled back")


def _in_error(conn: psycopg.Connection) -> bool:
    return not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR


class Step:
    """`with run.step(key) as step:`; `step.skip` is true when it was done before (`step.done_by`)."""

    def __init__(self, run: Any, key: str, context: dict[str, Any] | None = None, *, same_work: bool = False):
        self.run, self.key, self.same_work = run, key, same_work
        self._context = context or {}
        self.skip = False
        self.done_by: tuple[uuid.UUID, datetime] | None = None
        self._tx: psycopg.Transaction | None = None
        self._closed = False

    def __enter__(self) -> "Step":
        run = self.run
        run._check_open("step")
        run._record_unfinished(LEFT_EARLY)
        conn = run.conn
        self._tx = conn.transaction()
        self._tx.__enter__()
        try:
            begun = conn.execute("SELECT sidecar.begin_step(%s, %s)", (self.key, self.same_work)).fetchone()[0]
            if not begun:
                self.skip = True
                self.done_by = conn.execute("SELECT run_id, completed_at FROM sidecar.step_done(%s)",
                                            (self.key,)).fetchone()
            elif self._context:
                self.context(**self._context)
        except BaseException as err:
            self._closed = True
            self._tx.__exit__(type(err), err, err.__traceback__)
            raise
        run._open_step = self
        return self

    def context(self, **context: Any) -> None:
        """Add context to this step's action (merged; the later key wins)."""
        _context.set_context(self.run.conn, **context)

    def __exit__(self, exc_type, exc, tb) -> bool:
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
                self._rollback()
                err = run._why_aborted(f"a statement of step {self.key!r} failed and its error was caught, "
                                       "so the step could not commit; it was rolled back")
                self._fail(err)
                raise err
            try:
                conn.execute("SELECT sidecar.end_step()")
            except BaseException as err:
                self._tx.__exit__(type(err), err, err.__traceback__)
                self._fail(err)
                raise
        self._tx.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            self._fail(exc)
        return False

    def _rollback(self) -> None:
        self._tx.__exit__(psycopg.Rollback, psycopg.Rollback(self._tx), None)

    def _fail(self, exc: BaseException) -> None:
        if self.skip or isinstance(exc, psycopg.OperationalError) or self.run.conn.closed:
            return
        self.run._fail_step(self.key, one_line(exc), full_text(exc))

    def _abandon(self) -> None:
        """The loop left this step without finishing it: roll back; the run records why when it ends."""
        if self._closed:
            return
        self._closed = True
        if self.run._open_step is self:
            self.run._open_step = None
        if self.run.conn.closed:
            return
        self._rollback()
        if not self.skip:
            self.run._unfinished = self.key


def iterate(run: Any, items: Iterable, key: Callable[[Any], str], touches: Callable | None,
            same_work: bool, context: dict[str, Any] | None = None) -> Iterator:
    """The body of `Run.steps` (see there)."""
    items = list(items)
    keys = [key(i) for i in items]
    firsts: dict[str, Any] = {}
    for item, k in zip(items, keys):
        if k in firsts and not same_work:
            raise StepConflict(
                f"sidecar: step key {k!r} is given to two items ({firsts[k]!r} and {item!r}): "
                "the second would be skipped",
                hint="Make the key tell the items apart, or pass same_work=True if they are the same work.",
                details={"key": k})
        firsts.setdefault(k, item)
    plan, planned = [], set()
    for item, k in zip(items, keys):
        if k not in planned:
            planned.add(k)
            plan.append({"key": k, "touches": [{"table": t, "key": tk} for t, tk in (touches(item) if touches else [])]})
    run.plan(plan)
    for item, k in zip(items, keys):
        step = Step(run, k, same_work=same_work)
        step.__enter__()
        if step.skip:
            step.__exit__(None, None, None)
            continue
        try:
            if context:
                step.context(**_context.for_item(item, context))
            yield item
        except GeneratorExit:
            step._abandon()
            raise
        except BaseException as exc:  # thrown into the loop (gen.throw)
            step.__exit__(type(exc), exc, exc.__traceback__)
            raise
        step.__exit__(None, None, None)
