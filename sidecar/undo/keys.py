"""Undo, foreign keys among the tables it restores.

Parents are put back before their children and children removed before
their parents; a row that would refer to a row deleted since is not
restored (an orphan), and a row still referenced by a row that stays is not
removed (kept). Both are reported as conflicts instead of failing the undo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from .tables import TablePlan, server_step

if TYPE_CHECKING:  # the planner calls in here; no import back at run time
    from .plan import Planner


def table_order(conn: psycopg.Connection, tables: list[TablePlan]) -> list[TablePlan]:
    """Parents before children (foreign keys among the given tables)."""
    names = {p.table: p for p in tables}
    edges = conn.execute(
        """
        SELECT DISTINCT sidecar._qualname(conrelid), sidecar._qualname(confrelid) FROM pg_constraint
        WHERE contype = 'f' AND sidecar._qualname(conrelid) = ANY(%s) AND sidecar._qualname(confrelid) = ANY(%s)
          AND conrelid <> confrelid AND conparentid = 0
        """,
        (list(names), list(names)),
    ).fetchall()
    parents: dict[str, set[str]] = {t: set() for t in names}
    for child, parent in edges:
        parents[child].add(parent)
    order, seen = [], set()

    def visit(t: str, path: set[str]) -> None:
        if t in seen or t in path:
            return  # a cycle: deferrable constraints are deferred, the rest is tried as is
        path.add(t)
        for p in sorted(parents[t]):
            visit(p, path)
        seen.add(t)
        order.append(names[t])

    for t in sorted(names):
        visit(t, set())
    return order


def until_stable(planner: Planner, checks: list[tuple[TablePlan, str, dict]]) -> bool:
    """Run the checks (a step of a table's undo function that marks rows) again and again
    until none marks a row; True when any did."""
    changed = False
    while checks and sum(server_step(planner.conn, plan, op, planner.scope.run_id, args) for plan, op, args in checks):
        changed = True
    return changed


def mark_orphans(planner: Planner) -> None:
    """Mark 'orphan' the rows to put back or restore whose old values refer to a row that is gone.

    A person may have deleted, since the run, the row a restored row would
    refer to (the run moved a ticket to another customer, then someone
    deleted the old customer). Restoring it would break the foreign key and
    fail the whole undo: it is a conflict instead, even with --force.
    A parent counts as there when it exists now or this undo puts it back;
    an orphan put back no more orphans its own children, so this repeats.
    A key column the undo does not restore is left as it is, so still valid.
    (The check reads the parent table: fn_undo.sql, sidecar._undo_orphan.)
    """
    order = planner.ordered()
    tables = [int(p.suffix) for p in order]
    checks = [(plan, "orphan", {"tables": tables}) for plan in order if plan.counts.get("insert") or plan.counts.get("update")]
    if until_stable(planner, checks):
        for plan in order:
            planner.count(plan)


def keep_referenced(planner: Planner, order: list[TablePlan], *, predicted: bool = False) -> bool:
    """Mark 'kept' the rows to delete that a row which stays still references; True when any.

    A row still referenced (by a row a person added since, say) is not
    deleted: it is reported as a conflict instead of failing the whole undo
    (or, where the key cascades, deleting that person's row with it). Rows
    that are themselves being deleted do not count as references, so a
    self-referencing table (a new manager and the hire under them) or a
    cycle of deferrable keys is deleted whole. Keeping one row can keep the
    rows it references, so this repeats until nothing changes.

    An undo runs this once its rows are put back and restored, so the tables
    hold what references remain. A plan that is only looked at (a preview,
    `--sql`) runs it with predicted: a row the plan puts back or restores
    then refers by the values it will get, not by those it has now.
    (The check reads the child tables: fn_undo.sql, sidecar._undo_kept.)
    """
    tables = [int(p.suffix) for p in planner.tables]
    checks = [(plan, "kept", {"predicted": predicted, "tables": tables}) for plan in order if plan.counts.get("delete")]
    return until_stable(planner, checks)
