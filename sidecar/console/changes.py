"""A run's changes and actions one page at a time, for runs of millions of changes.

`sidecar.capture.history.changes` streams a run's changes in order, which suits the
CLI; a web page wants page 1,200 of them without reading the first 1,199. Here
the page is chosen in SQL (where the changed rows' images are, ordered by
statement), and only that page's images are read back, as `history.Change`
objects that `sidecar.describe` puts in plain language.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from ..capture.history import (
    Change,
    TableInfo,
    _clean,
    history_from,
    statement_of_image,
    tables_of_run,
)


@dataclass
class ActionRow:
    action_id: int
    key: str
    started_at: datetime
    rows: int = 0


def _pointed(info: TableInfo, in_scope: sql.Composable) -> sql.Composable:
    """The slots of an undo's statements that point at the images they reversed (fn_history.sql):
    those images, under the pointing statement's id."""
    return sql.SQL(
        """
        SELECT s.stmt_id, {tid}::int, l.tableoid, l.ctid
        FROM sidecar.statements s JOIN sidecar.{log} l ON l._stmt = s.images_of
        WHERE s.images_of IS NOT NULL AND s.stmt_id BETWEEN {lo} AND {hi} AND s.tracked_id = {tid} AND {in_scope}
          AND (l._kind = CASE WHEN s.images_swapped THEN 'O' ELSE 'N' END OR s.op = 'D')
        """
    ).format(tid=sql.Literal(info.tracked_id), log=sql.Identifier(info.log_table),
             lo=sql.Literal(info.stmt_range[0]), hi=sql.Literal(info.stmt_range[1]), in_scope=in_scope)


def _slots(info: TableInfo, run_id: uuid.UUID, action_id: int | None,
           stmts: tuple[list[int], list[int]] | None = None) -> sql.Composable:
    """One row per change of the table: where its after-image (or a delete's before-image) is; an
    undo's statement that points at the images it reversed has its slots there (_pointed).

    stmts: the ids of the table's statements in scope that are not deletes, and of its deletes,
    when there are not too many (STATEMENTS_LISTED). The images are then picked by their
    statement id from those lists (a hash lookup in the scan), not by looking each image's
    statement up in sidecar.statements: that lookup is an index descent per image, whose depth
    and cache misses grow with all history's statements (issue 25: half the run page's time on
    a big history)."""
    in_scope = sql.SQL("s.run_id = {run} AND ({action}::bigint IS NULL OR s.action_id = {action})").format(
        run=sql.SQL("{}::uuid").format(sql.Literal(str(run_id))), action=sql.Literal(action_id))
    where = sql.SQL("l._stmt BETWEEN {lo} AND {hi}").format(
        lo=sql.Literal(info.stmt_range[0]), hi=sql.Literal(info.stmt_range[1]))
    if stmts is not None:
        kept, deletes = stmts
        own = sql.SQL(
            """
            SELECT l._stmt, {tid}::int AS tracked_id, l.tableoid AS part, l.ctid
            FROM sidecar.{log} l
            WHERE {where} AND ((l._kind = 'N' AND l._stmt = ANY({kept}::bigint[]))
                               OR (l._kind = 'O' AND l._stmt = ANY({deletes}::bigint[])))
            """
        ).format(tid=sql.Literal(info.tracked_id), log=sql.Identifier(info.log_table), where=where,
                 kept=sql.Literal(kept), deletes=sql.Literal(deletes))
    else:
        own = sql.SQL(
            """
            SELECT l._stmt, {tid}::int AS tracked_id, l.tableoid AS part, l.ctid
            FROM sidecar.{log} l CROSS JOIN LATERAL ({statement}) s
            WHERE {where} AND (l._kind = 'N' OR s.op = 'D')
            """
        ).format(tid=sql.Literal(info.tracked_id), log=sql.Identifier(info.log_table), where=where,
                 statement=statement_of_image(sql.SQL("s.op"), in_scope))
    return sql.SQL("{} UNION ALL {}").format(own, _pointed(info, in_scope))


def _union(tables: list[TableInfo], run_id: uuid.UUID, action_id: int | None,
           stmts: dict[int, tuple[list[int], list[int]]] | None = None) -> sql.Composable:
    return sql.SQL(" UNION ALL ").join(
        _slots(t, run_id, action_id, None if stmts is None else stmts.get(t.tracked_id, ([], []))) for t in tables)


# Statement ids listed in a query at most (a run's first statements); past them, each image's
# statement is looked up instead.
STATEMENTS_LISTED = 50_000


def _statements(conn: psycopg.Connection, run_id: uuid.UUID, action_id: int | None,
                first: int | None) -> dict[int, tuple[list[int], list[int]]] | None:
    """By table, the ids of the run's (or action's) first `first` statements that are not deletes,
    and of its deletes; None when there are more than STATEMENTS_LISTED."""
    limit = STATEMENTS_LISTED + 1 if first is None else min(first, STATEMENTS_LISTED + 1)
    rows = conn.execute(
        "SELECT s.tracked_id, s.stmt_id, s.op = 'D' FROM sidecar.statements s "
        "WHERE s.run_id = %s AND (%s::bigint IS NULL OR s.action_id = %s) ORDER BY s.stmt_id LIMIT %s",
        (run_id, action_id, action_id, limit)).fetchall()
    if len(rows) > STATEMENTS_LISTED:
        return None
    out: dict[int, tuple[list[int], list[int]]] = {}
    for tracked_id, stmt_id, is_delete in rows:
        out.setdefault(tracked_id, ([], []))[1 if is_delete else 0].append(stmt_id)
    return out


# Changes and actions counted for a pager, at most: a run left running for
# days has millions, and counting them all took longer than anyone waits for a page.
COUNT_MAX = 10_000


def _prefixes(conn: psycopg.Connection, run_id: uuid.UUID, action_id: int | None,
              first: int) -> Iterator[tuple[list[TableInfo], bool, dict | None]]:
    """The tables of the run's (or action's) first `first` statements, then of four times as many,
    and so on; each with whether those are all its statements, and those statements (_statements)."""
    ids = [action_id] if action_id else None
    while True:
        tables = tables_of_run(conn, run_id, ids, first=first)
        whole = sum(t.statements for t in tables) < first
        yield tables, whole, _statements(conn, run_id, action_id, first)
        if whole:
            return
        first *= 4


def _capped(conn: psycopg.Connection, query: sql.Composable, params: tuple) -> tuple[int, bool]:
    """How many rows the query gives, counted up to COUNT_MAX; and whether there are more."""
    n = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT FROM ({}) q LIMIT %s) q").format(query),
                     (*params, COUNT_MAX + 1)).fetchone()[0]
    return min(n, COUNT_MAX), n > COUNT_MAX


def count(conn: psycopg.Connection, run_id: uuid.UUID, action_id: int | None = None) -> tuple[int, bool]:
    """How many changes page() pages through, counted up to COUNT_MAX; and whether there are more.
    Counted over the run's first statements, four times as many each time until that is enough."""
    for tables, whole, stmts in _prefixes(conn, run_id, action_id, 1024):
        n, more = _capped(conn, _union(tables, run_id, action_id, stmts), ()) if tables else (0, False)
        if more or whole:
            break
    return n, more


def page(conn: psycopg.Connection, run_id: uuid.UUID, *, action_id: int | None = None,
         offset: int = 0, limit: int = 50) -> list[Change]:
    """The changes offset .. offset+limit of the run (or of one action), in statement order.

    A row of a bulk UPDATE that wrote the values it already had is listed too
    (before == after): telling it apart for every row would cost a join over the
    whole run, so only the page's rows are compared, by whoever shows them.
    """
    # Changes are in statement order: the page is looked for among the run's
    # first statements, four times as many each time it is not found there,
    # so that a page near the start of a run of millions reads little.
    for tables, whole, stmts in _prefixes(conn, run_id, action_id, 64):
        if not tables:
            return []
        slots = conn.execute(
            # A change is where its image is: partition and ctid (a ctid alone names a row in each
            # partition of the history table).
            sql.SQL("SELECT _stmt, tracked_id, (part::oid::text || ':' || ctid::text) FROM ({}) q "
                    "ORDER BY _stmt, tracked_id, part, ctid OFFSET %s LIMIT %s").format(_union(tables, run_id, action_id, stmts)),
            (offset, limit),
        ).fetchall()
        if len(slots) == limit or whole:
            break
    if not slots:
        return []
    statements = {}
    pointing = {}  # an undo's statement -> (the statement whose images it reads, swapped)
    for stmt, op, key, at, images_of, swapped in conn.execute(
        "SELECT s.stmt_id, s.op, a.key, s.at, s.images_of, s.images_swapped FROM sidecar.statements s "
        "LEFT JOIN sidecar.actions a ON a.action_id = s.action_id WHERE s.stmt_id = ANY(%s)",
        (sorted({s for s, _, _ in slots}),),
    ):
        statements[stmt] = (op, key or "", at)
        if images_of is not None:
            pointing[stmt] = (images_of, swapped)
    by_id = {t.tracked_id: t for t in tables}
    images: dict[tuple[int, str], dict] = {}  # (tracked_id, "partition oid:ctid") -> image
    befores: dict[tuple[int, int, str], dict] = {}  # (tracked_id, stmt, key) -> before-image of an update
    for tracked_id in sorted({t for _, t, _ in slots}):
        info = by_id[tracked_id]
        places = [c for _, t, c in slots if t == tracked_id]
        parts = [int(p.split(":", 1)[0]) for p in places]
        tids = [p.split(":", 1)[1] for p in places]
        # An undo's statement that points at images finds them under the statement it points at.
        stmts = sorted({pointing.get(s, (s,))[0] for s, t, _ in slots if t == tracked_id})
        log = sql.Identifier(info.log_table)
        # The slots' statements keep the scan to their partitions; each row is then matched by its
        # partition and ctid.
        where = sql.SQL("{a}._stmt = ANY(%s) AND {a}.ctid = ANY(%s::text[]::tid[]) AND ({a}.tableoid, {a}.ctid) IN "
                        "(SELECT * FROM unnest(%s::oid[], %s::text[]::tid[]))")
        for place, image in conn.execute(
            sql.SQL("SELECT l.tableoid::text || ':' || l.ctid::text, row_to_json(l) FROM sidecar.{} l WHERE {}").format(
                log, where.format(a=sql.SQL("l"))),
            (stmts, tids, parts, tids),
        ):
            images[(tracked_id, place)] = _clean(image)
        updates = sorted({s for s, t, _ in slots if t == tracked_id and statements[s][0] == "U"})
        for stmt in [u for u in updates if u in pointing]:
            # Its before-image is the other image of the same row, under the statement it points at.
            images_of, swapped = pointing[stmt]
            for (image,) in conn.execute(
                sql.SQL(
                    "SELECT to_jsonb(o) FROM sidecar.{log} o WHERE o._stmt = %s AND o._kind = %s "
                    "AND ({o_pk}) IN (SELECT {n_pk} FROM sidecar.{log} n WHERE n._stmt = %s AND n.ctid = ANY(%s::text[]::tid[]))"
                ).format(log=log, o_pk=sql.SQL(", ").join(sql.SQL("o.") + sql.Identifier(c) for c in info.pk_columns),
                         n_pk=sql.SQL(", ").join(sql.SQL("n.") + sql.Identifier(c) for c in info.pk_columns)),
                (images_of, "N" if swapped else "O", images_of,
                 [c.split(":", 1)[1] for s, t, c in slots if t == tracked_id and s == stmt]),
            ):
                image = _clean(image)
                befores[(tracked_id, stmt, _canonical({c: image.get(c) for c in info.pk_columns}))] = image
        updates = [u for u in updates if u not in pointing]
        if not updates:
            continue
        for stmt, image in conn.execute(
            sql.SQL(
                "SELECT o._stmt, to_jsonb(o) FROM sidecar.{log} o "
                "WHERE o._kind = 'O' AND o._stmt = ANY(%s) AND o._stmt BETWEEN %s AND %s "
                "AND ({o_pk}) IN (SELECT {n_pk} FROM sidecar.{log} n WHERE {where})"
            ).format(log=log, o_pk=sql.SQL(", ").join(sql.SQL("o.") + sql.Identifier(c) for c in info.pk_columns),
                     n_pk=sql.SQL(", ").join(sql.SQL("n.") + sql.Identifier(c) for c in info.pk_columns),
                     where=where.format(a=sql.SQL("n"))),
            (updates, min(updates), max(updates), stmts, tids, parts, tids),
        ):
            image = _clean(image)
            befores[(tracked_id, stmt, _canonical({c: image.get(c) for c in info.pk_columns}))] = image
    out = []
    for stmt, tracked_id, tid in slots:
        info = by_id[tracked_id]
        image = images.get((tracked_id, tid))
        if image is None:
            continue  # purged meanwhile
        key = {c: image.get(c) for c in info.pk_columns}
        op, action, at = statements[stmt]
        before = after = None
        if op == "D":
            before = image
        else:
            after = image
            if op == "U":
                before = befores.get((tracked_id, stmt, _canonical(key)))
                if before is None:
                    op = "I"  # an update that moved the row to a new key
        out.append(Change(info.table, tracked_id, op, key, before, after, stmt, action, at,
                          info.label_column, info.display_name))
    return out


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def actions(conn: psycopg.Connection, run_id: uuid.UUID, *, offset: int = 0,
            limit: int = 50) -> tuple[list[ActionRow], int, bool]:
    """The run's actions that wrote rows, with rows written per action; how many there are, counted
    up to COUNT_MAX; and whether there are more."""
    wrote = "a.run_id = %s AND EXISTS (SELECT FROM sidecar.statements s WHERE s.action_id = a.action_id)"
    total, more = _capped(conn, sql.SQL("SELECT FROM sidecar.actions a WHERE " + wrote), (run_id,))
    found = conn.execute(
        "SELECT a.action_id, a.key, a.started_at FROM sidecar.actions a WHERE " + wrote
        + " ORDER BY a.action_id OFFSET %s LIMIT %s",
        (run_id, offset, limit),
    ).fetchall()
    if not found:
        return [], total, more
    rows = [ActionRow(a, k, at) for a, k, at in found]
    ids = [r.action_id for r in rows]
    by_id = {r.action_id: r for r in rows}
    # The range's images counted per statement first, then each statement looked up once (not
    # once per image: an index descent whose cost grows with all history's statements).
    for info in tables_of_run(conn, run_id, ids):
        for action_id, n in conn.execute(
            sql.SQL(
                "SELECT s.action_id, sum(CASE WHEN s.op = 'D' THEN g.o ELSE g.n END)::bigint "
                "FROM (SELECT l._stmt, count(*) FILTER (WHERE l._kind = 'N') AS n, "
                "count(*) FILTER (WHERE l._kind = 'O') AS o "
                "FROM {source} l WHERE l._stmt BETWEEN %s AND %s GROUP BY l._stmt) g "
                "JOIN sidecar.statements s ON s.stmt_id = g._stmt "
                "WHERE s.run_id = %s AND s.action_id = ANY(%s) GROUP BY 1"
            ).format(source=history_from(conn, info)),
            (*info.stmt_range, run_id, ids),
        ):
            by_id[action_id].rows += n
    return rows, total, more


def action_id_of(conn: psycopg.Connection, run_id: uuid.UUID, key: str) -> int | None:
    row = conn.execute("SELECT action_id FROM sidecar.actions WHERE run_id = %s AND key = %s", (run_id, key)).fetchone()
    return row[0] if row else None
