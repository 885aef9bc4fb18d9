"""Context on an action: why the automation did it, what it read, how sure it was.

    with run.action("refund:ticket-42", why="charged twice for one invoice",
                    read=[sidecar.row("tickets", 42), "email: I was charged twice"],
                    confidence=0.62, model="gpt-x"):
        conn.execute("UPDATE refunds ...")

Stored on the action by the SQL function ``sidecar.set_context`` (sql/functions/fn_context.sql),
merged when set twice (the later key wins). ``read`` holds references to rows (``row(table, key)``)
and short texts; each item is at most 4 kB as JSON, the whole context at most 64 kB per action.
Text from a model is data: stored as given, shown escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from numbers import Real
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import UsageError

# The limits sql/functions/fn_context.sql enforces (sidecar._context_limits()).
MAX_CONTEXT_BYTES = 65536
MAX_READ_ITEM_BYTES = 4096


class ContextError(UsageError, ValueError):
    """A context the database would refuse (SQLSTATE SC010): names the field."""


def row(table: str, key: Any, **more: Any) -> dict[str, Any]:
    """A reference to a row the model read, for ``read=[...]``: ``row("tickets", 42)``.

    ``key`` is the primary key's value, or a dict for a composite key (``{"order_id": 1, "line": 2}``).
    Shown as ``tickets #42 "label"`` when the table is tracked with a label column.
    """
    return {"table": table, "key": key, **more}


def _check(why: Any, read: Any, confidence: Any, extra: Mapping[str, Any]) -> None:
    """The mistakes a caller makes most, caught before a round trip (the database checks all of it)."""
    if why is not None and not isinstance(why, str):
        raise ContextError(f"context field why must be text, not {type(why).__name__}")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, (Real, Decimal)):
            raise ContextError(f"context field confidence must be a number from 0 to 1, not {confidence!r}")
        if math.isnan(float(confidence)) or not 0 <= float(confidence) <= 1:
            raise ContextError(f"context field confidence must be a number from 0 to 1, not {confidence!r}")
    if read is not None and not isinstance(read, (list, tuple)):
        raise ContextError(f"context field read must be a list, not {type(read).__name__}")
    for name in ("why", "read", "confidence"):
        if name in extra:
            raise ContextError(f"context field {name} is given twice (as a keyword and in extra)")


def set_context(conn: psycopg.Connection, *, why: str | None = None, read: list | None = None,
                confidence: float | None = None, **extra: Any) -> None:
    """Merge context into the action this connection's writes are in now (sidecar.action, else the
    transaction's). Raises ContextError naming the field for bad input; nothing is stored then."""
    _check(why, read, confidence, extra)
    if why is None and read is None and confidence is None and not extra:
        return
    try:
        # A savepoint: a refused context leaves the caller's transaction usable.
        with conn.transaction():
            conn.execute(
                "SELECT sidecar.set_context(%s, %s, %s, %s)",
                (why, Jsonb(list(read)) if read is not None else None,
                 float(confidence) if confidence is not None else None, Jsonb(dict(extra)) if extra else None),
            )
    except psycopg.Error as exc:
        if exc.sqlstate in ("SC010", "SC005", "SC003"):
            message = (exc.diag.message_primary or str(exc)).removeprefix("sidecar: ")
            if exc.diag.message_hint:
                message += f". {exc.diag.message_hint}"
            raise ContextError(message) from None
        raise
    except TypeError as exc:  # a value JSON cannot hold
        raise ContextError(f"context must be JSON: {exc}") from None


def for_item(item: Any, context: Mapping[str, Any]) -> dict[str, Any]:
    """The context of one item of ``run.steps``: each value may be a callable of the item."""
    return {name: value(item) if callable(value) else value for name, value in context.items()}
