"""Undo, foreign keys among the tables it restores.

Parents are put back before their children and children removed before
their parents; a row that would refer to a row deleted since is not
restored (an orphan), and a row still referenced by a row that stays is not
removed (kept). Both are reported as conflicts instead of failing the undo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from .tables import TablePlan, key_join, quoted, split_name, temp_table

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


def foreign_keys(conn: psycopg.Connection, plan: TablePlan, *, pointing_at: bool) -> list[tuple[str, list[str], list[str]]]:
    """Foreign keys pointing at this table (pointing_at) or from it:
    (the other table, referencing columns, referenced columns)."""
    return conn.execute(
        """
        SELECT sidecar._qualname(CASE WHEN %(at)s THEN c.conrelid ELSE c.confrelid END),
               array_agg(ca.attname::text ORDER BY k.ord), array_agg(pa.attname::text ORDER BY k.ord)
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(ck, pk, ord)
        JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.ck
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk
        WHERE c.contype = 'f' AND c.conparentid = 0
          AND CASE WHEN %(at)s THEN c.confrelid ELSE c.conrelid END = %(t)s::regclass
        GROUP BY c.oid, c.conrelid, c.confrelid
        """,
        {"at": pointing_at, "t": plan.table},
    ).fetchall()


def refers(child: str, child_cols: list[str], parent_cols: list[str], parent: str = "cur") -> sql.Composable:
    """The condition that row `child` refers to row `parent` by one foreign key's columns."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(child), quoted(cc), sql.Identifier(parent), quoted(pc))
        for cc, pc in zip(child_cols, parent_cols))


def until_stable(conn: psycopg.Connection, updates: list[sql.Composable]) -> bool:
    """Run the updates again and again until none changes a row; True when any did."""
    changed = False
    while updates and sum(conn.execute(u).rowcount for u in updates):
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
    """
    order = planner.ordered()
    by_table = {p.table: p for p in order}
    checks = []
    for plan in order:
        if not (plan.counts.get("insert") or plan.counts.get("update")):
            continue
        for parent, child_cols, parent_cols in foreign_keys(planner.conn, plan, pointing_at=False):
            if any(c not in {col.name for col in plan.columns} for c in child_cols):
                continue  # a key column the undo does not restore: left as it is, so still valid
            refers = sql.SQL(" AND ").join(
                sql.SQL("par.{} = f.{}").format(quoted(pc), quoted(cc)) for cc, pc in zip(child_cols, parent_cols))
            put_back = sql.SQL("false")
            parent_plan = by_table.get(parent)
            if parent_plan is not None and parent_plan.counts.get("insert"):
                put_back = sql.SQL(
                    "EXISTS (SELECT FROM {pp} pp JOIN {pf} par ON {ppf} WHERE pp.step = 'insert' AND {refers})"
                ).format(pp=temp_table("plan", parent_plan), pf=temp_table("first", parent_plan),
                         ppf=key_join("pp", "par", parent_plan), refers=refers)
            checks.append(sql.SQL(
                "UPDATE {plan} p SET step = 'orphan', forced = false FROM {first} f "
                "WHERE {pf} AND p.step IN ('insert', 'update') AND {all_set} "
                "AND NOT EXISTS (SELECT FROM {parent} par WHERE {refers}) AND NOT {put_back}"
            ).format(
                plan=temp_table("plan", plan), first=temp_table("first", plan), pf=key_join("p", "f", plan),
                all_set=sql.SQL(" AND ").join(sql.SQL("f.{} IS NOT NULL").format(quoted(c)) for c in child_cols),
                parent=sql.Identifier(*split_name(parent)), refers=refers, put_back=put_back,
            ))
    if until_stable(planner.conn, checks):
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
    """
    by_table = {p.table: p for p in order}
    checks = []
    for plan in order:
        if not plan.counts.get("delete"):
            continue
        for child, child_cols, parent_cols in foreign_keys(planner.conn, plan, pointing_at=True):
            child_plan = by_table.get(child)
            # Predicted, a child row the plan puts back or restores refers by its first image
            # (when the undo restores its key columns; else by what it holds now).
            by_first = predicted and child_plan is not None and all(
                c in {col.name for col in child_plan.columns} for c in child_cols)
            changing = ("delete", "insert", "update") if by_first else ("delete",)
            staying = sql.SQL("true")
            if child_plan is not None:
                staying = sql.SQL("NOT EXISTS (SELECT FROM {cp} cp WHERE {on} AND cp.step = ANY({steps}))").format(
                    cp=temp_table("plan", child_plan), steps=sql.Literal(list(changing)),
                    on=sql.SQL(" AND ").join(
                        sql.SQL("cp.{c} = ch.{c}").format(c=quoted(c)) for c in child_plan.info.pk_columns),
                )
            referenced = sql.SQL("EXISTS (SELECT FROM {child} ch WHERE {on} AND {staying})").format(
                child=sql.Identifier(*split_name(child)), on=refers("ch", child_cols, parent_cols), staying=staying)
            if by_first:
                referenced = sql.SQL(
                    "({} OR EXISTS (SELECT FROM {cp} cp JOIN {cf} cf ON {cpf} "
                    "WHERE cp.step IN ('insert', 'update') AND {on}))"
                ).format(referenced, cp=temp_table("plan", child_plan), cf=temp_table("first", child_plan),
                         cpf=key_join("cp", "cf", child_plan), on=refers("cf", child_cols, parent_cols))
            checks.append(sql.SQL(
                "UPDATE {plan} p SET step = 'kept' FROM {t} cur WHERE {pcur} AND p.step = 'delete' AND {referenced}"
            ).format(plan=temp_table("plan", plan), t=plan.ident, pcur=key_join("p", "cur", plan), referenced=referenced))
    return until_stable(planner.conn, checks)
