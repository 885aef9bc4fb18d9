"""Track and untrack tables: the capture triggers themselves are rendered in the database."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ..errors import SidecarError, UsageError


@dataclass(frozen=True)
class TrackedTable:
    tracked_id: int
    table: str
    capture: str
    pk_columns: list[str]
    label_column: str | None
    display_name: str | None
    log_table: str
    active: bool
    capture_mode: str = "statement"


def _raise_clean(exc: psycopg.Error) -> None:
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if diag.message_hint:
        message = f"{message}. {diag.message_hint}"
    if diag.sqlstate in {"42P01", "3F000", "42602"}:  # no such table/schema, bad name
        raise UsageError(message.replace('relation "', 'table "') + "; check the name (schema-qualified, quoted if mixed-case)") from None
    if (diag.sqlstate or "").startswith("SC"):
        raise UsageError(message.removeprefix("sidecar: ")) from None
    raise SidecarError(message) from None


def regclass(conn: psycopg.Connection, table: str) -> str:
    """The table's canonical (quoted, qualified when needed) name, or a UsageError."""
    try:
        row = conn.execute("SELECT sidecar._qualname(to_regclass(%s))", (table,)).fetchone()
    except psycopg.errors.InvalidName:
        # to_regclass raises (not NULL) on text that is no name at all, such as
        # an unquoted `Order Items`: say which name and how to quote it.
        raise UsageError(
            f"{table!r} is not a valid table name; mixed-case names and names with spaces go in "
            'double quotes, e.g. \'"Order Items"\'') from None
    except psycopg.Error as exc:
        _raise_clean(exc)
    if row is None or row[0] is None:
        raise UsageError(
            f"table {table} does not exist; check the name (schema-qualified, "
            'mixed-case names in double quotes, e.g. \'"Order Items"\')'
        )
    return row[0]


def track(
    conn: psycopg.Connection,
    table: str,
    *,
    capture: str = "tagged",
    capture_mode: str | None = None,
    label_column: str | None = None,
    display_name: str | None = None,
    owner: str | None = None,
    risk: str | None = None,
    kind: str | None = None,
) -> TrackedTable:
    """Track TABLE; owner, risk (low|medium|high) and kind (draft|final) fill its inventory entry
    (None leaves a field as it was, owner '' clears it). capture_mode: 'statement' or 'row'
    (None: a tracked table keeps its mode, a new one takes the setting sidecar.capture_mode,
    else 'statement')."""
    name = regclass(conn, table)
    try:
        with conn.transaction():
            conn.execute(
                "SELECT sidecar.track(%s::regclass, %s, %s, %s, %s)",
                (name, capture, label_column, display_name, capture_mode)
            )
            if owner is not None or risk is not None or kind is not None:
                conn.execute("SELECT sidecar.set_table_info(%s::regclass, %s, %s, %s)", (name, owner, risk, kind))
    except psycopg.Error as exc:
        _raise_clean(exc)
    return get(conn, name)


def undo_function_owner_needed(conn: psycopg.Connection, table: str) -> str | None:
    """The table's owner when the table has no undo function (sidecar.undo_<id>, made when its
    owner tracks it), else None: undoers cannot restore it until that owner tracks it again."""
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner) FROM sidecar.tracked t JOIN pg_class c ON c.oid = t.relid "
        "WHERE t.relid = %s::regclass "
        "AND to_regprocedure(format('sidecar.%%I(text, uuid, jsonb)', 'undo_' || t.tracked_id)) IS NULL",
        (table,),
    ).fetchone()
    return row[0] if row else None


def untrack(conn: psycopg.Connection, table: str) -> None:
    name = regclass(conn, table)
    try:
        with conn.transaction():
            conn.execute("SELECT sidecar.untrack(%s::regclass)", (name,))
    except psycopg.Error as exc:
        _raise_clean(exc)


_COLUMNS = (
    "tracked_id, sidecar._qualname(relid), capture, pk_columns::text[], label_column, display_name, log_table, active, capture_mode"
)


def get(conn: psycopg.Connection, table: str) -> TrackedTable:
    name = regclass(conn, table)
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM sidecar.tracked WHERE relid = %s::regclass", (name,)
    ).fetchone()
    if row is None:
        raise UsageError(f"table {name} is not tracked; run: sidecar track {name}")
    return TrackedTable(*row)


def list_tracked(conn: psycopg.Connection, *, include_inactive: bool = False) -> list[TrackedTable]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM sidecar.tracked WHERE active OR %s ORDER BY 2",
        (include_inactive,),
    ).fetchall()
    return [TrackedTable(*r) for r in rows]


@dataclass(frozen=True)
class Follower:
    """An untracked table whose rows a foreign key's action changes along with a tracked table's."""
    parent: str
    child: str
    on_delete: str | None  # CASCADE | SET NULL | SET DEFAULT, or None (no action)
    on_update: str | None

    @property
    def actions(self) -> str:
        """The actions as written in SQL: ON DELETE CASCADE, ON UPDATE SET NULL."""
        return ", ".join(f"ON {event} {action}" for event, action in (("DELETE", self.on_delete),
                                                                     ("UPDATE", self.on_update)) if action)


def untracked_followers(conn: psycopg.Connection, parents: list[str] | None = None) -> list[Follower]:
    """Foreign keys from untracked tables whose actions change their rows when rows of the
    parents (default: every tracked table) are deleted or change key: undo cannot put those back."""
    return [Follower(*row) for row in conn.execute(
        """
        SELECT sidecar._qualname(con.confrelid), sidecar._qualname(con.conrelid),
               CASE con.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END,
               CASE con.confupdtype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END
        FROM pg_constraint con
        WHERE con.contype = 'f' AND con.conparentid = 0 AND con.conrelid <> con.confrelid
          AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd'))
          AND con.conrelid NOT IN (SELECT relid FROM sidecar.tracked WHERE active)
          AND CASE WHEN %(parents)s::text[] IS NULL
                   THEN con.confrelid IN (SELECT relid FROM sidecar.tracked WHERE active)
                   ELSE sidecar._qualname(con.confrelid) = ANY(%(parents)s::text[]) END
        ORDER BY 2, 1
        """,
        {"parents": parents},
    ).fetchall()]

