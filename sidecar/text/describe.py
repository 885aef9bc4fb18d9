"""Plain language for changes, runs and conflicts: what a person reads instead of JSON."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

MAX_VALUE = 60


def value(v: Any, limit: int = MAX_VALUE) -> str:
    """A value as a person reads it: strings quoted, NULL as 'empty', long values cut."""
    if v is None:
        return "empty"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float, Decimal)):
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


def change_line(change, labels=None) -> str:
    """One change: `tickets #42: status 'needs review' -> 'resolved'`; with a page's labels
    (capture.labels), records named: `tickets "Northwind Systems: …" (#42): customer_id empty ->
    customer Northwind Solar (#2)`."""
    image = change.after or change.before
    if labels is None:
        label = row_label(change.table, change.key, image, change.label_column, change.display_name)
    else:
        label = row_name(change.table, change.key, image, labels, change.label_column, change.display_name)
    pk = list(change.key)

    def shown(c: str, v: Any) -> str:
        return value(v) if labels is None else named_value(change.table, c, v, labels)

    if change.op in ("I", "D"):
        image = change.after if change.op == "I" else change.before
        fields = [f"{k} {shown(k, v)}" for k, v in image.items() if k not in pk and v is not None]
        listed = ", ".join(fields[:6]) + (", …" if len(fields) > 6 else "")
        return f"{label}: added ({listed})" if change.op == "I" else f"{label}: deleted (was {listed})"
    parts = [f"{c} {shown(c, change.before.get(c))} -> {shown(c, change.after.get(c))}"
             for c in change.changed_columns]
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


# -- records named ------------------------------------------------------------------
# With a page's labels (capture.labels.Labels): a row by its own label and its key,
# a foreign-key value by the label of the row it points at, times and numbers as people
# read them. The raw values stay one click (or --json) away.

_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}(:?\d{2})?|Z)$")


def as_time(v: Any) -> datetime | None:
    """A timestamp with time zone as captured in JSON (2026-12-01T06:38:00+00:00), else None."""
    if isinstance(v, str) and _ISO_TIME.match(v):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def when(t: datetime) -> str:
    """2026-12-01 06:38 UTC; with its seconds when it has any, so two times a minute apart read apart."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC" if t.second or t.microsecond else "%Y-%m-%d %H:%M UTC")


def human(v: Any, limit: int = MAX_VALUE) -> str:
    """A value for a sentence: times as 2026-12-01 06:38 UTC, numbers unquoted, the rest as value()."""
    t = as_time(v)
    if t is not None:
        return when(t)
    return value(v, limit)


def row_name(table: str, key: dict[str, Any], image: dict[str, Any] | None, labels=None,
             label_column: str | None = None, display_name: str | None = None) -> str:
    """`tickets "Northwind Systems: invoice NS-2291 charged twice" (#42)`: the label and the key."""
    column = labels.label_column(table, label_column) if labels is not None else label_column
    name = table_name(table, display_name)
    keyed = (f"#{next(iter(key.values()))}" if len(key) == 1
             else ", ".join(f"{k} {value(v)}" for k, v in key.items()))
    if column and image and image.get(column) not in (None, ""):
        return f'{name} "{value(image[column], 80).strip(chr(39))}" ({keyed})'
    return f"{name} {keyed}" if len(key) == 1 else f"{name} ({keyed})"


def named_value(table: str, column: str, v: Any, labels=None, limit: int = MAX_VALUE) -> str:
    """A column's value as a person reads it: `customer Northwind Solar (#2)` for a foreign key."""
    if labels is not None:
        found = labels.named(table, column, v)
        if found:
            return found
    return human(v, limit)


def named_sentence(change, labels=None) -> str:
    """change_sentence with records named: `Changed customer_id of tickets "Northwind Systems: …" (#42)
    from empty to customer Northwind Solar (#2)`."""
    image = change.after or change.before
    label = row_name(change.table, change.key, image, labels, change.label_column, change.display_name)
    if change.op == "I":
        shown = [f"{k} {named_value(change.table, k, v, labels)}" for k, v in change.after.items()
                 if k not in change.key and v is not None]
        return f"Added {label} (" + ", ".join(shown[:6]) + (", …" if len(shown) > 6 else "") + ")"
    if change.op == "D":
        return f"Deleted {label}"
    parts = [f"{c} of {label} from {named_value(change.table, c, change.before.get(c), labels)} "
             f"to {named_value(change.table, c, change.after.get(c), labels)}" for c in change.changed_columns]
    return "Changed " + "; ".join(parts)


def agree(n: int, singular: str, plural_form: str) -> str:
    """The verb that goes with n: agree(1, 'waits', 'wait')."""
    return singular if n == 1 else plural_form


# -- held changes ---------------------------------------------------------------------

def _held_value(v: Any) -> str:
    return str(v) if isinstance(v, Decimal) else human(v)


def _held_fields(item, image: dict[str, Any], labels=None) -> str:
    shown = [named_value(item.table, k, v, labels) if labels is not None and labels.named(item.table, k, v)
             else f"{k.replace('_', ' ')} {_held_value(v)}"
             for k, v in image.items() if k not in item.key and v is not None]
    return ", ".join(shown[:6]) + (", …" if len(shown) > 6 else "")


def held_change(item, labels=None) -> str:
    """A held change (review.held.HeldChange) as a sentence: `Set refund amount of invoices #17
    from 0 to 900`; with a page's labels, records named: `Add refund #1 (ticket "Acme: invoice
    charged twice" (#41), amount 900.00)`."""
    image = item.new_row or item.old_row
    if labels is None:
        label = row_label(item.table, item.key, image, item.label_column, item.display_name)
    else:
        label = row_name(item.table, item.key, image, labels, item.label_column, item.display_name)

    def shown(c: str, v: Any) -> str:
        named = labels.named(item.table, c, v) if labels is not None else None
        return named or _held_value(v)

    if item.op == "I":
        return f"Add {label} ({_held_fields(item, item.new_row or {}, labels)})"
    if item.op == "D":
        return f"Delete {label} (was {_held_fields(item, item.old_row or {}, labels)})"
    parts = [f"{c.replace('_', ' ')} from {shown(c, item.old_row.get(c))} to {shown(c, item.new_row.get(c))}"
             for c in changed_columns(item.old_row, item.new_row)]
    if not parts:
        return f"Rewrite {label} unchanged"
    parts[0] = parts[0].replace(" from ", f" of {label} from ", 1)
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return "Set " + listed
