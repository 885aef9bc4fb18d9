"""What an automation may ask about its own run: its held writes and its pauses.

Read through `sidecar.run_held()` and `sidecar.run_paused()`, which are open to
PUBLIC for the caller's own run only: the automation's role needs no grant on
sidecar's tables. `Run.held()`, `Run.paused()` and `Run.raise_if_held()` call these.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from ..errors import Held, Paused

WAITING = ("pending", "conflict")


@dataclass
class HeldWrite:
    """One write of the run a hold rule held: waiting for a person (pending, conflict) or decided."""

    pending_id: int
    action: str
    table: str
    op: str            # insert | update | delete
    key: dict
    status: str        # pending | conflict | approved | rejected
    reason: str
    held_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_why: str | None = None

    @property
    def waiting(self) -> bool:
        return self.status in WAITING


@dataclass
class Pause:
    """A pause that stops the run's writes: its automation's, every automation's ('*'), or a table's."""

    scope: str         # automation | table
    target: str        # the automation's name, '*', or the table
    reason: str
    paused_by: str
    paused_at: datetime


def held(conn: psycopg.Connection, run_id: uuid.UUID | None) -> list[HeldWrite]:
    """The run's held writes, oldest first, with their queue ids and decisions."""
    rows = conn.execute("SELECT * FROM sidecar.run_held(%s)", (run_id,)).fetchall()
    return [HeldWrite(*row) for row in rows]


def paused(conn: psycopg.Connection, run_id: uuid.UUID | None) -> list[Pause]:
    """The pauses that stop the run's writes now (empty: not paused)."""
    return [Pause(*row) for row in conn.execute("SELECT * FROM sidecar.run_paused(%s)", (run_id,)).fetchall()]


def held_error(waiting: list[HeldWrite], run_id: uuid.UUID | None) -> Held:
    """`Held` for the writes still waiting for review."""
    first = waiting[0]
    more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
    return Held(f"sidecar: the {first.op} of {first.table} {_key(first.key)} (held change {first.pending_id}{more}) "
                f"waits for review: {first.reason}",
                hint="It has not landed. Stop here and let a person decide (sidecar queue; approve or reject), "
                     "then rerun: steps done are skipped.",
                details={"run_id": str(run_id) if run_id else None, "pending_ids": [h.pending_id for h in waiting]},
                held=waiting)


def paused_error(pause: Pause) -> Paused:
    """`Paused` for a pause found after the fact (a caught error left the transaction aborted)."""
    what = (f"table {pause.target} is paused for automations" if pause.scope == "table" else
            "automation " + ('"*" (every automation)' if pause.target == "*" else f'"{pause.target}"') + " is paused")
    return Paused(f"sidecar: {what} since {pause.paused_at:%Y-%m-%d %H:%M:%S %Z} by {pause.paused_by}: {pause.reason}",
                  hint="Nothing of the step was written. An operator resumes with: sidecar resume",
                  details={"scope": pause.scope, "target": pause.target, "paused_by": pause.paused_by,
                           "paused_at": pause.paused_at.isoformat(), "reason": pause.reason})


def _key(key: dict) -> str:
    if isinstance(key, dict) and len(key) == 1:
        return f"#{next(iter(key.values()))}"
    return str(key)
