"""Undo: restore a run's rows (or an action's, or some rows') to what they were before it.

`preview` plans and reports; `undo` plans, applies and records the undo as a
run of its own, all in one transaction, so it can be undone in turn. The
plan is built by undo.plan, ordered by undo.keys and written by
undo.apply.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from ..capture import settle
from ..errors import SidecarError, UsageError
from ..text.describe import plural
from .apply import apply
from .plan import CONFLICTS_LISTED, Conflict, Planner, _text  # noqa: F401 (the library's undo API)
from .scope import Scope, make_scope, parse_row  # noqa: F401 (the library's undo API)


@dataclass
class UndoResult:
    run_id: uuid.UUID
    scope: str
    undo_run_id: uuid.UUID | None
    tables: dict[str, dict[str, int]]
    conflicts: list[Conflict]
    conflict_count: int
    notes: list[str]
    applied: bool
    forced: bool = False
    held_rejected: int = 0  # held changes of what was undone, rejected with it (a preview: to be)

    @property
    def restored(self) -> int:
        return sum(c.get("insert", 0) + c.get("update", 0) + c.get("delete", 0) for c in self.tables.values())


# Settings that fix the text form of values (dates, intervals, bytea, floats),
# in the undo's transaction and in the script of `sidecar undo --sql`.
TEXT_SETTINGS = {"datestyle": "ISO, YMD", "intervalstyle": "postgres", "bytea_output": "hex",
                 "extra_float_digits": "1", "timezone": "UTC"}
# Planner settings for the undo's own transaction. Its temporary tables are
# analyzed so that the planner knows their sizes and that keys are unique,
# which a sample of 3,000 rows tells as well as the default 30,000 (reading
# those cost a third of the time of planning a 200,000-row undo). Its hash
# joins of a big run fit in memory rather than spilling in batches. It reads
# the table's rows by key, rows the run wrote lately and so most likely in
# memory: priced as random reads from disk (random_page_cost 4, the default),
# looking up a run's few thousand rows in a table of a million took three
# scans of the whole table (0.6 s of a 1.7 s undo); priced as cached, each
# step looks them up by key (0.08 s). A run that wrote most of a table is
# still read by one scan and a hash join.
PLANNER_SETTINGS = {"default_statistics_target": "10", "work_mem": "32MB", "random_page_cost": "1.1"}


# Names print qualified (search_path), values in fixed text forms.
_SESSION_SETTINGS = {"search_path": "pg_catalog, pg_temp"} | TEXT_SETTINGS | PLANNER_SETTINGS


def _set_local(conn: psycopg.Connection, names: list[str], values: list[str]) -> None:
    """Set these settings for the rest of the transaction, in one round trip."""
    conn.execute("SELECT set_config(n, v, true) FROM unnest(%s::text[], %s::text[]) AS u(n, v)", (names, values))


# Room for the plan's temporary tables in memory (a 200,000-row undo's are about
# 60 MB): with the default 8MB they are written out to disk and read back at each
# step. Taken only as used, and settable only before the session's first
# temporary table (a second undo in the same session keeps what the first had).
TEMP_BUFFERS = "256MB"


def _session_settings(conn: psycopg.Connection) -> None:
    try:
        with conn.transaction():  # a savepoint: refused once the session has used temporary tables
            conn.execute("SELECT set_config('temp_buffers', %s, true)", (TEMP_BUFFERS,))
    except psycopg.errors.InvalidParameterValue:
        pass
    _set_local(conn, list(_SESSION_SETTINGS), list(_SESSION_SETTINGS.values()))


# What an undo sets for its transaction (sidecar._undo_begin tags it with the
# undo run and _undo_finish clears the tag).
_UNDO_SETTINGS = ["sidecar.run_id", "sidecar.action", *_SESSION_SETTINGS]


@contextmanager
def _settings_restored(conn: psycopg.Connection) -> Iterator[None]:
    """Give the caller's settings back once the undo is done: called inside a
    transaction of the caller's, the undo's would otherwise last to its end."""
    saved = conn.execute(
        "SELECT array_agg(coalesce(current_setting(n, true), '') ORDER BY i) "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i)", (_UNDO_SETTINGS,)
    ).fetchone()[0]
    yield
    _set_local(conn, _UNDO_SETTINGS, saved)


def preview(conn: psycopg.Connection, scope: Scope, *, force: bool = False) -> tuple[Planner, UndoResult]:
    """Plan the undo and report it; nothing changes. Use inside conn.transaction(force_rollback=True)."""
    _session_settings(conn)
    if scope.kind == "run":
        undone = conn.execute(
            "SELECT r.undone_by, u.started_at FROM sidecar.runs r JOIN sidecar.runs u ON u.run_id = r.undone_by "
            "WHERE r.run_id = %s AND u.undone_by IS NULL", (scope.run_id,)).fetchone()
        if undone:
            raise UsageError(
                f"run {scope.run_id} was already undone by run {undone[0]} at {undone[1]:%Y-%m-%d %H:%M:%S %Z}; "
                "to put its changes back, undo that run", shell=f"sidecar undo {str(undone[0])[:8]}")
    planner = Planner(conn, scope, force=force)
    planner.plan(lock=False)
    notes = planner.notes + [
        lost + ("" if force else " (undo needs --force to restore the rest)") for lost in planner.lost]
    conflicts = planner.conflicts()
    conflicts += planner.conflicts(CONFLICTS_LISTED - len(conflicts), kept=True)
    held = conn.execute("SELECT coalesce(cardinality(sidecar._held_in_scope(%s, %s)), 0)",
                        (scope.run_id, Jsonb(_scope_meta(scope)))).fetchone()[0]
    result = UndoResult(
        scope.run_id, scope.kind, None,
        {p.table: dict(p.counts) for p in planner.ordered()},
        conflicts, sum(p.counts.get("conflict", 0) + p.counts.get("forced", 0) for p in planner.tables),
        notes, applied=False, forced=force, held_rejected=held,
    )
    return planner, result


def _scope_meta(scope: Scope) -> dict:
    """What an undo covers, as its run's meta records it (sidecar._held_in_scope reads the same)."""
    return {"scope": scope.kind, "actions": scope.actions, "rows": [{"table": t, "key": k} for t, k in scope.rows]}


def undo(conn: psycopg.Connection, scope: Scope, *, force: bool = False, reason: str | None = None,
         lock_timeout: str | None = None, progress: Callable[[str], None] | None = None) -> UndoResult:
    """Restore the scope's rows to their state before the run, in one transaction.

    The undo is itself a run (undo_of the original), so it can be undone.
    Conflicting rows are skipped and listed unless force is set.
    """
    settle.keep_settled(conn)  # committed before the undo's transaction, which may be long
    with conn.transaction(), _settings_restored(conn):
        _session_settings(conn)
        meta = _scope_meta(scope) | {"reason": reason, "force": force}
        try:
            # Checks the run may be undone, registers the undo as a run and tags this transaction with it.
            undo_run = conn.execute("SELECT sidecar._undo_begin(%s, %s)", (scope.run_id, Jsonb(meta))).fetchone()[0]
        except psycopg.Error as exc:
            if exc.sqlstate == "SC008":
                hint = f"; {exc.diag.message_hint[0].lower()}{exc.diag.message_hint[1:]}" if exc.diag.message_hint else ""
                raise UsageError(exc.diag.message_primary.removeprefix("sidecar: ") + hint) from None
            raise
        planner = Planner(conn, scope, force=force, progress=progress)
        try:
            planner.plan(lock_timeout=lock_timeout)
        except psycopg.errors.LockNotAvailable:
            raise SidecarError(
                f"undo gave up waiting {lock_timeout} for a lock held by another session; nothing was changed. "
                "Try again later, or raise --lock-timeout"
            ) from None
        if planner.lost and not force:
            raise UsageError(
                "; ".join(planner.lost) + ". Nothing was changed: add --force to restore everything else")
        planner.notes.extend(planner.lost)
        conflicts = planner.conflicts()
        try:
            counts = apply(planner)
        except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as exc:
            # Values rows of the run traded among themselves, or a key
            # undo.unique does not check ahead (an expression, a WHERE).
            detail = f" ({exc.diag.message_detail.rstrip('.')})" if exc.diag.message_detail else ""
            raise SidecarError(
                f"restoring {exc.diag.schema_name}.{exc.diag.table_name} would break its key "
                f"{exc.diag.constraint_name}{detail}: rows of the run traded values of that key, or a row changed "
                "since holds one; nothing was changed. Undo the other rows with --row, and these by hand"
            ) from None
        # Rows kept because rows changed since refer to them are conflicts too,
        # known only once applied: list them with the others.
        conflicts += planner.conflicts(CONFLICTS_LISTED - len(conflicts), kept=True)
        conflict_count = sum(p.counts.get("conflict", 0) + p.counts.get("forced", 0) for p in planner.tables)
        for plan in planner.tables:
            counts[plan.table]["conflict"] = plan.counts.get("conflict", 0)
            counts[plan.table]["done"] = plan.counts.get("done", 0)
        held = conn.execute("SELECT sidecar._reject_undone(%s)", (undo_run,)).fetchone()[0]
        result = UndoResult(scope.run_id, scope.kind, undo_run, counts, conflicts, conflict_count,
                            planner.notes, applied=True, forced=force, held_rejected=held)

        summary = (
            f"Undid {'run' if scope.kind == 'run' else scope.kind + ' of run'} {str(scope.run_id)[:8]}: "
            f"restored {plural(result.restored, 'row')}"
            + (f", skipped {plural(conflict_count, 'conflicting row')}" if conflict_count else "")
            + (f", rejected {plural(held, 'held change')}" if held else "")
            + (f" ({reason})" if reason else "")
        )
        conn.execute(
            "SELECT sidecar._undo_finish(%s, %s, %s)",
            (undo_run, summary, Jsonb({"tables": counts, "scope": meta, "conflicts": conflict_count,
                                       "notes": planner.notes})),
        )
    return result
