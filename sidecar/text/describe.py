"""Plain language for changes, runs and conflicts: what a person reads instead of JSON."""

from __future__ import annotations

import json
from typing import Any

MAX_VALUE = 60


def value(v: Any, limit: int = MAX_VALUE) -> str:
    """A value as a person reads it: strings quoted, NULL as 'empty', long values cut."""
    if v is None:
        return "empty"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return str(v)
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'" if isinstance(v, str) else text


def changed_columns(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The columns whose value differs between two images of a row (none for an insert or delete)."""
    if before is None or after is None:
        return []
    return [c for c in after if before.get(c) != after.get(c)]


def table_name(table: str, display_name: str | None = None) -> str:
    if display_name:
        return display_name
    return table.removeprefix("public.")


def row_label(table: str, key: dict[str, Any], image: dict[str, Any] | None = None,
              label_column: str | None = None, display_name: str | None = None) -> str:
    """`tickets #42`, `customers "Northwind Solar"`, `order_items (order_id 1, line 2)`."""
    name = table_name(table, display_name)
    if label_column and image and image.get(label_column) not in (None, ""):
        return f'{name} "{image[label_column]}"'
    if len(key) == 1:
        return f"{name} #{next(iter(key.values()))}"
    return f"{name} (" + ", ".join(f"{k} {value(v)}" for k, v in key.items()) + ")"


def _fields(image: dict[str, Any], skip: list[str]) -> str:
    shown = [f"{k} {value(v)}" for k, v in image.items() if k not in skip and v is not None]
    return ", ".join(shown[:6]) + (", …" if len(shown) > 6 else "")


def change_line(change) -> str:
    """One change: `tickets #42: status 'needs review' -> 'resolved'`."""
    image = change.after or change.before
    label = row_label(change.table, change.key, image, change.label_column, change.display_name)
    pk = list(change.key)
    if change.op == "I":
        return f"{label}: added ({_fields(change.after, pk)})"
    if change.op == "D":
        return f"{label}: deleted (was {_fields(change.before, pk)})"
    parts = [f"{c} {value(change.before.get(c))} -> {value(change.after.get(c))}" for c in change.changed_columns]
    return f"{label}: " + ", ".join(parts)


def change_sentence(change) -> str:
    """One change as a sentence: `Changed status of tickets #42 from 'needs review' to 'resolved'`."""
    image = change.after or change.before
    label = row_label(change.table, change.key, image, change.label_column, change.display_name)
    if change.op == "I":
        return f"Added {label} ({_fields(change.after, list(change.key))})"
    if change.op == "D":
        return f"Deleted {label}"
    parts = [f"{c} of {label} from {value(change.before.get(c))} to {value(change.after.get(c))}"
             for c in change.changed_columns]
    return "Changed " + "; ".join(parts)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
