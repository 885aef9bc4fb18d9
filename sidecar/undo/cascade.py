"""`sidecar undo --cascade`: undo the later runs that wrote the same rows first.

A run's rows may since have been changed by later runs (a second bot, a
rerun). Without --cascade those rows are conflicts; with it, each such later
run is undone too, newest first, and the original last, in one transaction.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from ..capture.history import statement_of_image, tables_of_run
from .restore import Scope, UndoResult, undo


def _later_writers(conn: psycopg.Connection, run_id: uuid.UUID) -> set[uuid.UUID]:
    """Runs that wrote a row after this run wrote it (undo runs and undone runs left out)."""
    found: set[uuid.UUID] = set()
    tables = tables_of_run(conn, run_id)
    with conn.transaction():
        for info in tables:
            log, pk, (lo, hi) = info.log_table, info.pk_columns, info.stmt_range
            keys = sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in pk)
            # The rows this run wrote, each with its first write, keyed and
            # analyzed: the planner then probes them per later image, or
            # hashes them, instead of scanning later history once per row (it
            # expects one row from history newer than its statistics).
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE _sc_mine ON COMMIT DROP AS "
                    "SELECT {keys}, min(l._stmt) AS _first FROM sidecar.{log} l CROSS JOIN LATERAL ({statement}) s "
                    "WHERE l._stmt BETWEEN %(lo)s AND %(hi)s GROUP BY {keys}"
                ).format(keys=keys, log=sql.Identifier(log),
                         statement=statement_of_image(sql.SQL("1"), sql.SQL("s.run_id = %(run)s"))),
                {"run": run_id, "lo": lo, "hi": hi},
            )
            conn.execute(sql.SQL("ALTER TABLE _sc_mine ADD PRIMARY KEY ({})").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in pk)))
            conn.execute("ANALYZE _sc_mine")
            same_row = sql.SQL(" AND ").join(
                sql.SQL("later.{c} = mine.{c}").format(c=sql.Identifier(c)) for c in pk)
            rows = conn.execute(
                sql.SQL(
                    """
                    SELECT DISTINCT s2.run_id
                    FROM sidecar.{log} later
                    JOIN _sc_mine mine ON {same_row} AND later._stmt > mine._first
                    JOIN sidecar.statements s2 ON s2.stmt_id = later._stmt
                    JOIN sidecar.runs r ON r.run_id = s2.run_id
                    LEFT JOIN sidecar.runs u ON u.run_id = r.undone_by
                    WHERE later._stmt > %(lo)s AND s2.run_id <> %(run)s AND r.undo_of IS NULL
                      AND (r.undone_by IS NULL OR u.undone_by IS NOT NULL)
                    """
                ).format(log=sql.Identifier(log), same_row=same_row),
                {"run": run_id, "lo": lo},
            ).fetchall()
            found.update(r[0] for r in rows)
            conn.execute("DROP TABLE _sc_mine")
    return found


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
