"""Undo, unique keys other than the primary key.

A person may have given, since the run, a row's old value of a unique column
to another row (the bot changed a user's email, then someone gave the old
address to another user). Restoring the row would break the unique key and
fail the whole undo: it is a conflict instead ('clash'), even with --force.
Unique indexes on expressions (lower(email)) and partial ones are checked too,
by their expressions as PostgreSQL prints them. Values that rows of the run
traded among themselves (two users' emails swapped) make the undo fail,
whole, naming the key (restore.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from .keys import until_stable
from .tables import TablePlan, key_join, quoted, temp_table

if TYPE_CHECKING:  # the planner calls in here; no import back at run time
    from .plan import Planner


def unique_keys(conn: psycopg.Connection, plan: TablePlan) -> list[tuple[list[str], list[str | None], str | None, bool]]:
    """The table's unique indexes other than its primary key: (each key as SQL, a quoted column
    or an expression as PostgreSQL prints it; each key's column name, None for an expression;
    the WHERE clause of a partial index; whether NULLs count as equal)."""
    return conn.execute(
        """
        SELECT array_agg(coalesce(quote_ident(a.attname), pg_get_indexdef(i.indexrelid, k.ord::int, true))
                         ORDER BY k.ord),
               array_agg(a.attname::text ORDER BY k.ord), pg_get_expr(i.indpred, i.indrelid, true), i.nulls_equal
        FROM (SELECT i.indexrelid, i.indrelid, i.indkey, i.indnkeyatts, i.indpred,
                     -- NULLS NOT DISTINCT exists from PostgreSQL 15 on
                     coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) AS nulls_equal
              FROM pg_index i
              WHERE i.indrelid = %s::regclass AND i.indisunique AND NOT i.indisprimary AND i.indisvalid) i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum <> 0
        WHERE k.ord <= i.indnkeyatts
        GROUP BY i.indexrelid, i.indrelid, i.indpred, i.nulls_equal
        ORDER BY i.indexrelid
        """,
        (plan.table,),
    ).fetchall()


def _clash_check(plan: TablePlan, keys: list[str], columns: list[str | None], predicate: str | None,
                 nulls_equal: bool) -> sql.Composable:
    """The UPDATE that marks the plan's rows whose first image clashes with a row that stays."""
    if None not in columns and predicate is None:
        # Plain columns: compared by name (the first image has the table's column names).
        same = sql.SQL(" AND ").join(
            sql.SQL("o.{c} IS NOT DISTINCT FROM f.{c}" if nulls_equal else "o.{c} = f.{c}").format(c=quoted(c))
            for c in columns)
        return sql.SQL(
            "UPDATE {plan} p SET step = 'clash', forced = false FROM {first} f "
            "WHERE {pf} AND p.step IN ('insert', 'update') "
            "AND EXISTS (SELECT FROM {t} o WHERE {same} AND NOT ({fo}) "
            "AND NOT EXISTS (SELECT FROM {plan} q WHERE {qo} AND q.step IN ('delete', 'insert', 'update')))"
        ).format(plan=temp_table("plan", plan), first=temp_table("first", plan), pf=key_join("p", "f", plan), t=plan.ident,
                 same=same, fo=key_join("f", "o", plan), qo=key_join("q", "o", plan))
    # Expressions (lower(email)) and partial indexes: evaluated as PostgreSQL prints them,
    # once over the first image's columns, once over the table's (unqualified names there
    # are the table's own, so the index itself can answer).
    exprs = [sql.SQL(k) for k in keys]
    pred = sql.SQL(predicate) if predicate else sql.SQL("true")
    fk = sql.SQL(", ").join(sql.SQL("{} AS {}").format(e, sql.Identifier(f"_sc_k{i}")) for i, e in enumerate(exprs))
    same = sql.SQL(" AND ").join(
        (sql.SQL("({e}) IS NOT DISTINCT FROM fk.{k}") if nulls_equal else sql.SQL("({e}) = fk.{k}")).format(
            e=e, k=sql.Identifier(f"_sc_k{i}"))
        for i, e in enumerate(exprs))
    table_row = sql.SQL(" AND ").join(
        sql.SQL("{t}.{c} = f.{c}").format(t=plan.ident, c=quoted(c)) for c in plan.info.pk_columns)
    q_row = sql.SQL(" AND ").join(
        sql.SQL("q.{c} = {t}.{c}").format(t=plan.ident, c=quoted(c)) for c in plan.info.pk_columns)
    return sql.SQL(
        "UPDATE {plan} p SET step = 'clash', forced = false FROM {first} f "
        "CROSS JOIN LATERAL (SELECT {fk}, ({pred}) AS _sc_in FROM (SELECT f.*) AS _sc_row) fk "
        "WHERE {pf} AND p.step IN ('insert', 'update') AND fk._sc_in "
        "AND EXISTS (SELECT FROM {t} WHERE {same} AND ({pred}) AND NOT ({table_row}) "
        "AND NOT EXISTS (SELECT FROM {plan} q WHERE {q_row} AND q.step IN ('delete', 'insert', 'update')))"
    ).format(plan=temp_table("plan", plan), first=temp_table("first", plan), fk=fk, pred=pred, pf=key_join("p", "f", plan),
             t=plan.ident, same=same, table_row=table_row, q_row=q_row)


def mark_clashes(planner: Planner) -> None:
    """Mark 'clash' the rows to put back or restore whose old values of a unique key are held
    now by a row that stays. A row that stays as it is because of this may hold the value
    another row needs, so this repeats."""
    checks = []
    for plan in planner.ordered():
        if not (plan.counts.get("insert") or plan.counts.get("update")):
            continue
        restored = {c.name for c in plan.columns}
        for keys, columns, predicate, nulls_equal in unique_keys(planner.conn, plan):
            # A key on a column the undo does not restore (added since, say) cannot be checked
            # against the first image: its value stays, and was unique already. Expressions
            # name their columns only in their text, so PostgreSQL is asked.
            check = _clash_check(plan, keys, columns, predicate, nulls_equal)
            if None in columns or predicate is not None:
                try:
                    with planner.conn.transaction():
                        planner.conn.execute(sql.SQL("EXPLAIN ") + check)
                except psycopg.errors.UndefinedColumn:
                    continue
            elif not set(columns) <= restored:
                continue
            checks.append(check)
    if until_stable(planner.conn, checks):
        for plan in planner.tables:
            planner.count(plan)
