"""The review queue: writes held by hold rules, and the operator's decisions on them.

Held rows live in sidecar.pending. Approving applies them in one transaction
under the automation's original run and action (so ``sidecar undo`` of that run
reverses them too), and is refused, applying nothing, when a row changed since
it was held. Rejecting drops them with a reason. Both are done by SQL functions
(sql/fn_review.sql), which log the decision and NOTIFY channel 'sidecar'.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from ..capture import context as context_mod
from ..errors import SidecarError, UsageError
from ..steps import runs as runs_mod
from ..text import describe

_VERBS = {"I": "insert", "U": "update", "D": "delete"}


def _loads(text: str | None) -> Any:
    # Decimal keeps numeric values as PostgreSQL wrote them (900.00, not 900.0).
    return None if text is None else json.loads(text, parse_float=Decimal)


def _value(v: Any) -> str:
    return str(v) if isinstance(v, Decimal) else describe.value(v)


def _column(name: str) -> str:
    """A column as people say it: refund_amount -> refund amount."""
    return name.replace("_", " ")


@dataclass
class HeldChange:
    """One row an automation wanted to write, held by a rule."""

    pending_id: int
    run_id: uuid.UUID
    automation: str
    action: str
    table: str
    op: str
    key: dict[str, Any]
    old_row: dict[str, Any] | None
    new_row: dict[str, Any] | None
    rule_id: int
    reason: str
    held_at: datetime
    status: str
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_why: str | None = None
    label_column: str | None = None
    display_name: str | None = None
    # What the automation said about the action that proposed it (why, read, confidence).
    context: context_mod.Context | None = None
    action_id: int | None = None

    @property
    def changed_columns(self) -> list[str]:
        return describe.changed_columns(self.old_row, self.new_row)

    @property
    def label(self) -> str:
        return describe.row_label(self.table, self.key, self.new_row or self.old_row,
                                  self.label_column, self.display_name)

    @property
    def change(self) -> str:
        """`Set refund amount of invoices #17 from 0 to 900` (describe.held_change; with a page's
        labels it names the records)."""
        return describe.held_change(self)

    @property
    def text(self) -> str:
        """The queue line: `Set refund amount of invoices #17 from 0 to 900 (rule: refund over limit)`."""
        line = f"{self.change} (rule: {self.reason})"
        if self.status == "conflict":
            line += " [an approval was refused: the row changed since it was held]"
        return line


@dataclass
class Conflict:
    item: HeldChange
    kind: str  # changed | gone | exists | taken
    now: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None  # taken: PostgreSQL's words, e.g. Key (email)=(a@b.c) already exists.

    @property
    def text(self) -> str:
        label = self.item.label
        if self.kind == "gone":
            return f"{label} is gone since the change was held"
        if self.kind == "exists":
            return f"{label} exists now: it was added since the insert was held"
        if self.kind == "taken":
            return (f"{label} cannot take its new values: another row holds one of a unique key now"
                    + (f" ({self.detail.rstrip('.')})" if self.detail else ""))
        was = self.item.old_row or {}
        diffs = [f"{_column(c)} {_value(was.get(c))} is now {_value(v)}" for c, v in self.now.items()]
        return f"{label} changed since it was held ({', '.join(diffs) or 'changed'})"


@dataclass
class Decision:
    """What approve or reject did: applied or rejected items, or the conflicts that refused an approval."""

    decision: str  # approved | rejected | refused
    items: list[HeldChange]
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.decision == "refused"


_SELECT = """
SELECT p.pending_id, p.run_id, r.automation, a.key, sidecar._qualname(t.relid), p.op::text,
       p.key::text, p.old_row::text, p.new_row::text, p.rule_id, p.reason, p.held_at, p.status,
       p.decided_by, p.decided_at, p.decided_why, t.label_column, t.display_name, t.pk_columns::text[],
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped) AS column_order,
       p.action_id
FROM sidecar.pending p
JOIN sidecar.runs r ON r.run_id = p.run_id
JOIN sidecar.actions a ON a.action_id = p.action_id
JOIN sidecar.tracked t ON t.tracked_id = p.tracked_id
"""


def _to_item(row: tuple) -> HeldChange:
    (pending_id, run_id, automation, action, table, op, key, old_row, new_row, rule_id, reason, held_at, status,
     decided_by, decided_at, decided_why, label_column, display_name, pk_columns, column_order, action_id) = row
    return HeldChange(pending_id, run_id, automation, action, table, op, _ordered(_loads(key), pk_columns),
                      _ordered(_loads(old_row), column_order), _ordered(_loads(new_row), column_order),
                      rule_id, reason, held_at, status, decided_by, decided_at, decided_why,
                      label_column, display_name, action_id=action_id)


def _with_context(conn: psycopg.Connection, items: list[HeldChange]) -> list[HeldChange]:
    """Each item with the context of the action that proposed it."""
    found = context_mod.of_action_ids(conn, [i.action_id for i in items if i.action_id is not None])
    for item in items:
        item.context = found.get(item.action_id)
    return items


def _ordered(image: dict[str, Any] | None, columns: list[str] | None) -> dict[str, Any] | None:
    """An image in the table's column order (jsonb sorts keys its own way); unknown keys last."""
    if image is None:
        return None
    ordered = {c: image[c] for c in columns or [] if c in image}
    ordered.update((k, v) for k, v in image.items() if k not in ordered)
    return ordered


def queue(conn: psycopg.Connection, *, include_decided: bool = False, limit: int | None = None) -> list[HeldChange]:
    """Held changes waiting for a decision (status pending or conflict), oldest first."""
    rows = conn.execute(
        _SELECT + " WHERE p.status IN ('pending', 'conflict') OR %s ORDER BY p.pending_id LIMIT %s",
        (include_decided, limit),
    ).fetchall()
    return _with_context(conn, [_to_item(r) for r in rows])


def of_run(conn: psycopg.Connection, run_id: uuid.UUID) -> list[HeldChange]:
    """Every write of one run a rule held, decided or not, oldest first."""
    rows = conn.execute(_SELECT + " WHERE p.run_id = %s ORDER BY p.pending_id", (run_id,)).fetchall()
    return [_to_item(r) for r in rows]


def get(conn: psycopg.Connection, pending_id: int) -> HeldChange:
    row = conn.execute(_SELECT + " WHERE p.pending_id = %s", (pending_id,)).fetchone()
    if row is None:
        raise UsageError(f"there is no held change {pending_id}", shell="sidecar queue lists them")
    return _with_context(conn, [_to_item(row)])[0]


def by_ids(conn: psycopg.Connection, ids: list[int]) -> list[HeldChange]:
    """The held changes with these ids, in id order (ids not in the queue left out)."""
    rows = conn.execute(_SELECT + " WHERE p.pending_id = ANY(%s) ORDER BY p.pending_id", (ids,)).fetchall()
    return [_to_item(r) for r in rows]


def _decide(conn: psycopg.Connection, verb: str, pending_id: int | None, run: str | None,
            action: str | None, why: str | None) -> Any:
    """Call sidecar.<verb> for one item, or sidecar.<verb>_action for every open item of one action
    of a run, in its own transaction; returns its JSON result. An unknown or decided item is refused
    by the SQL function (SC021)."""
    if (pending_id is None) == (action is None):
        raise UsageError("name one held change (ID) or one action (--action KEY --run RUN_ID)")
    if action is not None:
        if not run:
            raise UsageError("--action needs --run RUN_ID: action keys repeat across runs")
        call, args = f"sidecar.{verb}_action(%s, %s, %s)", (runs_mod.resolve(conn, run), action, why)
    elif run:
        raise UsageError("--run goes with --action; to decide on one held change, give its ID only")
    else:
        call, args = f"sidecar.{verb}(%s, %s)", (pending_id, why)
    try:
        with conn.transaction():
            text = conn.execute(f"SELECT {call}::text", args).fetchone()[0]
    except psycopg.Error as exc:
        raise _sql_error(exc, verb) from None
    return _loads(text)


def _sql_error(exc: psycopg.Error, verb: str) -> SidecarError:
    diag = exc.diag
    message = " ".join((diag.message_primary or str(exc)).removeprefix("sidecar: ").split())
    hint = f"; {diag.message_hint.rstrip('.')}" if diag.message_hint else ""
    if diag.sqlstate == "SC001":
        return SidecarError(
            f"cannot {verb}: {message}. Approving writes the change as that automation's run: resume it first, "
            "or reject the change; nothing was changed")
    if (diag.sqlstate or "").startswith("SC"):
        return UsageError(f"{message}{hint}")
    return SidecarError(f"{verb} failed: {message}{hint}; nothing was changed")


def approve(conn: psycopg.Connection, pending_id: int | None = None, *, run: str | None = None,
            action: str | None = None, why: str | None = None) -> Decision:
    """Apply one held change, or every open one of an action, together in one transaction.

    Refused (Decision.refused, nothing applied) when a row changed since it was
    held: those items are marked conflict and stay in the queue.
    """
    result = _decide(conn, "approve", pending_id, run, action, why)
    if result["conflicts"]:
        ids = [c["pending_id"] for c in result["conflicts"]]
        items = {i.pending_id: i for i in by_ids(conn, ids)}
        conflicts = [Conflict(items[c["pending_id"]], c["kind"], c.get("now") or {}, c.get("detail"))
                     for c in result["conflicts"]]
        return Decision("refused", list(items.values()), conflicts)
    return Decision("approved", by_ids(conn, result["applied"]))


def reject(conn: psycopg.Connection, pending_id: int | None = None, *, run: str | None = None,
           action: str | None = None, why: str) -> Decision:
    """Drop one held change, or every open one of an action; the reason goes to the event trail."""
    if not why or not why.strip():
        raise UsageError("a rejection needs --reason, so that the automation's owner knows why")
    result = _decide(conn, "reject", pending_id, run, action, why)
    return Decision("rejected", by_ids(conn, result["rejected"]))
