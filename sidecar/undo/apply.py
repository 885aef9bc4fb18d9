"""Undo, writing the plan: rows put back parents first, restored, then removed children first.

Each write is one step of the table's undo function (fn_undo.sql:
sidecar._undo_write), which runs with the table owner's rights and takes the
values from the images it read from the history: the operator needs no
privilege on the table. The table's own triggers are off for that statement
only, so that they do not alter the restored rows; sidecar's capture stays
on, which records the undo as a run of its own, except where the undo is the
mirror of one statement of the run (every row it wrote put back, nothing
skipped): that write runs with capture off too and the undo's statement
points at the reversed statement's images, read with before and after
swapped (docs/undo.md). The undo function checks that it is such a mirror
and that the write left no row out; when not, the step is written again
captured, from a savepoint.
"""

from __future__ import annotations

import psycopg

from ..text.describe import plural
from .keys import keep_referenced
from .plan import Planner
from .tables import TablePlan, server_step


def apply(planner: Planner) -> dict[str, dict[str, int]]:
    """Write a built plan; rows written per table and step."""
    conn = planner.conn
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    order = planner.ordered()
    done: dict[str, dict[str, int]] = {p.table: {} for p in order}
    # Rows the run added that no row refers to go first: a row put back or
    # restored may need a unique value one of them holds (the run replaced
    # a user by a new one with the same email). The rest go last, once the
    # rows that referred to them are restored.
    for plan in reversed(order):
        if plan.counts.get("delete"):
            planner.progress(f"removing {plan.counts['delete']:,} rows of {plan.table}")
        done[plan.table]["delete"] = _delete(planner, plan, unreferenced=True)
    # Parents are put back before the rows that refer to them are restored.
    # When that order breaks a unique key (the undo of an undo gives an
    # email back to a new user that a restored user still holds), the
    # restores are tried first.
    try:
        with conn.transaction():  # a savepoint
            _put_back_and_restore(planner, order, done, ("insert", "update"))
    except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation):
        _put_back_and_restore(planner, order, done, ("update", "insert"))
    for plan in order:
        lost = plan.counts.get("insert", 0) - done[plan.table]["insert"]
        if lost:
            # Someone inserted the same key after the plan was made: a conflict, not an overwrite.
            planner.notes.append(f"{plan.table}: {plural(lost, 'row')} reappeared while undoing and "
                                 f"{'was' if lost == 1 else 'were'} left as {'it is' if lost == 1 else 'they are'}")
            plan.counts["conflict"] = plan.counts.get("conflict", 0) + lost
    left = [p for p in order if p.counts.get("delete", 0) > done[p.table]["delete"]]
    keep_referenced(planner, left)
    for plan in reversed(left):
        done[plan.table]["delete"] += _delete(planner, plan)
    for plan in order:
        kept = plan.counts.get("delete", 0) - done[plan.table]["delete"]
        if kept:  # listed as conflicts by conflicts(kept=True)
            plan.counts["conflict"] = plan.counts.get("conflict", 0) + kept
            plan.counts["kept"] = kept
    return done


def _put_back_and_restore(planner: Planner, order: list[TablePlan], done: dict[str, dict[str, int]],
                          steps: tuple[str, str]) -> None:
    for step in steps:
        for plan in order:
            if plan.counts.get(step):
                what = "putting back" if step == "insert" else "restoring"
                planner.progress(f"{what} {plan.counts[step]:,} rows of {plan.table}")
            done[plan.table][step] = (_insert if step == "insert" else _update)(planner, plan)


# The step that reverses each op, written as a mirror of one statement.
_MIRROR_STEP = {"U": "update", "I": "delete", "D": "insert"}


def _write(planner: Planner, plan: TablePlan, step: str, args: dict | None = None) -> int:
    """One write step; as a pointer at the reversed statement's images when the plan mirrors it."""
    conn, run_id = planner.conn, planner.scope.run_id
    planned = {s: n for s, n in plan.counts.items() if n and s not in ("conflict", "forced")}
    if (planner.pointers and not planner.scope.rows and _MIRROR_STEP.get(plan.single_op or "") == step
            and set(planned) == {step}):
        try:
            with conn.transaction():  # a savepoint: a write that is no mirror is written again, captured
                return server_step(conn, plan, step, run_id, (args or {}) | {"pointer": True})
        except psycopg.Error as exc:
            # SC030: not a mirror after all; 55006: deferred checks kept the triggers from being turned off.
            if exc.sqlstate not in ("SC030", "55006"):
                raise
    return server_step(conn, plan, step, run_id, args)


def _insert(planner: Planner, plan: TablePlan) -> int:
    """Put back the plan's rows to insert. A row whose key reappeared since the plan
    was made is left as it is (a conflict); any other unique key that refuses a row is
    an error, which apply() answers by trying the other order."""
    if not plan.counts.get("insert"):
        return 0
    return _write(planner, plan, "insert")


def conflict_key(conn: psycopg.Connection, plan: TablePlan) -> list[str] | None:
    """The table's primary key now, which a put-back row may find taken again (None: it has none)."""
    return conn.execute("SELECT sidecar._pk_columns(%s::regclass)::text[]", (plan.table,)).fetchone()[0]


def _update(planner: Planner, plan: TablePlan) -> int:
    if not plan.counts.get("update"):
        return 0
    return _write(planner, plan, "update")


def _delete(planner: Planner, plan: TablePlan, *, unreferenced: bool = False) -> int:
    """Delete the plan's rows to delete (unreferenced: only those no row refers to now)."""
    if not plan.counts.get("delete"):
        return 0
    return _write(planner, plan, "delete", {"unreferenced": unreferenced})


def user_triggers(conn: psycopg.Connection, tables: list[str]) -> list[tuple[str, str]]:
    """(table, trigger) for the tables' own enabled triggers, which an undo turns off while it restores."""
    return conn.execute(
        "SELECT sidecar._qualname(tgrelid), tgname FROM pg_trigger "
        "WHERE sidecar._qualname(tgrelid) = ANY(%s) AND NOT tgisinternal AND tgenabled <> 'D' "
        "AND tgname NOT LIKE 'sidecar\\_%%' ORDER BY 1, 2",
        (tables,),
    ).fetchall()
