"""Undo, the plan's tables: one per tracked table in scope, and the SQL pieces that name them.

Shared by the planner (plan), the key and unique-key checks (keys, unique), the
writer (apply) and the `--sql` script (script), so none of them imports another
for these names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..capture.history import TableInfo
from ..errors import SidecarError


@dataclass
class Column:
    name: str
    type_name: str
    comparable: bool  # a btree equality that means the same value; otherwise compared as text
    identity_always: bool


@dataclass
class TablePlan:
    info: TableInfo
    columns: list[Column]
    skipped_columns: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    single_op: str | None = None  # 'I', 'U' or 'D' when one statement in scope wrote the table
    rows: int = 0  # rows of the table the scope changed

    @property
    def table(self) -> str:
        return self.info.table

    @property
    def suffix(self) -> str:
        return str(self.info.tracked_id)

    @property
    def ident(self) -> sql.Identifier:
        """The table as an identifier for composed SQL."""
        return sql.Identifier(*split_name(self.info.table))


def server_step(conn: psycopg.Connection, plan: TablePlan, op: str, run_id: uuid.UUID,
                args: dict[str, Any] | None = None) -> int:
    """One step of the undo of a table done by its undo function, sidecar.undo_<id> (fn_undo.sql).

    That function runs with the table owner's rights and reads the values it
    writes from the history itself, so an operator holding sidecar_undoer alone
    can undo; the plan's temporary tables it makes are the owner's, readable here.
    """
    try:
        return conn.execute(
            sql.SQL("SELECT sidecar.{}(%s, %s, %s)").format(sql.Identifier(f"undo_{plan.suffix}")),
            (op, run_id, Jsonb(args or {})),
        ).fetchone()[0]
    except psycopg.errors.UndefinedFunction:
        raise SidecarError(
            f"table {plan.table} has no undo function yet (tracked before sidecar had them); nothing was changed. "
            f"Its owner runs: sidecar track {plan.table} (or sidecar install)"
        ) from None


def quoted(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def temp_table(prefix: str, plan: TablePlan) -> sql.Identifier:
    return sql.Identifier(f"_sc_{prefix}_{plan.suffix}")


def key_join(left: str, right: str, plan: TablePlan) -> sql.Composable:
    """The two aliases name the same row: equal key columns."""
    return sql.SQL(" AND ").join(
        sql.SQL("{l}.{c} = {r}.{c}").format(l=quoted(left), r=quoted(right), c=quoted(c)) for c in plan.info.pk_columns
    )




def split_name(table: str) -> tuple[str, ...]:
    """Split a regclass text (possibly quoted, possibly qualified) into identifiers."""
    parts, cur, quoted, i = [], "", False, 0
    while i < len(table):
        ch = table[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(table) and table[i + 1] == '"':
                    cur += '"'
                    i += 1
                else:
                    quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return tuple(parts)
