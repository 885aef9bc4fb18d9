"""Records named in what people read after the fact: the event trail and the notifications.

The database writes an event's summary when it happens, with the values as they are
(`Rejected held change 2: add refund #2 (ticket_id 42, ...)`). Shown to a person, a held
change there reads as the queue reads it, its foreign keys named with capture.labels
(`ticket "Northwind Systems: invoice NS-2291 charged twice" (#42)`), as far as the reader may
see the tables; the stored summary and detail stay as they are (the raw form, for --json).
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..capture import labels as labels_mod
from ..review import held
from ..text import describe


def held_changes(conn: psycopg.Connection, pending_ids: list[int]) -> dict[int, tuple[str, str]]:
    """pending_id -> (the held change as a sentence with its records named, its rule's reason).
    Empty when this reader may not read the queue: the ids then stay as they are."""
    ids = sorted({int(i) for i in pending_ids if isinstance(i, int) or str(i).isdigit()})
    if not ids:
        return {}
    try:
        with conn.transaction():
            items = held.by_ids(conn, ids)
            labels = labels_mod.lookup(conn, [(i.table, r) for i in items for r in (i.old_row, i.new_row)])
    except psycopg.Error:
        return {}
    return {i.pending_id: (describe.held_change(i, labels), i.reason) for i in items}


def event_summary(summary: str, detail: dict[str, Any] | None, named: dict[int, tuple[str, str]]) -> str:
    """An event's summary with each held change it names (`held change 2: add refund #2 (...;
    rule: R)`, as sidecar._pending_label wrote it) read as the queue reads it."""
    for pid in (detail or {}).get("pending_ids") or []:
        if pid not in named:
            continue
        sentence, reason = named[pid]
        head, tail = f"held change {pid}: ", f"rule: {reason})"
        start = summary.find(head)
        end = summary.find(tail, start) if start >= 0 else -1
        if end < 0:
            continue
        summary = summary[:start] + f"held change {pid}: {sentence} (rule: {reason})" + summary[end + len(tail):]
    return summary


def events(conn: psycopg.Connection, rows: list[tuple], summary_at: int, detail_at: int) -> list[tuple]:
    """Event rows with their summaries named (the summary at index summary_at, its detail at
    detail_at, which is dropped from the rows returned)."""
    ids = [i for r in rows for i in ((r[detail_at] or {}).get("pending_ids") or [])]
    named = held_changes(conn, ids)
    out = []
    for r in rows:
        r = list(r)
        r[summary_at] = event_summary(r[summary_at], r[detail_at], named)
        del r[detail_at]
        out.append(tuple(r))
    return out
