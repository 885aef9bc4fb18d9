"""`sidecar undo --sql`: the restore as a reviewable SQL script, built with sqlglot.

Each statement names one row by its key, carries its values as typed literals
(CAST('<PostgreSQL's text form>' AS <column type>)) and, for UPDATE and
DELETE, only touches the row while it still holds what the run left, so a
DBA can run the script later with psql to the same effect as `sidecar undo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import psycopg
from psycopg import sql
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from .apply import conflict_key, user_triggers
from .plan import Planner
from .restore import TEXT_SETTINGS
from .tables import TablePlan, key_join, quoted, server_step, split_name, temp_table

STREAM_BATCH = 2000


class _Dialect(Postgres):
    """Postgres, plus INSERT ... OVERRIDING SYSTEM VALUE (not in sqlglot 30.30)."""

    class Generator(Postgres.Generator):
        def insert_sql(self, expression: exp.Insert) -> str:
            if expression.meta.get("overriding_system_value"):
                # Rendered in the slot sqlglot keeps right after the column list.
                expression = expression.copy()
                expression.set("stored", exp.Var(this="OVERRIDING SYSTEM VALUE"))
            return super().insert_sql(expression)


def _table(name: str) -> exp.Table:
    parts = split_name(name)
    if len(parts) == 2:
        return exp.table_(parts[1], db=parts[0], quoted=True)
    return exp.table_(parts[0], quoted=True)


def _literal(text: str | None, type_name: str) -> exp.Expression:
    if text is None:
        return exp.Null()
    return exp.Cast(this=exp.Literal.string(text), to=exp.DataType.build(type_name, dialect="postgres", udt=True))


def _render(e: exp.Expression) -> str:
    return e.sql(dialect=_Dialect, pretty=True) + ";\n"


def _guard(plan: TablePlan, left: dict[str, str | None]) -> exp.Expression:
    """The row still holds what the run left (compared as typed values, or as text where no equality exists)."""
    conds = []
    for c in plan.columns:
        col: exp.Expression = exp.column(c.name, quoted=True)
        value = _literal(left.get(c.name), c.type_name)
        if not c.comparable:
            col = exp.Cast(this=col, to=exp.DataType.build("text"))
            value = exp.Literal.string(left[c.name]) if left.get(c.name) is not None else exp.Null()
        conds.append(exp.NullSafeEQ(this=col, expression=value))
    return exp.and_(*conds) if conds else exp.true()


def _key(plan: TablePlan, image: dict[str, str | None]) -> exp.Expression:
    types = {c.name: c.type_name for c in plan.columns}
    return exp.and_(*[
        exp.EQ(this=exp.column(k, quoted=True), expression=_literal(image[k], types[k]))
        for k in plan.info.pk_columns
    ])


def _rows(conn: psycopg.Connection, plan: TablePlan, step: str,
          where: sql.Composable = sql.SQL("true")) -> Iterator[tuple[dict, dict | None, bool]]:
    """(first image, last image, forced) as PostgreSQL text forms, streamed with a server-side cursor."""
    names = [c.name for c in plan.columns]
    texts = lambda alias: sql.SQL(", ").join(sql.SQL("{}.{}::text").format(quoted(alias), quoted(n)) for n in names)  # noqa: E731
    query = sql.SQL(
        "SELECT {f}, l._kind = 'N', {l}, p.forced FROM {plan} p JOIN {first} f ON {pf} JOIN {last} l ON {pl} "
        "WHERE p.step = %s AND {where} ORDER BY {pk}"
    ).format(
        f=texts("f"), l=texts("l"), plan=temp_table("plan", plan), first=temp_table("first", plan), last=temp_table("last", plan),
        pf=sql.SQL(" AND ").join(sql.SQL("p.{c} = f.{c}").format(c=quoted(k)) for k in plan.info.pk_columns),
        pl=sql.SQL(" AND ").join(sql.SQL("p.{c} = l.{c}").format(c=quoted(k)) for k in plan.info.pk_columns),
        pk=sql.SQL(", ").join(sql.SQL("p.{}").format(quoted(k)) for k in plan.info.pk_columns), where=where,
    )
    n = len(names)
    with conn.cursor(name=f"sc_sql_{plan.suffix}_{step}") as cur:
        cur.itersize = STREAM_BATCH
        cur.execute(query, (step,))
        for row in cur:
            first = dict(zip(names, row[:n]))
            last = dict(zip(names, row[n + 1:-1])) if row[n] else None
            yield first, last, row[-1]


def _referenced(conn: psycopg.Connection, plan: TablePlan, run_id) -> sql.Composable:
    """The condition that a row of the plan (p) is referred to now, by any foreign key: the
    table's undo function lists those rows (it reads the tables that refer to it)."""
    server_step(conn, plan, "referenced", run_id)
    return sql.SQL("EXISTS (SELECT FROM {refd} r WHERE {pr})").format(
        refd=temp_table("refd", plan), pr=key_join("p", "r", plan))


def _deletes(conn: psycopg.Connection, plan: TablePlan, where: sql.Composable) -> Iterator[str]:
    """DELETEs of the plan's rows to delete that meet the condition."""
    for first, last, forced in _rows(conn, plan, "delete", where):
        where_row = _key(plan, first) if forced or last is None else exp.and_(_key(plan, last), _guard(plan, last))
        yield _render(exp.Delete(this=_table(plan.table), where=exp.Where(this=where_row)))


def script(conn: psycopg.Connection, planner: Planner) -> Iterator[str]:
    """The restore script, chunk by chunk (never the whole run in memory)."""
    order = planner.ordered()
    what = "run" if planner.scope.kind == "run" else f"{planner.scope.kind} of run"
    yield (f"-- sidecar undo of {what} {planner.scope.run_id}\n"
           f"-- generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; review, then run with psql\n"
           "-- UPDATE and DELETE only touch a row that still holds what the run left.\n")
    for p in order:
        for step in ("conflict",):
            if p.counts.get(step):
                yield f"-- {p.table}: {p.counts[step]} row(s) changed since the run are left out (conflicts)\n"
    for note in planner.notes:
        yield f"-- note: {note}\n"
    # Values are in the text forms of these settings (the planning session uses them too).
    yield "BEGIN;\n" + "".join(f"SET LOCAL {k} = '{v}';\n" for k, v in TEXT_SETTINGS.items())
    yield "SET CONSTRAINTS ALL DEFERRED;\n"
    triggers = user_triggers(conn, [p.table for p in order])
    for table, trigger in triggers:
        yield sql.SQL("ALTER TABLE {} DISABLE TRIGGER {};\n").format(sql.Identifier(*split_name(table)), quoted(trigger)).as_string(conn)

    # As sidecar undo does: first the rows the run added that no row refers to
    # now (one may hold a unique value a row put back or restored needs), then
    # the rest once the rows that referred to them are restored.
    referenced = {p.table: _referenced(conn, p, planner.scope.run_id) for p in order if p.counts.get("delete")}
    for p in reversed(order):
        if p.table in referenced:
            ref = referenced[p.table]
            yield from _deletes(conn, p, sql.SQL("NOT ") + ref)
    for p in order:
        cols = p.columns
        # Only a key that reappeared is skipped; any other unique key stops the script.
        key = [exp.to_identifier(c, quoted=True) for c in conflict_key(conn, p) or []]
        for first, _, _ in _rows(conn, p, "insert"):
            insert = exp.insert(
                exp.values([tuple(_literal(first[c.name], c.type_name) for c in cols)]),
                _table(p.table),
                columns=[exp.to_identifier(c.name, quoted=True) for c in cols],
            )
            insert.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING"), conflict_keys=key or None))
            insert.meta["overriding_system_value"] = True
            yield _render(insert)
    for p in order:
        settable = [c for c in p.columns if c.name not in p.info.pk_columns and not c.identity_always]
        if not settable:
            continue
        for first, last, forced in _rows(conn, p, "update"):
            update = exp.Update(
                this=_table(p.table),
                expressions=[exp.EQ(this=exp.column(c.name, quoted=True), expression=_literal(first[c.name], c.type_name))
                             for c in settable],
                where=exp.Where(this=_key(p, first) if forced else exp.and_(_key(p, first), _guard(p, last))),
            )
            yield _render(update)
    for p in reversed(order):
        if p.table in referenced:
            yield from _deletes(conn, p, referenced[p.table])

    for table, trigger in triggers:
        yield sql.SQL("ALTER TABLE {} ENABLE TRIGGER {};\n").format(sql.Identifier(*split_name(table)), quoted(trigger)).as_string(conn)
    yield "COMMIT;\n"
