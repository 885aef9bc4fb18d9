"""The review queue as the console shows it: held writes (sidecar.review.held), a page at a time."""

from __future__ import annotations

import uuid

import psycopg

from ..capture import labels as labels_mod
from ..errors import SidecarError
from ..review import held
from ..text import describe

OPEN = ("pending", "conflict")


def items(conn: psycopg.Connection, *, open_only: bool = True, offset: int = 0,
          limit: int = 50) -> tuple[list[held.HeldChange], int]:
    """A page of held changes (oldest first, as `sidecar queue` lists them) and how many there are."""
    where = " WHERE NOT %(open)s OR p.status = ANY(%(states)s)"
    params = {"open": open_only, "states": list(OPEN)}
    total = conn.execute("SELECT count(*) FROM sidecar.pending p" + where, params).fetchone()[0]
    rows = conn.execute(held._SELECT + where + " ORDER BY p.pending_id OFFSET %(o)s LIMIT %(n)s",
                        {**params, "o": offset, "n": limit}).fetchall()
    return held._with_context(conn, [held._to_item(r) for r in rows]), total


def open_count_of_run(conn: psycopg.Connection, run_id: uuid.UUID) -> int:
    return conn.execute("SELECT count(*) FROM sidecar.pending WHERE run_id = %s AND status = ANY(%s)",
                        (run_id, list(OPEN))).fetchone()[0]


def open_counts(conn: psycopg.Connection, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Held writes waiting for a decision, per run (one query for a page of runs)."""
    return dict(conn.execute("SELECT run_id, count(*) FROM sidecar.pending WHERE run_id = ANY(%s) "
                             "AND status = ANY(%s) GROUP BY run_id", (run_ids, list(OPEN))).fetchall())


def still_refused(conn: psycopg.Connection, items: list[held.HeldChange], limit: int = 20) -> dict[int, str]:
    """pending_id -> why approving it now would be refused, for the held changes an approval
    already found changed ('conflict'): found by approving each in a transaction that is rolled
    back (nothing is written, logged or notified), so the answer is the approval's own. A
    change whose row is back as it was is left out: its Approve button can succeed."""
    found: dict[int, str] = {}
    for item in [i for i in items if i.status == "conflict"][:limit]:
        try:
            with conn.transaction(force_rollback=True):
                decision = held.approve(conn, item.pending_id)
        except SidecarError:
            continue  # a pause: the queue says so and offers to resume (blocked_by)
        if decision.refused:
            found[item.pending_id] = "; ".join(c.text for c in decision.conflicts)
    return found


def approve(conn: psycopg.Connection, pending_id: int) -> tuple[str, str]:
    """(kind, message) for the flash: approved, or refused because the row changed since."""
    decision = held.approve(conn, pending_id)
    if decision.refused:
        return "error", ("Not approved, nothing was applied: " + "; ".join(c.text for c in decision.conflicts)
                         + ". It stays in the queue: reject it, or approve it once the row is back as it was.")
    return "ok", "Approved: " + "; ".join(_named(conn, decision.items)) + "."


def reject(conn: psycopg.Connection, pending_id: int, why: str) -> tuple[str, str]:
    decision = held.reject(conn, pending_id, why=why)
    return "ok", "Rejected: " + "; ".join(_named(conn, decision.items)) + f" ({why})."


def _named(conn: psycopg.Connection, items: list[held.HeldChange]) -> list[str]:
    """The decided changes as sentences, their records named."""
    labels = labels_mod.lookup(conn, [(i.table, r) for i in items for r in (i.old_row, i.new_row)])
    return [describe.held_change(i, labels) for i in items]
