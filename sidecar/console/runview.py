"""What the run page derives from a run: its meta in words, and what later undos covered
(so no button offers to undo an action or a row again)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from ..capture.history import Change
from ..steps import runs
from ..undo.restore import _text
from .web import Named


def meta_in_words(info: runs.RunInfo) -> list[tuple[str, object]]:
    """The run's meta for people: a rerun's steps, blocked steps and force in words, not JSON."""
    out: list[tuple[str, object]] = []
    for k, v in sorted(info.meta.items()):
        if k == "steps" and isinstance(v, list):
            v = Named(", ".join(map(str, v)) or "none", v)
        elif k == "blocked" and isinstance(v, dict):
            if not v:
                continue
            v = Named("; ".join(f"{key}: {why}" for key, why in v.items()), v)
        elif k == "force" and isinstance(v, bool):
            if not v:
                continue
            v = Named("yes: steps redone despite changed rows", v)
        elif k == "rerun_of" or v in (None, "", [], {}):
            continue
        out.append((k.replace("_", " "), v))
    return out


@dataclass
class Undone:
    """What later undos of a run covered: the whole run, some actions, some rows."""

    run: bool = False
    actions: dict[str, uuid.UUID] = field(default_factory=dict)  # action key -> the undo run
    rows: dict[str, uuid.UUID] = field(default_factory=dict)  # row spec -> the undo run
    row_spec: Callable[[Change], str] = str  # a change's row as the undo's `row` names it

    def of_action(self, key: str) -> uuid.UUID | None:
        return self.actions.get(key)

    def of_row(self, change: Change) -> uuid.UUID | None:
        return self.actions.get(change.action) or self.rows.get(self.row_spec(change))


def undone_of(conn: psycopg.Connection, info: runs.RunInfo, row_spec: Callable[[Change], str]) -> Undone:
    """The undos of the run still in force (not undone in turn), so no button offers to undo them again."""
    found = Undone(run=bool(info.undone_by), row_spec=row_spec)
    for undo_id, meta in conn.execute(
        "SELECT run_id, meta FROM sidecar.runs WHERE undo_of = %s AND undone_by IS NULL AND status = 'succeeded'",
        (info.run_id,)):
        for key in meta.get("actions") or []:
            found.actions[key] = undo_id
        for row in meta.get("rows") or []:
            key = row.get("key") or {}
            table = str(row.get("table", ""))
            spec = (f"{table}:{_text(next(iter(key.values())))}" if len(key) == 1
                    else f"{table}:{json.dumps(key, sort_keys=True, default=str)}")
            found.rows[spec] = undo_id
            found.rows[spec.removeprefix("public.")] = undo_id
    return found
