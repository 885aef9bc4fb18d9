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

# Start a run (refused, SC001, while the automation is paused): tags the session.
START = "SELECT sidecar.start_run(%(automation)s, CAST(%(meta)s AS jsonb))"
# ... and, pooled, take the tag off the session again in the same transaction.
UNTAG_SESSION = ("SELECT set_config('sidecar.run_id', '', false), set_config('sidecar.automation', '', false), "
                 "set_config('sidecar.action', '', false)")
# Attach the session to a run that exists (one `sidecar rerun` opened).
ATTACH = ("SELECT set_config('sidecar.run_id', %(run)s, false), "
          "set_config('sidecar.automation', %(automation)s, false)")
# The first statement of each transaction of a pooled run.
TAG_TRANSACTION = ("SELECT set_config('sidecar.run_id', %(run)s, true), "
                   "set_config('sidecar.automation', %(automation)s, true), "
                   "set_config('sidecar.action', %(action)s, true)")
SET_ACTION = "SELECT set_config('sidecar.action', %(action)s, false)"
CLEAR_ACTION = "SELECT set_config('sidecar.action', '', false)"
FINISH = "SELECT sidecar.finish_run(%(status)s, %(error)s, CAST(%(run)s AS uuid))"
PLAN = "SELECT sidecar.plan_steps(CAST(%(steps)s AS jsonb))"
BEGIN_STEP = "SELECT sidecar.begin_step(%(key)s)"
STEP_DONE = "SELECT run_id, completed_at FROM sidecar.step_done(%(key)s)"
END_STEP = "SELECT sidecar.end_step()"
FAIL_STEP = "SELECT sidecar.fail_step(%(key)s, %(error)s)"
# A table a step touches, by its canonical name (the SQL function takes qualified names).
REGCLASS = "SELECT sidecar._qualname(to_regclass(%(table)s))"


class BaseRun:
    """What Run and AsyncRun share: who the run is and how it tags (see the module's docstring)."""

    def __init__(self, conn, automation: str, meta: dict[str, Any] | None = None,
                 *, run_id: str | uuid.UUID | None = None, pooled: bool = False):
        """run_id attaches to a run that already exists (one `sidecar rerun` opened)."""
        self.conn = conn
        self.automation = automation
        self.meta = meta or {}
        self.run_id: uuid.UUID | None = run_id_of(run_id)
        self.pooled = pooled

    @classmethod
    def from_env(cls, conn, automation: str, meta: dict[str, Any] | None = None, *, pooled: bool = False):
        """Attach to $SIDECAR_RUN_ID when `sidecar rerun --exec` started us, else start a new run."""
        return cls(conn, automation, meta, run_id=os.environ.get("SIDECAR_RUN_ID") or None, pooled=pooled)

    def _tag_params(self, action: str | None = None) -> dict[str, Any]:
        return tag(self.run_id, self.automation, action)


def start(automation: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    return {"automation": automation, "meta": json.dumps(meta or {})}


def attach(run_id: uuid.UUID, automation: str) -> dict[str, Any]:
    return {"run": str(run_id), "automation": automation}


def tag(run_id: uuid.UUID, automation: str, action: str | None = None) -> dict[str, Any]:
    return {"run": str(run_id), "automation": automation, "action": action or ""}


def finish(run_id: uuid.UUID, exc: BaseException | None) -> dict[str, Any]:
    """How a run ends: succeeded, or failed with the exception's text."""
    if exc is None:
        return {"status": "succeeded", "error": None, "run": str(run_id)}
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "run": str(run_id)}


def plan(items: list, key, touches=None) -> list[dict]:
    """The plan `Run.steps` declares for its items (tables resolved by the caller)."""
    return [{"key": key(i), "touches": [{"table": t, "key": k} for t, k in (touches(i) if touches else [])]}
            for i in items]


def step_failure(key: str, exc: BaseException) -> dict[str, Any]:
    return {"key": key, "error": f"{type(exc).__name__}: {exc}"}


def no_such_table(table: str) -> str:
    return (f"table {table} does not exist; check the name (schema-qualified, "
            'mixed-case names in double quotes, e.g. \'"Order Items"\')')


def run_id_of(value: str | uuid.UUID | None) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


_NAMED = re.compile(r"%\((\w+)\)s")


def sqlalchemy_text(statement: str) -> str:
    """The statement with SQLAlchemy's bind markers (`:run`) for `sqlalchemy.text()`."""
    return _NAMED.sub(r":\1", statement)
