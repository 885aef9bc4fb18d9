"""The pause gate: pause and resume automations or tables (enforced by the capture triggers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from ..capture.tracking import regclass
from ..errors import UsageError


@dataclass
class Pause:
    scope: str
    target: str
    paused_at: datetime
    paused_by: str
    reason: str


def _sql_error(exc: psycopg.Error) -> UsageError:
    return UsageError((exc.diag.message_primary or str(exc)).removeprefix("sidecar: "))


def pause(conn: psycopg.Connection, *, automation: str | None = None, table: str | None = None, reason: str) -> str:
    """Pause one automation ('*' = every automation) or one tracked table. Returns what was done."""
    try:
        with conn.transaction():
            if table:
                name = regclass(conn, table)
                conn.execute("SELECT sidecar.pause_table(%s::regclass, %s)", (name, reason))
                return f"paused every automation's writes to {name}: {reason}"
            conn.execute("SELECT sidecar.pause(%s, %s)", (automation, reason))
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    who = "every automation" if automation == "*" else f"automation {automation}"
    return f"paused {who}: {reason}. Its runs cannot start and their next write fails."


def resume(conn: psycopg.Connection, *, automation: str | None = None, table: str | None = None) -> str:
    try:
        with conn.transaction():
            if table:
                name = regclass(conn, table)
                done = conn.execute("SELECT sidecar.resume_table(%s::regclass)", (name,)).fetchone()[0]
                what = f"table {name}"
            else:
                done = conn.execute("SELECT sidecar.resume(%s)", (automation,)).fetchone()[0]
                what = "every automation" if automation == "*" else f"automation {automation}"
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    if not done:
        raise UsageError(f"{what} is not paused; sidecar status shows what is")
    return f"resumed {what}"


def pauses(conn: psycopg.Connection) -> list[Pause]:
    rows = conn.execute(
        "SELECT p.scope, CASE WHEN p.scope = 'table' THEN sidecar._qualname(t.relid) ELSE p.target END, "
        "p.paused_at, p.paused_by, p.reason FROM sidecar.pauses p "
        "LEFT JOIN sidecar.tracked t ON p.scope = 'table' AND t.tracked_id::text = p.target "
        "ORDER BY p.paused_at"
    ).fetchall()
    return [Pause(*r) for r in rows]
