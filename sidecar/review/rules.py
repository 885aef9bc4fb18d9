"""Hold rules: which automation writes wait for a person (compiled into the table's hold trigger).

A predicate is an expression over the table's OLD and NEW rows, such as
``NEW.amount > 500`` or ``OLD.status = 'paid' AND NEW.status IS DISTINCT FROM OLD.status``.
It is parsed with sqlglot and checked against an allow-list before anything
reaches the database: column references (``NEW.col`` / ``OLD.col``, checked
against the table's columns), literals, comparison, boolean and arithmetic
operators, IS [NOT] NULL, IN lists, BETWEEN, [I]LIKE, casts to plain types and
a few immutable functions. Anything else (a subquery, a second statement, any
other function) is refused with one line saying what. The checked tree is
rendered back by sqlglot with quoted column names: that text, not the user's,
is compiled into the trigger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from ..capture.tracking import regclass
from ..errors import SidecarError, UsageError

# Immutable functions a predicate may call, by sqlglot class, with the name people write.
ALLOWED_FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.Lower: "lower", exp.Upper: "upper", exp.Abs: "abs", exp.Coalesce: "coalesce",
    exp.Length: "length", exp.Trim: "trim", exp.Round: "round", exp.Floor: "floor",
    exp.Ceil: "ceil", exp.Greatest: "greatest", exp.Least: "least", exp.Nullif: "nullif",
}

# Operators and leaves, by sqlglot class.
_ALLOWED_NODES: set[type[exp.Expression]] = {
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ,
    exp.And, exp.Or, exp.Not,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.DPipe,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike,
    exp.Cast, exp.DataType, exp.DataTypeParam,
}

# Casts to these types only: a cast to any other type may run that type's own code.
_PLAIN_TYPES = {
    exp.DataType.Type.SMALLINT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT,
    exp.DataType.Type.DECIMAL, exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE,
    exp.DataType.Type.TEXT, exp.DataType.Type.VARCHAR, exp.DataType.Type.CHAR,
    exp.DataType.Type.BOOLEAN, exp.DataType.Type.DATE, exp.DataType.Type.TIME,
    exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.INTERVAL,
    exp.DataType.Type.UUID,
}

_ROW_NAMES = {"new": "NEW", "old": "OLD"}

# The dollar-quote tag of the rendered hold function (triggers/hold.sql).
_FUNCTION_QUOTE = "$hold$"


@dataclass(frozen=True)
class Rule:
    rule_id: int
    table: str
    kind: str
    predicate: str | None
    max_rows: int | None
    automation: str | None
    reason: str
    created_by: str
    created_at: datetime
    active: bool

    @property
    def condition(self) -> str:
        """What the rule holds: `when NEW."amount" > 500`, `more than 100 rows in one statement`."""
        if self.max_rows is None:
            text = f"when {self.predicate}"
        elif self.predicate:
            text = f"more than {self.max_rows} rows where {self.predicate} in one statement"
        else:
            text = f"more than {self.max_rows} rows in one statement"
        return text + (f" (automation {self.automation} only)" if self.automation else "")


def _one_line(message: str) -> str:
    return " ".join(message.split())


_CALLED = re.compile(r"([A-Za-z_][A-Za-z0-9_$]*)\s*\(")


def _called_name(node: exp.Func, text: str | None) -> str:
    """The function's name as the user wrote it (sqlglot's class names another dialect's: random() is Rand)."""
    names = {node.name.lower()} if isinstance(node, exp.Anonymous) else set()
    names |= {n.lower() for n in getattr(type(node), "_sql_names", [])} | {node.sql_name().lower()}
    rendered = node.sql(dialect="postgres").split("(")[0].strip().lower()
    names.add(rendered)
    written = [m.group(1) for m in _CALLED.finditer(text or "")]
    for name in written:
        if name.lower() in names:
            return name
    unknown = [n for n in written if n.lower() not in set(ALLOWED_FUNCTIONS.values()) | {"in", "cast"}]
    return unknown[0] if len(unknown) == 1 else rendered


def _node_name(node: exp.Expression, text: str | None = None) -> str:
    if isinstance(node, exp.Func):
        return f"function {_called_name(node, text)}()"
    if isinstance(node, (exp.Subquery, exp.Query)):
        return "a subquery"
    return type(node).__name__


def _check_node(node: exp.Expression, columns: set[str], table: str, text: str | None = None) -> None:
    # Exact classes, not isinstance: a subclass of an allowed node is another construct.
    kind = type(node)
    if isinstance(node, (exp.Subquery, exp.Query, exp.Exists)):
        raise UsageError("--when must not contain a subquery: a rule looks at the written row only")
    if kind in ALLOWED_FUNCTIONS:
        return
    if kind not in _ALLOWED_NODES:
        if isinstance(node, exp.Func):
            allowed = ", ".join(sorted(ALLOWED_FUNCTIONS.values()))
            raise UsageError(f"--when must not call {_node_name(node, text)}; allowed functions: {allowed}")
        raise UsageError(
            f"--when must not use {_node_name(node)} ({node.sql(dialect='postgres')}); use column references "
            "NEW.col / OLD.col, literals, comparisons, AND/OR/NOT, arithmetic, IS NULL, IN (...), BETWEEN, "
            "LIKE, casts and the allowed functions"
        )
    if isinstance(node, exp.In) and any(node.args.get(k) for k in ("query", "unnest", "field")):
        raise UsageError("--when may use IN with a list of values only, e.g. NEW.status IN ('open', 'paid')")
    if isinstance(node, exp.Cast):
        to = node.to
        if to.this not in _PLAIN_TYPES or to.args.get("nested"):
            raise UsageError(f"--when must not cast to {to.sql(dialect='postgres')}; cast to plain types only "
                             "(int, bigint, numeric, text, boolean, date, timestamp, timestamptz, interval, uuid)")
    if isinstance(node, exp.Literal) and node.is_string:
        if "\\" in node.this:
            raise UsageError("--when must not contain a backslash in a text literal")
        if _FUNCTION_QUOTE in node.this:
            raise UsageError(f"--when must not contain the text {_FUNCTION_QUOTE}")
    if isinstance(node, exp.Column):
        _check_column(node, columns, table)


def _check_column(node: exp.Column, columns: set[str], table: str) -> None:
    if isinstance(node.this, exp.Star):
        raise UsageError("--when must name columns (NEW.amount), not NEW.*")
    if node.args.get("db") or node.args.get("catalog"):
        raise UsageError(f"--when: {node.sql(dialect='postgres')} is not a column of NEW or OLD")
    row = node.args.get("table")
    if row is None:
        raise UsageError(f"--when: write NEW.{node.name} or OLD.{node.name}, not {node.name} alone "
                         "(NEW is the row being written, OLD the row as it was)")
    if row.name.lower() not in _ROW_NAMES:
        raise UsageError(f"--when: {node.sql(dialect='postgres')} refers to {row.name}; only NEW and OLD "
                         f"(the row being written and the row as it was) may be used")
    name = _column_name(node.this)
    if name not in columns:
        known = sorted(columns)
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise UsageError(f"--when: table {table} has no column {name} ({_ROW_NAMES[row.name.lower()]}.{name}); "
                         f"its columns are: {listed}")


def _column_name(ident: exp.Identifier) -> str:
    """The name as PostgreSQL resolves it: unquoted names fold to lower case."""
    return ident.name if ident.quoted else ident.name.lower()


def compile_predicate(text: str, columns: set[str], table: str) -> str:
    """Check ``text`` and return it rendered for the trigger, e.g. ``NEW."amount" > 500``.

    Raises UsageError (one line) for anything outside the allow-list.
    """
    if not text or not text.strip():
        raise UsageError('--when needs an expression, e.g. --when "NEW.amount > 500"')
    try:
        statements = [s for s in sqlglot.parse(text, read="postgres") if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" (column {first['col']})" if first.get("col") else ""
        why = re.sub(r"<class '[\w.]+\.(\w+)'>", lambda m: m.group(1).upper(),
                     first.get("description") or _one_line(str(exc)))
        raise UsageError(f"--when {text!r} is not a valid expression{where}: {why}") from None
    except TokenError as exc:
        raise UsageError(f"--when {text!r} is not a valid expression: {_one_line(str(exc))}") from None
    if not statements:
        raise UsageError('--when needs an expression, e.g. --when "NEW.amount > 500"')
    if len(statements) > 1:
        raise UsageError(f"--when must be one expression, not {len(statements)} statements separated by ';'")
    tree = statements[0]
    if not isinstance(tree, exp.Condition) or isinstance(tree, (exp.Query, exp.DDL, exp.DML, exp.Command)):
        shown = _one_line(tree.sql(dialect="postgres"))[:60]
        raise UsageError(f"--when must be an expression, not a statement ({shown})")
    for node in tree.walk():
        _check_node(node, columns, table, text)

    def quote(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            row = _ROW_NAMES[node.args["table"].name.lower()]
            return exp.Column(this=exp.to_identifier(_column_name(node.this), quoted=True),
                              table=exp.to_identifier(row, quoted=False))
        return node

    rendered = tree.transform(quote).sql(dialect="postgres", comments=False)
    # The rendered text must itself pass: what is compiled is what was checked.
    again = sqlglot.parse(rendered, read="postgres")
    if len(again) != 1 or again[0] is None:
        raise SidecarError(f"--when {text!r} did not render back to one expression; please report this")
    for node in again[0].walk():
        _check_node(node, columns, table)
    return rendered


def table_columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def _sql_error(exc: psycopg.Error) -> SidecarError:
    message = _one_line((exc.diag.message_primary or str(exc)).removeprefix("sidecar: "))
    if exc.diag.message_hint:
        message += f". {exc.diag.message_hint}"
    if (exc.diag.sqlstate or "").startswith("SC"):
        return UsageError(message)
    return SidecarError(message)


def add_rule(
    conn: psycopg.Connection,
    table: str,
    *,
    when: str | None,
    reason: str,
    automation: str | None = None,
    max_rows: int | None = None,
) -> Rule:
    """Add a hold rule (``when`` a predicate, and/or ``max_rows`` per statement) and compile it."""
    name = regclass(conn, table)
    if when is None and max_rows is None:
        raise UsageError('a rule needs --when "NEW.col ..." or --max-rows N (or both)')
    if max_rows is not None and max_rows < 0:
        raise UsageError(f"--max-rows must be 0 or more, not {max_rows}")
    if not reason or not reason.strip():
        raise UsageError("a rule needs --reason: reviewers read it next to each held change")
    predicate = compile_predicate(when, table_columns(conn, name), name) if when is not None else None
    try:
        with conn.transaction():
            rule_id = conn.execute(
                "SELECT sidecar.add_rule(%s::regclass, %s, %s, %s, %s)",
                (name, predicate, reason, automation, max_rows),
            ).fetchone()[0]
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    return get_rule(conn, rule_id)


def drop_rule(conn: psycopg.Connection, rule_id: int) -> Rule:
    rule = get_rule(conn, rule_id)
    try:
        with conn.transaction():
            conn.execute("SELECT sidecar.drop_rule(%s)", (rule_id,))
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    return rule


_RULE_SELECT = (
    "SELECT r.rule_id, sidecar._qualname(t.relid), r.kind, r.predicate, r.max_rows, r.automation, r.reason, "
    "r.created_by, r.created_at, r.active FROM sidecar.rules r JOIN sidecar.tracked t USING (tracked_id)"
)


def get_rule(conn: psycopg.Connection, rule_id: int) -> Rule:
    row = conn.execute(_RULE_SELECT + " WHERE r.rule_id = %s", (rule_id,)).fetchone()
    if row is None:
        raise UsageError(f"there is no hold rule {rule_id}; sidecar rule list shows the rules")
    return Rule(*row)


def list_rules(conn: psycopg.Connection, *, include_dropped: bool = False) -> list[Rule]:
    rows = conn.execute(_RULE_SELECT + " WHERE r.active OR %s ORDER BY r.rule_id", (include_dropped,)).fetchall()
    return [Rule(*r) for r in rows]


def tables_missing_hold(conn: psycopg.Connection) -> list[str]:
    """Tracked tables with active rules but not all three hold triggers (e.g. tracked again since, or one
    dropped by hand): ``sidecar rule refresh`` puts them back."""
    rows = conn.execute(
        "SELECT DISTINCT sidecar._qualname(t.relid) FROM sidecar.rules r JOIN sidecar.tracked t USING (tracked_id) "
        "WHERE r.active AND t.active AND (SELECT count(*) FROM pg_catalog.pg_trigger g WHERE g.tgrelid = t.relid "
        "AND g.tgname IN ('sidecar_hold_insert', 'sidecar_hold_update', 'sidecar_hold_delete')) < 3 ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def refresh(conn: psycopg.Connection) -> list[str]:
    """Recompile the hold trigger of every tracked table with rules; returns the tables that hold."""
    held = []
    try:
        with conn.transaction():
            for tracked_id, table in conn.execute(
                "SELECT DISTINCT t.tracked_id, sidecar._qualname(t.relid) FROM sidecar.rules r "
                "JOIN sidecar.tracked t USING (tracked_id) WHERE t.active ORDER BY 2"
            ).fetchall():
                if conn.execute("SELECT sidecar._render_hold(%s)", (tracked_id,)).fetchone()[0]:
                    held.append(table)
    except psycopg.Error as exc:
        raise _sql_error(exc) from None
    return held
