"""Reading captured history: the changes of a run, action by action, row by row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

import psycopg
from psycopg import sql

from ..text import describe
from . import settle


@dataclass
class Change:
    """One row changed by one statement: op I (inserted), U (updated) or D (deleted)."""

    table: str
    tracked_id: int
    op: str
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    stmt_id: int
    action: str
    at: datetime
    label_column: str | None = None
    display_name: str | None = None

    @property
    def changed_columns(self) -> list[str]:
        return describe.changed_columns(self.before, self.after)


@dataclass
class TableInfo:
    tracked_id: int
    table: str
    log_table: str
    pk_columns: list[str]
    label_column: str | None
    display_name: str | None
    stmt_range: tuple[int, int] = (0, 0)
    statements: int = 0  # of the table, in scope


# The statements s of a run (%s), or of some of its actions (%s, %s: an
# array of action ids, or NULL for all).
_IN_SCOPE = "s.run_id = %s AND (%s::bigint[] IS NULL OR s.action_id = ANY(%s::bigint[]))"


def tables_of_run(conn: psycopg.Connection, run_id: uuid.UUID, action_ids: list[int] | None = None,
                  first: int | None = None) -> list[TableInfo]:
    """The tables the run (or some of its actions) wrote, each with the range of its statements;
    with first, of the first statements only (a run left running for days has millions)."""
    settle.keep_settled(conn)
    statements = "sidecar.statements s WHERE " + _IN_SCOPE
    if first is not None:
        statements = "(SELECT s.* FROM " + statements + " ORDER BY s.stmt_id LIMIT %s) s"
    # Statements grouped first: the table's name is worked out once per table, not per statement.
    rows = conn.execute(
        """
        SELECT t.tracked_id, sidecar._qualname(t.relid), t.log_table, t.pk_columns::text[], t.label_column, t.display_name,
               s.lo, s.hi, s.n
        FROM (SELECT s.tracked_id, min(s.stmt_id) AS lo, max(s.stmt_id) AS hi, count(*) AS n FROM """ + statements + """
              GROUP BY s.tracked_id) s
        JOIN sidecar.tracked t USING (tracked_id)
        ORDER BY 2
        """,
        (run_id, action_ids, action_ids) + (() if first is None else (first,)),
    ).fetchall()
    return [TableInfo(*r[:6], stmt_range=(r[6], r[7]), statements=r[8]) for r in rows]


def statement_of_image(columns: sql.Composable, where: sql.Composable, *, join_actions: bool = False,
                       image: str = "l") -> sql.Composable:
    """A LATERAL subquery: the statement that wrote history row ``image``, when it matches ``where``.

    Readers of a run's history scan the history table's statement range and
    look each image's statement up by its key. Left to choose, the planner
    joins the other way round for a run newer than the tables' statistics,
    where it expects one statement and one image: it scans the whole range
    again for every statement of the run (minutes for a few thousand
    transactions). OFFSET 0 keeps the subquery whole, so the lookup stays
    inside the scan.
    """
    actions = sql.SQL(" LEFT JOIN sidecar.actions a ON a.action_id = s.action_id") if join_actions else sql.SQL("")
    return sql.SQL("SELECT {columns} FROM sidecar.statements s{actions} WHERE s.stmt_id = {image}._stmt AND {where} "
                   "OFFSET 0").format(columns=columns, actions=actions, where=where, image=sql.Identifier(image))


def history_from(conn: psycopg.Connection, info: TableInfo, lo: int | None = None,
                 hi: int | None = None) -> sql.Composable:
    """The FROM item (alias it) to read the table's history rows of statements lo..hi (default: its
    statement range) from: the history table, or, where an undo's statements point at the images
    of what they reversed, those images too, as the undo's (fn_history.sql: sidecar._history_from)."""
    return history_source(conn, info, lo, hi)[0]


def history_source(conn: psycopg.Connection, info: TableInfo, lo: int | None = None,
                   hi: int | None = None) -> tuple[sql.Composable, bool]:
    """history_from(), and whether it holds images pointed at (rows without a ctid of their own)."""
    if lo is None or hi is None:
        lo, hi = info.stmt_range
    text = conn.execute("SELECT sidecar._history_from(%s, %s, %s)", (info.tracked_id, lo, hi)).fetchone()[0]
    # Built by format('%I') in the database; % doubled for the query's own parameters.
    return sql.SQL(text.replace("%", "%%")), text.startswith("(")


def _clean(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """A history row as {column: value}: bookkeeping dropped, retired columns under their old name."""
    if image is None:
        return None
    out = {k: v for k, v in image.items() if k not in ("_stmt", "_kind", "_head") and "~" not in k}
    for k, v in image.items():
        # A retired column (dropped or retyped since) holds what was captured
        # before the change; the current column is empty for those statements.
        if "~" in k and v is not None:
            name = k.split("~", 1)[0]
            if out.get(name) is None:
                out[name] = v
    return out


def changes(
    conn: psycopg.Connection, run_id: uuid.UUID, *, action_ids: list[int] | None = None, limit: int | None = None,
    stmt_id: int | None = None, per_action: int | None = None, tables: list[TableInfo] | None = None,
) -> Iterator[Change]:
    """The run's changes (of one statement with stmt_id) in statement order; a no-op row of a bulk
    UPDATE is left out. Streamed from a server-side cursor: a run of millions of rows is read a
    batch at a time, and a caller that stops early (or limit) reads no further. With per_action,
    only the first rows of each action and table are read (the database picks them; a no-op row
    among them makes one change fewer). tables: what tables_of_run() gives for the same run and
    actions, when the caller has it already."""
    if tables is None:
        settle.keep_settled(conn)
    return islice(_changes(conn, run_id, action_ids, stmt_id, per_action, tables), limit)


def _changes(conn: psycopg.Connection, run_id: uuid.UUID, action_ids: list[int] | None, stmt_id: int | None,
             per_action: int | None, tables: list[TableInfo] | None) -> Iterator[Change]:
    for info in tables_of_run(conn, run_id, action_ids) if tables is None else tables:
        lo, hi = info.stmt_range
        if stmt_id is not None:
            if not lo <= stmt_id <= hi:
                continue
            lo = hi = stmt_id
        pk = sql.SQL(", ").join(sql.SQL("l.") + sql.Identifier(c) for c in info.pk_columns)
        statement = statement_of_image(sql.SQL("s.op, a.key, s.at, s.action_id"), sql.SQL(_IN_SCOPE),
                                       join_actions=True)
        source, pointed = history_source(conn, info, lo, hi)
        rows = sql.SQL("{source} l").format(source=source)
        # Read whole where images are pointed at: the cut below goes by ctid, the history table's.
        cut = None if pointed else per_action
        if cut is not None:
            # A row's images (before and after) rank together, so none is cut in two.
            rows = sql.SQL(
                # A row is found again by its partition and ctid (history is partitioned:
                # a ctid alone names a row in each partition).
                "(SELECT l.* FROM (SELECT l.tableoid AS _sc_part, l.ctid AS _sc_tid, dense_rank() OVER ("
                "PARTITION BY s.action_id ORDER BY l._stmt, {pk}) AS _sc_rank FROM {rows} "
                "CROSS JOIN LATERAL ({statement}) s WHERE l._stmt BETWEEN %s AND %s) r "
                "JOIN {rows} ON l.tableoid = r._sc_part AND l.ctid = r._sc_tid "
                "WHERE r._sc_rank <= {per_action}) l"
            ).format(pk=pk, rows=rows, statement=statement, per_action=sql.Literal(cut))
        query = sql.SQL(
            """
            SELECT l._stmt, l._kind, row_to_json(l) AS image, s.op, s.key, s.at  -- json keeps column order
            FROM {rows}
            CROSS JOIN LATERAL ({statement}) s
            WHERE l._stmt BETWEEN %s AND %s
            ORDER BY l._stmt, {pk}, l._kind DESC  -- O (before) first
            """
        ).format(rows=rows, pk=pk, statement=statement)
        params: tuple = (run_id, action_ids, action_ids, lo, hi)
        if cut is not None:
            params = params + params
        pending: dict[tuple, tuple[dict, str, datetime]] = {}
        # Named uniquely: a caller may have two of these open on one connection.
        with conn.transaction(), conn.cursor(name=f"sidecar_changes_{uuid.uuid4().hex[:12]}") as cur:
            cur.itersize = 2000
            cur.execute(query, params)
            for stmt, kind, image, op, action, at in cur:
                image = _clean(image)
                key = {c: image.get(c) for c in info.pk_columns}
                if op == "U":
                    k = (stmt, tuple(str(v) for v in key.values()))
                    if kind == "O":
                        pending[k] = (image, action or "", at)
                        continue
                    before = pending.pop(k, (None,))[0]
                    after = image
                    if before == after:
                        continue
                    ch_op = "U" if before is not None else "I"
                else:
                    before = image if kind == "O" else None
                    after = image if kind == "N" else None
                    ch_op = op
                yield Change(info.table, info.tracked_id, ch_op, key, before, after, stmt, action or "", at,
                             info.label_column, info.display_name)
        # An UPDATE that moved a row to another key leaves its old key as a deletion.
        for (stmt, _), (before, action, at) in pending.items():
            yield Change(info.table, info.tracked_id, "D", {c: before.get(c) for c in info.pk_columns},
                         before, None, stmt, action, at, info.label_column, info.display_name)


def change_counts(conn: psycopg.Connection, run_id: uuid.UUID, *, action_ids: list[int] | None = None,
                  exact: bool = True, tables: list[TableInfo] | None = None) -> dict[int | None, int]:
    """How many changes changes() yields for each action of the run (by action id), counted in the
    database. With exact=False: how many rows each statement wrote, no-op rows of bulk UPDATEs
    included, without comparing any images (an upper bound, and much cheaper). tables: as for
    changes()."""
    totals: dict[int | None, int] = {}
    for info in tables_of_run(conn, run_id, action_ids) if tables is None else tables:
        pk = sql.SQL(", ").join(sql.SQL("l.") + sql.Identifier(c) for c in info.pk_columns)
        # One change per image of an INSERT or DELETE, and per row of an
        # UPDATE unless its two images are the same (a no-op row); a row an
        # UPDATE moved to another key has one image under each key.
        changed = sql.SQL("HAVING s.op <> 'U' OR count(*) = 1 OR count(DISTINCT to_jsonb(l) - '_kind' - '_head') > 1"
                          if exact else "")
        for action_id, n in conn.execute(
            sql.SQL(
                """
                SELECT action_id, count(*) FROM (
                    SELECT s.action_id
                    FROM {source} l CROSS JOIN LATERAL ({statement}) s
                    WHERE l._stmt BETWEEN %s AND %s
                    GROUP BY l._stmt, {pk}, s.op, s.action_id {changed}) c
                GROUP BY action_id
                """
            ).format(source=history_from(conn, info), pk=pk, changed=changed,
                     statement=statement_of_image(sql.SQL("s.op, s.action_id"), sql.SQL(_IN_SCOPE))),
            (run_id, action_ids, action_ids, *info.stmt_range),
        ):
            totals[action_id] = totals.get(action_id, 0) + n
    return totals


@dataclass
class RowCounts:
    """Rows a run changed per table; not complete: counted at counted_at, and the run has written since."""
    tables: dict[str, int]
    complete: bool
    counted_at: datetime | None


# Past this many statements, a running run that has written since its count
# was kept is not counted again (counting reads all its images) until it has
# finished: lists of runs show the kept count as a lower bound.
RECOUNT_MAX = 50_000


def row_counts(conn: psycopg.Connection, run_id: uuid.UUID) -> RowCounts:
    """Rows the run changed, per table: each row once, however often it was written.

    The no-op rows of a bulk UPDATE (captured, see triggers/capture.sql) are
    left out as in changes(): `UPDATE t SET v = v` changed no row. Counted in
    the database (sidecar.run_rows), which keeps the count of a finished run,
    and of a big running run until it finishes (then complete is false once
    the run has written since: the counts are those at counted_at). sidecar.run_rows settles
    row-mode statements itself.
    """
    counts, complete, counted_at = conn.execute("SELECT * FROM sidecar.run_rows(%s, %s)",
                                                  (run_id, RECOUNT_MAX)).fetchone()
    return RowCounts({table: n for table, n in sorted(counts.items())}, complete, counted_at)


def changes_by_action(conn: psycopg.Connection, run_id: uuid.UUID, *, limit: int,
                      actions: int | None = None) -> tuple[list[tuple[str, list[Change], int]], int]:
    """(action key, its first `limit` changes, how many more) per action, in the order the actions began;
    and how many actions were left out: with `actions`, only the first ones are read.

    The rows each action wrote are counted in the database first. Only the
    actions with more than `limit` (a bulk write) get an exact count of their
    changes, and only then are the reads cut to the first `limit` rows of each
    action: a run of a million rows shows its first ones without reading the
    rest, a run of many small actions is read once. A run left running for
    days has millions of actions: with `actions`, the statements of the first
    ones are found by their action ids, and only their history is read. An
    action whose writes changed nothing is left out.
    """
    listed = actions_of_run(conn, run_id, limit=None if actions is None else actions + 1)
    left_out = 0
    action_ids = None
    if actions is not None and len(listed) > actions:
        listed = listed[:actions]
        action_ids = [a for a, _, _ in listed]
        left_out = conn.execute("SELECT count(*) FROM sidecar.actions WHERE run_id = %s",
                                (run_id,)).fetchone()[0] - actions
    # Looked up once for both whole-run reads (a scan of the run's statements).
    tables = tables_of_run(conn, run_id, action_ids)
    written = change_counts(conn, run_id, action_ids=action_ids, exact=False, tables=tables)
    big = [a for a, n in written.items() if a is not None and n > limit]
    exact = change_counts(conn, run_id, action_ids=big) if big else {}
    shown: dict[str, list[Change]] = {key: [] for _, key, _ in listed}
    counted = {key: exact[action_id] for action_id, key, _ in listed if action_id in exact}
    for change in changes(conn, run_id, action_ids=action_ids, per_action=limit if big else None, tables=tables):
        kept = shown.setdefault(change.action, [])
        if len(kept) < limit:
            kept.append(change)
    # An action not counted exactly wrote no more rows than limit: all of them were read.
    return ([(key, kept, max(counted.get(key, len(kept)) - len(kept), 0)) for key, kept in shown.items() if kept],
            left_out)


def actions_of_run(conn: psycopg.Connection, run_id: uuid.UUID,
                   limit: int | None = None) -> list[tuple[int, str, datetime]]:
    return conn.execute(
        "SELECT action_id, key, started_at FROM sidecar.actions WHERE run_id = %s ORDER BY action_id LIMIT %s",
        (run_id, limit),
    ).fetchall()
