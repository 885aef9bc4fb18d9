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

from .keys import until_stable

if TYPE_CHECKING:  # the planner calls in here; no import back at run time
    from .plan import Planner


def mark_clashes(planner: Planner) -> None:
    """Mark 'clash' the rows to put back or restore whose old values of a unique key are held
    now by a row that stays. A row that stays as it is because of this may hold the value
    another row needs, so this repeats. (The check reads the table: fn_undo.sql,
    sidecar._undo_clash, which skips a key on a column the undo does not restore: its
    value stays, and was unique already.)"""
    checks = [(plan, "clash", {}) for plan in planner.ordered()
              if plan.counts.get("insert") or plan.counts.get("update")]
    if until_stable(planner, checks):
        for plan in planner.tables:
            planner.count(plan)
