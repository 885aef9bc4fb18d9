"""Undo, unique keys other than the primary key.

A person may have given, since the run, a row's old value of a unique column
to another row (the bot changed a user's email, then someone gave the old
address to another user). Restoring the row would break the unique key and
fail the whole undo: it is a conflict instead ('clash'), even with --force.
Only unique indexes on plain columns, without a WHERE clause, are checked
ahead; a value the others forbid, or values that rows of the run traded among
themselves (two users' emails swapped), make the undo fail, whole, naming the
key (restore.py).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .restore_keys import until_stable
from .restore_plan import Planner, TablePlan, _q, _tmp, key_join


def unique_keys(conn: psycopg.Connection, plan: TablePlan) -> list[tuple[list[str], bool]]:
    """(key columns, whether NULLs count as equal) of the table's unique indexes on plain
    columns without a WHERE clause, other than its primary key."""
    return conn.execute(
        """
        SELECT array_agg(a.attname::text ORDER BY k.ord), i.nulls_equal
        FROM (SELECT i.indexrelid, i.indrelid, i.indkey, i.indnkeyatts,
                     -- NULLS NOT DISTINCT exists from PostgreSQL 15 on
                     coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) AS nulls_equal
              FROM pg_index i
              WHERE i.indrelid = %s::regclass AND i.indisunique AND NOT i.indisprimary AND i.indisvalid
                AND i.indexprs IS NULL AND i.indpred IS NULL) i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE k.ord <= i.indnkeyatts
        GROUP BY i.indexrelid, i.nulls_equal
        """,
        (plan.table,),
    ).fetchall()


def mark_clashes(planner: Planner) -> None:
    """Mark 'clash' the rows to put back or restore whose old values of a unique key are held
    now by a row that stays. A row that stays as it is because of this may hold the value
    another row needs, so this repeats."""
    checks = []
    for plan in planner.ordered():
        if not (plan.counts.get("insert") or plan.counts.get("update")):
            continue
        restored = {c.name for c in plan.columns}
        for columns, nulls_equal in unique_keys(planner.conn, plan):
            if not set(columns) <= restored:
                continue  # a key column the undo does not restore keeps its value, which is unique already
            same = sql.SQL(" AND ").join(
                sql.SQL("o.{c} IS NOT DISTINCT FROM f.{c}" if nulls_equal else "o.{c} = f.{c}").format(c=_q(c))
                for c in columns)
            checks.append(sql.SQL(
                """
                UPDATE {plan} p SET step = 'clash', forced = false FROM {first} f
                WHERE {pf} AND p.step IN ('insert', 'update')
                  AND EXISTS (SELECT FROM {t} o WHERE {same} AND NOT ({fo})
                              AND NOT EXISTS (SELECT FROM {plan} q WHERE {qo}
                                              AND q.step IN ('delete', 'insert', 'update')))
                """
            ).format(
                plan=_tmp("plan", plan), first=_tmp("first", plan), pf=key_join("p", "f", plan), t=plan.ident,
                same=same, fo=key_join("f", "o", plan), qo=key_join("q", "o", plan),
            ))
    if until_stable(planner.conn, checks):
        for plan in planner.tables:
            planner.count(plan)
