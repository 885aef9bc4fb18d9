"""`sidecar undo --cascade`: undo the later runs that wrote the same rows first.

A run's rows may since have been changed by later runs (a second bot, a
rerun). Without --cascade those rows are conflicts; with it, each such later
run is undone too, newest first, and the original last, in one transaction.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from ..capture.history import TableInfo, tables_of_run
from .restore import Scope, UndoResult, undo

# Statement ids searched at first, newest first, for the later writers of a row; doubled each time.
FIRST_WINDOW = 4096
_XID_WRAP = 4_294_967_296  # a row's xmin is the low 32 bits of the 64-bit txid in sidecar.statements


def _later_writers(conn: psycopg.Connection, run_id: uuid.UUID) -> set[uuid.UUID]:
    """Runs that wrote a row after this run wrote it (undo runs and undone runs left out).

    Read per table of the run, in three parts, none of which reads history in proportion to
    how much came after the run (issue 25):

    - the run's rows, each with the run's last image of it ("as the run left it": its after-image,
      or gone) and the transaction of that write;
    - other runs' writes of those rows among the run's own statements (runs written alongside);
    - the rows not now as the run left it: gone or back, written by another transaction since (its
      xmin is not the run's; a write of the same values counts), or changed within the run's own
      transaction. Only these are searched, newest history first, in windows of statement ids
      that double: each write of the row by another run is a later writer, back to the first
      that found the row as the run left it. Rows untouched since are never searched; a row
      only a person changed since is searched back to the run.
    """
    found: set[uuid.UUID] = set()
    tables = tables_of_run(conn, run_id)
    with conn.transaction():
        top = conn.execute("SELECT max(stmt_id) FROM sidecar.statements").fetchone()[0]
        for info in tables:
            found |= _later_writers_of_table(conn, run_id, info, top)
        if not found:
            return set()
        kept = conn.execute(
            "SELECT r.run_id FROM sidecar.runs r LEFT JOIN sidecar.runs u ON u.run_id = r.undone_by "
            "WHERE r.run_id = ANY(%s) AND r.run_id <> %s AND r.undo_of IS NULL "
            "AND (r.undone_by IS NULL OR u.undone_by IS NOT NULL)",
            (list(found), run_id)).fetchall()
    return {r[0] for r in kept}


def _later_writers_of_table(conn: psycopg.Connection, run_id: uuid.UUID, info: TableInfo, top: int) -> set[uuid.UUID]:
    log, pk, (lo, hi) = sql.Identifier(info.log_table), info.pk_columns, info.stmt_range
    cols = [sql.Identifier(c) for c in pk]

    def keys(alias: str) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), c) for c in cols)

    def same_row(a: str, b: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{a}.{c} = {b}.{c}").format(a=sql.Identifier(a), b=sql.Identifier(b), c=c) for c in cols)

    schema, name = conn.execute(
        "SELECT n.nspname, c.relname FROM sidecar.tracked t JOIN pg_class c ON c.oid = t.relid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tracked_id = %s", (info.tracked_id,)).fetchone()
    # The run's statements of the table, then its rows: first and last write, the last image
    # (NULL when the row was gone after it) and that write's transaction.
    conn.execute("CREATE TEMP TABLE _sc_rs ON COMMIT DROP AS SELECT stmt_id, op, txid FROM sidecar.statements "
                 "WHERE run_id = %s AND tracked_id = %s", (run_id, info.tracked_id))
    conn.execute("ALTER TABLE _sc_rs ADD PRIMARY KEY (stmt_id)")
    conn.execute("ANALYZE _sc_rs")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _sc_mine ON COMMIT DROP AS "
            "SELECT DISTINCT ON ({keys}) {keys}, jsonb_build_array({keys})::text AS _k, "
            "min(l._stmt) OVER (PARTITION BY {keys}) AS _first, l._stmt AS _last, s.txid AS _txid, "
            "CASE WHEN l._kind = 'N' THEN to_jsonb(l) - '_stmt' - '_kind' - '_head' END AS _left "
            "FROM sidecar.{log} l JOIN _sc_rs s ON s.stmt_id = l._stmt "
            "WHERE l._stmt BETWEEN %s AND %s ORDER BY {keys}, l._stmt DESC, l._kind"
        ).format(keys=keys("l"), log=log),
        (lo, hi),
    )
    conn.execute(sql.SQL("ALTER TABLE _sc_mine ADD PRIMARY KEY ({})").format(sql.SQL(", ").join(cols)))
    conn.execute("ANALYZE _sc_mine")
    # Other runs' writes of these rows among the run's own statements.
    writers = {r[0] for r in conn.execute(
        sql.SQL(
            "SELECT DISTINCT s.run_id FROM sidecar.{log} l JOIN _sc_mine m ON {same} "
            "JOIN sidecar.statements s ON s.stmt_id = l._stmt "
            "WHERE l._stmt BETWEEN %s AND %s AND (l._stmt - m._first) > 0 "
            "AND NOT EXISTS (SELECT FROM _sc_rs r WHERE r.stmt_id = l._stmt)"
        ).format(log=log, same=same_row("l", "m")),
        (lo, hi),
    )}
    # The rows not now as the run left it.
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _sc_chase ON COMMIT DROP AS "
            "SELECT m.* FROM _sc_mine m LEFT JOIN {table} t ON {same} "
            "WHERE CASE WHEN m._left IS NULL THEN t.{first} IS NOT NULL "
            "ELSE t.{first} IS NULL OR t.xmin::text::bigint <> m._txid % {wrap} "
            "OR EXISTS (SELECT FROM jsonb_each(to_jsonb(t)) c WHERE m._left -> c.key IS DISTINCT FROM c.value) END"
        ).format(table=sql.Identifier(schema, name), same=same_row("m", "t"), first=cols[0],
                 wrap=sql.Literal(_XID_WRAP)),
    )
    chase = {r[0]: r[1] for r in conn.execute("SELECT _k, _left FROM _sc_chase")}
    if chase:
        conn.execute("ANALYZE _sc_chase")
        floor = conn.execute("SELECT min(_last) FROM _sc_chase").fetchone()[0]
        query = sql.SQL(
            "SELECT m._k, l._stmt, l._kind, to_jsonb(l) - '_stmt' - '_kind' - '_head', s.run_id "
            "FROM sidecar.{log} l JOIN _sc_chase m ON {same} "
            "JOIN sidecar.statements s ON s.stmt_id = l._stmt "
            "WHERE l._stmt > %s AND l._stmt <= %s AND (l._stmt - m._last) > 0 "
            "ORDER BY m._k, l._stmt DESC, l._kind"
        ).format(log=log, same=same_row("l", "m"))
        width, upper = FIRST_WINDOW, top or hi
        while chase and upper > floor:
            low = max(floor, upper - width)
            # Each row's writes in the window, newest first: statement by statement, the row
            # as the statement found it is its before-image (O), or gone when it has none.
            by_row: dict[str, dict[int, list]] = {}
            for k, stmt, kind, image, writer in _read_window(conn, query, low, upper):
                entry = by_row.setdefault(k, {}).setdefault(stmt, [writer, None])
                if kind == "O":
                    entry[1] = image
            done = []
            for k, stmts in by_row.items():
                for stmt in sorted(stmts, reverse=True):
                    writer, before = stmts[stmt]
                    if writer is not None:
                        writers.add(writer)
                    if before == chase[k]:  # found the row as the run left it: no earlier writer counts
                        done.append(k)
                        break
            if done:
                conn.execute("DELETE FROM _sc_chase WHERE _k = ANY(%s)", (done,))
                for k in done:
                    del chase[k]
            upper, width = low, width * 2
    for t in ("_sc_chase", "_sc_mine", "_sc_rs"):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t)))
    return writers


def _read_window(conn: psycopg.Connection, query: sql.Composable, low: int, upper: int) -> list[tuple]:
    """The searched rows' images in the window of statement ids (low, upper]."""
    return conn.execute(query, (low, upper)).fetchall()


def dependents(conn: psycopg.Connection, run_id: uuid.UUID) -> list[uuid.UUID]:
    """The later runs that depend on this one, transitively, newest first."""
    seen: set[uuid.UUID] = set()
    todo = [run_id]
    while todo:
        for later in _later_writers(conn, todo.pop()):
            if later not in seen and later != run_id:
                seen.add(later)
                todo.append(later)
    if not seen:
        return []
    ordered = conn.execute(
        "SELECT run_id FROM sidecar.statements WHERE run_id = ANY(%s) GROUP BY run_id ORDER BY max(stmt_id) DESC",
        (list(seen),),
    ).fetchall()
    return [r[0] for r in ordered]


def undo_later_runs(conn: psycopg.Connection, run_id: uuid.UUID, *, force: bool = False, reason: str | None = None,
                    lock_timeout: str | None = None) -> list[UndoResult]:
    """Undo the later runs that depend on this one, newest first (in the caller's transaction)."""
    why = f"cascade of the undo of run {str(run_id)[:8]}" + (f": {reason}" if reason else "")
    return [undo(conn, Scope(later), force=force, reason=why, lock_timeout=lock_timeout)
            for later in dependents(conn, run_id)]


def undo_cascade(conn: psycopg.Connection, scope: Scope, *, force: bool = False, reason: str | None = None,
                 lock_timeout: str | None = None) -> list[UndoResult]:
    """Undo the later runs that depend on this one (newest first), then this one, in one transaction."""
    with conn.transaction():
        results = undo_later_runs(conn, scope.run_id, force=force, reason=reason, lock_timeout=lock_timeout)
        results.append(undo(conn, scope, force=force, reason=reason, lock_timeout=lock_timeout))
    return results
