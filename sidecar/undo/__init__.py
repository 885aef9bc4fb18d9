"""Undo: put rows back as they were before a run, some of its actions, or single rows.

scope says what an undo covers; plan reads that scope's history into temporary
tables and decides each row's step (tables holds their names); keys orders the
work by foreign keys and keeps rows still referred to; unique checks unique keys
ahead; apply writes the plan; restore runs plan and apply in one transaction and
records the undo as a run of its own. script prints the same restore as reviewable
SQL (`undo --sql`) and cascade undoes later runs first (`--cascade`).
What touches a table is done by its undo function (sql/functions/fn_undo.sql)
with the table owner's rights, so sidecar_undoer is all an operator needs.
"""

from .plan import Conflict, Planner
from .restore import UndoResult, preview, undo
from .scope import Scope, make_scope, parse_row

__all__ = ["Conflict", "Planner", "Scope", "UndoResult", "make_scope", "parse_row", "preview", "undo"]
