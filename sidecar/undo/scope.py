"""What an undo covers: a run, some of its actions, or single rows (`--row TABLE:KEY`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..capture.tracking import get as get_tracked
from ..errors import UsageError
from ..steps import runs as runs_mod


@dataclass
class Scope:
    run_id: uuid.UUID
    actions: list[str] = field(default_factory=list)
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "rows" if self.rows else "actions" if self.actions else "run"



def parse_row(spec: str) -> tuple[str, dict[str, Any] | str]:
    """`tickets:42` or `order_items:{"order_id":1,"line":2}` -> (table, key)."""
    # A JSON key is recognised by its opening brace: splitting at the last ':'
    # would cut a malformed key such as tickets:{"id": 42 inside the JSON.
    table, sep, key = _split_json_row(spec) if ":{" in spec else spec.rpartition(":")
    if not sep or not table or key == "":
        raise UsageError(f'--row {spec!r} is not TABLE:KEY; for example tickets:42 or order_items:{{"order_id":1,"line":2}}')
    key = key.strip()
    if key.startswith("{"):
        try:
            parsed = json.loads(key)
        except json.JSONDecodeError:
            raise UsageError(f"--row {spec!r}: the composite key is not valid JSON") from None
        if not isinstance(parsed, dict) or not parsed:
            raise UsageError(f"--row {spec!r}: the composite key must be a JSON object of key columns")
        return table, parsed
    return table, key


def _split_json_row(spec: str) -> tuple[str, str, str]:
    i = spec.find(":{")
    if i < 0:
        return "", "", ""
    return spec[:i], ":", spec[i + 1:]


def _resolve_rows(conn: psycopg.Connection, specs: list[str]) -> list[tuple[str, dict[str, Any]]]:

    out = []
    for spec in specs:
        table, key = parse_row(spec)
        tracked = get_tracked(conn, table)
        if isinstance(key, str):
            if len(tracked.pk_columns) != 1:
                raise UsageError(
                    f"--row {spec}: {tracked.table} has a composite key ({', '.join(tracked.pk_columns)}); "
                    'give it as JSON, e.g. ' + tracked.table + ':{' + ",".join(f'"{c}":…' for c in tracked.pk_columns) + "}"
                )
            key = {tracked.pk_columns[0]: key}
        out.append((tracked.table, key))
    return out


def make_scope(conn: psycopg.Connection, run_ref: str, actions: list[str] | None = None,
               rows: list[str] | None = None) -> Scope:
    run_id = runs_mod.resolve(conn, run_ref)
    return Scope(run_id, list(actions or []), _resolve_rows(conn, list(rows or [])))
