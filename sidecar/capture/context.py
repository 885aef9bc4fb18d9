"""Reading the context of actions back: the model's reason, what it read, how sure it was.

What an automation set with ``sidecar.set_context`` (``run.action(why=..., read=[...],
confidence=...)``, see sidecar/steps/context.py) is stored in ``sidecar.actions.context``. Here it
is read for ``show``, the queue and the console: a reference to a row in ``read`` is shown as
``tickets #42 "Northwind Systems: invoice charged twice"``, with the current value of its table's
label column when the table is tracked with one. Text is returned as stored; whoever prints it
escapes it (the console's templates do).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..text import describe

# Labels looked up per call at most (each is one query by primary key).
MAX_LABELS = 200


@dataclass
class ReadItem:
    """One thing the model read: a row (table and key) or a short text."""

    text: str  # as people read it: `tickets #42 "Northwind ..."` or `"email: I was charged twice"`
    item: Any  # as stored
    table: str | None = None
    key: Any = None
    label: str | None = None


@dataclass
class Context:
    why: str | None = None
    read: list[ReadItem] = field(default_factory=list)
    confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """`Why: ...`, `Read: ...` (one per item), `Confidence: 0.62`, then the other keys."""
        out = []
        if self.why is not None:
            out.append(f"Why: {self.why}")
        for item in self.read:
            out.append(f"Read: {item.text}")
        if self.confidence is not None:
            out.append(f"Confidence: {self.confidence:g}")
        for k, v in sorted(self.extra.items()):
            out.append(f"{k}: {describe.value(v, 200).strip(chr(39))}")
        return out


@dataclass
class _Table:
    name: str
    relname: str
    pk_columns: list[str]
    label_column: str | None
    display_name: str | None


def _tracked(conn: psycopg.Connection) -> list[_Table]:
    rows = conn.execute(
        "SELECT sidecar._qualname(t.relid), c.relname, t.pk_columns::text[], t.label_column, t.display_name "
        "FROM sidecar.tracked t JOIN pg_catalog.pg_class c ON c.oid = t.relid"
    ).fetchall()
    return [_Table(*r) for r in rows]


def _find(tables: list[_Table], name: str) -> _Table | None:
    """A tracked table by the name the automation gave: qualified, or its bare name when only one has it."""
    exact = [t for t in tables if t.name == name or t.name == f"public.{name}"]
    if exact:
        return exact[0]
    bare = [t for t in tables if t.relname == name]
    return bare[0] if len(bare) == 1 else None


def _key_dict(table: _Table, key: Any) -> dict[str, Any] | None:
    if isinstance(key, dict):
        return key if set(key) == set(table.pk_columns) else None
    if len(table.pk_columns) == 1 and not isinstance(key, (list, dict)):
        return {table.pk_columns[0]: key}
    return None


def _label(conn: psycopg.Connection, table: _Table, key: dict[str, Any]) -> str | None:
    """The row's label column now (None: no label column, no such row, or not readable by this role)."""
    if not table.label_column:
        return None
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{c}::text = {v}").format(c=sql.Identifier(c), v=sql.Literal(str(v))) for c, v in key.items()
    )
    # table.name is sidecar._qualname() of a table that exists: quoted by format('%I.%I') in the database.
    query = sql.SQL("SELECT t.{label}::text FROM {table} t WHERE {match} LIMIT 1").format(
        label=sql.Identifier(table.label_column), table=sql.SQL(table.name), match=match)
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_item(conn: psycopg.Connection, item: Any, tables: list[_Table], budget: list[int]) -> ReadItem:
    if isinstance(item, str):
        return ReadItem(text=f'"{_cut(item, 300)}"', item=item)
    if isinstance(item, dict) and "table" in item:
        found = _find(tables, str(item["table"]))
        key = _key_dict(found, item.get("key")) if found else None
        name = describe.table_name(found.name, found.display_name) if found else str(item["table"])
        raw_key = item.get("key")
        shown_key = (f"#{next(iter(key.values()))}" if key and len(key) == 1
                     else f"#{raw_key}" if not isinstance(raw_key, (dict, list))
                     else "(" + ", ".join(f"{k} {describe.value(v)}" for k, v in (raw_key or {}).items()) + ")"
                     if isinstance(raw_key, dict) else json.dumps(raw_key))
        label = None
        if found and key and budget[0] > 0:
            budget[0] -= 1
            label = _label(conn, found, key)
        text = f"{name} {shown_key}" + (f' "{label}"' if label not in (None, "") else "")
        note = item.get("note") or item.get("text")
        if note:
            text += f" ({_cut(str(note), 200)})"
        return ReadItem(text=text, item=item, table=found.name if found else str(item["table"]),
                        key=raw_key, label=label)
    if isinstance(item, dict) and "text" in item:
        source = item.get("source")
        text = f'"{_cut(str(item["text"]), 300)}"'
        return ReadItem(text=f"{source}: {text}" if source else text, item=item)
    return ReadItem(text=describe.value(item, 300), item=item)


def parse(conn: psycopg.Connection, stored: dict[str, Any] | None, *, tables: list[_Table] | None = None,
          budget: list[int] | None = None) -> Context | None:
    """A stored context (sidecar.actions.context) as a Context, row references labelled."""
    if not stored:
        return None
    tables = _tracked(conn) if tables is None else tables
    budget = [MAX_LABELS] if budget is None else budget
    read = stored.get("read") if isinstance(stored.get("read"), list) else []
    confidence = stored.get("confidence")
    return Context(
        why=stored.get("why"),
        read=[_read_item(conn, item, tables, budget) for item in read],
        confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
        extra={k: v for k, v in stored.items() if k not in ("why", "read", "confidence")},
    )


def of_actions(conn: psycopg.Connection, run_id: uuid.UUID, keys: list[str] | None = None) -> dict[str, Context]:
    """The context of the run's actions (those named, else all that have one), by action key."""
    rows = conn.execute(
        "SELECT key, context FROM sidecar.actions WHERE run_id = %s AND context IS NOT NULL "
        "AND (%s::text[] IS NULL OR key = ANY(%s::text[])) ORDER BY action_id LIMIT 10000",
        (run_id, keys, keys),
    ).fetchall()
    if not rows:
        return {}
    tables, budget = _tracked(conn), [MAX_LABELS]
    return {key: parse(conn, stored, tables=tables, budget=budget) for key, stored in rows}


def of_action_ids(conn: psycopg.Connection, action_ids: list[int]) -> dict[int, Context]:
    """The context of these actions (any run), by action id: for the queue."""
    rows = conn.execute("SELECT action_id, context FROM sidecar.actions WHERE action_id = ANY(%s) "
                        "AND context IS NOT NULL", (list(set(action_ids)),)).fetchall()
    if not rows:
        return {}
    tables, budget = _tracked(conn), [MAX_LABELS]
    return {action_id: parse(conn, stored, tables=tables, budget=budget) for action_id, stored in rows}
