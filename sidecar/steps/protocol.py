"""The statements a run sends, shared by every client that tags writes.

`Run` (psycopg), `AsyncRun` (psycopg's AsyncConnection) and the SQLAlchemy
integration send the same SQL in the same order; only how they execute it
differs. Parameters are named (`%(run)s`): psycopg takes them as they are,
`sqlalchemy_text` turns them into SQLAlchemy's `:run`.

Two ways to tag a connection:

- session (the default): `start_run` tags the session until `finish_run`;
  `sidecar.action` is a session setting too. Fine on a connection of one's own.
- pooled: nothing is left on the session. Each transaction starts with
  `TAG_TRANSACTION` (`set_config(..., true)`, i.e. SET LOCAL), which ends with
  the transaction: safe behind PgBouncer's transaction pooling and in a pool
  whose next user must not inherit the tag.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

from ..errors import NotARun, RunFinished, StepConflict, UsageError, full_text, one_line

# Start a run (refused, SC001, while the automation is paused): tags the session.
# key: an idempotency key (a second start with it reruns the first run's lineage).
START = "SELECT sidecar.start_run(%(automation)s, CAST(%(meta)s AS jsonb), %(key)s)"
# ... and, pooled, take the tag off the session again in the same transaction.
UNTAG_SESSION = ("SELECT set_config('sidecar.run_id', '', false), set_config('sidecar.automation', '', false), "
                 "set_config('sidecar.action', '', false)")
# Attach the session to a run that exists (one `sidecar rerun` opened); refused (SC011) when it has finished.
ATTACH = "SELECT sidecar.attach_run(CAST(%(run)s AS uuid), %(automation)s)"
# The first statement of each transaction of a pooled run.
TAG_TRANSACTION = ("SELECT set_config('sidecar.run_id', %(run)s, true), "
                   "set_config('sidecar.automation', %(automation)s, true), "
                   "set_config('sidecar.action', %(action)s, true)")
SET_ACTION = "SELECT set_config('sidecar.action', %(action)s, false)"
CLEAR_ACTION = "SELECT set_config('sidecar.action', '', false)"
# Always names the run: a pooled run's session carries no tag.
FINISH = "SELECT sidecar.finish_run(%(status)s, %(error)s, CAST(%(run)s AS uuid), %(detail)s)"
PLAN = "SELECT sidecar.plan_steps(CAST(%(steps)s AS jsonb))"
BEGIN_STEP = "SELECT sidecar.begin_step(%(key)s, %(same_work)s)"
STEP_DONE = "SELECT run_id, completed_at FROM sidecar.step_done(%(key)s)"
END_STEP = "SELECT sidecar.end_step()"
FAIL_STEP = "SELECT sidecar.fail_step(%(key)s, %(error)s, %(detail)s)"
# The run's own held writes and pauses (open to PUBLIC for one's own run; sidecar/steps/own_run.py).
HELD = "SELECT * FROM sidecar.run_held(CAST(%(run)s AS uuid))"
PAUSED = "SELECT * FROM sidecar.run_paused(CAST(%(run)s AS uuid))"
# A table a step touches, by its canonical name (the SQL function takes qualified names).
REGCLASS = "SELECT sidecar._qualname(to_regclass(%(table)s))"

LEFT_EARLY = ("the loop over run.steps was left before this step finished (break, or an exception caught "
              "outside the loop); its writes were rolled back")


class BaseRun:
    """What Run and AsyncRun share: who the run is, how it tags (see the module's docstring), and
    the checks that need no I/O."""

    def __init__(self, conn, automation: str, meta: dict[str, Any] | None = None,
                 *, run_id: str | uuid.UUID | None = None, key: str | None = None, pooled: bool = False):
        """run_id attaches to a run that already exists (one `sidecar rerun` opened); key is an
        idempotency key (a second run of the automation with it is a rerun of the first)."""
        if run_id and key:
            raise UsageError("a Run takes run_id (attach to a run) or key (an idempotency key), not both")
        self.conn = conn
        self.automation = automation
        self.meta = meta or {}
        self.key = key
        self.run_id: uuid.UUID | None = run_id_of(run_id)
        self.pooled = pooled
        self._started = False
        self._finished = False
        self._open_step = None
        self._unfinished: str | None = None  # a step a loop left unfinished, recorded when known why

    @classmethod
    def from_env(cls, conn, automation: str, meta: dict[str, Any] | None = None, *,
                 key: str | None = None, pooled: bool = False):
        """Attach to $SIDECAR_RUN_ID when `sidecar rerun --exec` started us, else start a new run."""
        run_id = os.environ.get("SIDECAR_RUN_ID") or None
        return cls(conn, automation, meta, run_id=run_id, key=None if run_id else key, pooled=pooled)

    def _tag_params(self, action: str | None = None) -> dict[str, Any]:
        return tag(self.run_id, self.automation, action)

    def _check_enter(self) -> None:
        if self._started:
            raise UsageError("a Run is entered once; start a new sidecar.Run for another run")

    def _check_open(self, what: str) -> None:
        """Writes through a Run that has not started, or has finished, would not be captured."""
        if not self._started:
            raise NotARun(f"sidecar: run.{what}() before the run started; use it inside `with sidecar.Run(...) as run:`",
                          details={"run_id": str(self.run_id) if self.run_id else None})
        if self._finished:
            raise RunFinished(f"sidecar: run {self.run_id} has finished; run.{what}() would write outside it, "
                              "uncaptured and beyond undo",
                              hint="Do the work inside the `with sidecar.Run(...)` block, or start a new run.",
                              details={"run_id": str(self.run_id)})

    def _take_unfinished(self) -> str | None:
        key, self._unfinished = self._unfinished, None
        return key


def start(automation: str, meta: dict[str, Any] | None, key: str | None = None) -> dict[str, Any]:
    return {"automation": automation, "meta": json.dumps(meta or {}), "key": key}


def attach(run_id: uuid.UUID, automation: str) -> dict[str, Any]:
    return {"run": str(run_id), "automation": automation}


def tag(run_id: uuid.UUID, automation: str, action: str | None = None) -> dict[str, Any]:
    return {"run": str(run_id), "automation": automation, "action": action or ""}


def finish(run_id: uuid.UUID, exc: BaseException | None) -> dict[str, Any]:
    """How a run ends: succeeded, or failed with the exception's one line (and its full diagnostics)."""
    if exc is None:
        return {"status": "succeeded", "error": None, "run": str(run_id), "detail": None}
    return {"status": "failed", "error": one_line(exc), "run": str(run_id), "detail": full_text(exc)}


def begin_step(key: str, same_work: bool) -> dict[str, Any]:
    return {"key": key, "same_work": bool(same_work)}


def plan(items: list, key, touches=None) -> list[dict]:
    """The plan `Run.steps` declares for its items (tables resolved by the caller)."""
    return steps_plan(list(items), [key(i) for i in items], touches, same_work=True)


def steps_plan(items: list, keys: list[str], touches, same_work: bool) -> list[dict]:
    """The plan of `run.steps`: one entry per key. Two items with one key are refused (StepConflict)
    unless same_work."""
    firsts: dict[str, Any] = {}
    for item, k in zip(items, keys):
        if k in firsts and not same_work:
            raise StepConflict(
                f"sidecar: step key {k!r} is given to two items ({firsts[k]!r} and {item!r}): "
                "the second would be skipped",
                hint="Make the key tell the items apart, or pass same_work=True if they are the same work.",
                details={"key": k})
        firsts.setdefault(k, item)
    result, planned = [], set()
    for item, k in zip(items, keys):
        if k not in planned:
            planned.add(k)
            result.append({"key": k, "touches": [{"table": t, "key": tk}
                                                  for t, tk in (touches(item) if touches else [])]})
    return result


def step_failure(key: str, exc: BaseException) -> dict[str, Any]:
    return step_failed(key, one_line(exc), full_text(exc))


def step_failed(key: str, error: str, detail: str | None = None) -> dict[str, Any]:
    return {"key": key, "error": error, "detail": detail}


def waiting(held: list, action: str | None = None) -> list:
    """The held writes still waiting for review (of one action, if given): what raise_if_held raises for."""
    return [h for h in held if h.waiting and (action is None or h.action == action)]


def no_such_table(table: str) -> str:
    return (f"table {table} does not exist; check the name (schema-qualified, "
            'mixed-case names in double quotes, e.g. \'"Order Items"\')')


def run_id_of(value: str | uuid.UUID | None) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


_NAMED = re.compile(r"%\((\w+)\)s")


def sqlalchemy_text(statement: str) -> str:
    """The statement with SQLAlchemy's bind markers (`:run`) for `sqlalchemy.text()`."""
    return _NAMED.sub(r":\1", statement)
