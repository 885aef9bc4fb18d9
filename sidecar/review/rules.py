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

Two more forms read beyond the row (docs/rules.md):

- ``CONTEXT.confidence`` (a number), ``CONTEXT.why`` and ``CONTEXT.<key>`` (text): the context the
  automation set on the action it is in (``sidecar.set_context``), as it was when the row was
  written. A write without that key gives NULL, so ``CONTEXT.confidence < 0.8`` does not hold a
  write that says nothing (``CONTEXT.confidence IS NULL`` does). Compiled to
  ``sidecar._context_number('confidence')`` / ``sidecar._context_text('key')``.
- ``REF(customer_id).tier``: a column of the row that a declared foreign key of the table points
  to, by the key's columns (``REF(a, b).col`` for a composite key; ``REF(OLD.customer_id)`` follows
  the key as it was, for deletes). Only declared foreign keys can be followed, one hop; compiled to
  ``(SELECT p."tier" FROM "public"."customers" AS p WHERE p."id" = NEW."customer_id")`` and read
  with the rights of the hold function's owner (the role that adds rules), not the writer's.
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
_CONTEXT = "context"
_CONTEXT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ForeignKey:
    """A declared foreign key of the table: its columns, and the row they point to."""

    columns: tuple[str, ...]
    parent_schema: str
    parent_table: str
    parent_columns: tuple[str, ...]
    parent_all: frozenset[str]  # every column of the parent table

    @property
    def parent(self) -> str:
        return f"{self.parent_schema}.{self.parent_table}"

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
    # The predicate as its author wrote it (CONTEXT.confidence < 0.8), where it was recorded.
    written: str | None = None

    @property
    def condition(self) -> str:
        """What the rule holds: `when NEW."amount" > 500`, `more than 100 rows in one statement`."""
        shown = self.written or self.predicate
        if self.max_rows is None:
            text = f"when {shown}"
        elif self.predicate:
            text = f"more than {self.max_rows} rows where {shown} in one statement"
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
        raise UsageError("--when must not contain a subquery: a rule looks at the written row, CONTEXT.key "
                         "and REF(fk_column).col (the row a declared foreign key points to) only")
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


def _check_column(node: exp.Column, columns: set[str], table: str, context_allowed: bool = True) -> None:
    if isinstance(node.this, exp.Star):
        raise UsageError("--when must name columns (NEW.amount), not NEW.*")
    if node.args.get("db") or node.args.get("catalog"):
        raise UsageError(f"--when: {node.sql(dialect='postgres')} is not a column of NEW or OLD")
    row = node.args.get("table")
    if row is None:
        raise UsageError(f"--when: write NEW.{node.name} or OLD.{node.name}, not {node.name} alone "
                         "(NEW is the row being written, OLD the row as it was)")
    if row.name.lower() == _CONTEXT and context_allowed:
        if not _CONTEXT_KEY.match(node.this.name):
            raise UsageError(f"--when: CONTEXT.{node.this.name} is not a context key; keys are letters, digits "
                             "and _ (CONTEXT.confidence, CONTEXT.why, CONTEXT.model)")
        return
    if row.name.lower() not in _ROW_NAMES:
        raise UsageError(f"--when: {node.sql(dialect='postgres')} refers to {row.name}; only NEW and OLD "
                         f"(the row being written and the row as it was), CONTEXT (what the automation said "
                         f"about its action) and REF(fk_column).col (the row a foreign key points to) may be used")
    name = _column_name(node.this)
    if name not in columns:
        known = sorted(columns)
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise UsageError(f"--when: table {table} has no column {name} ({_ROW_NAMES[row.name.lower()]}.{name}); "
                         f"its columns are: {listed}")


def _column_name(ident: exp.Identifier) -> str:
    """The name as PostgreSQL resolves it: unquoted names fold to lower case."""
    return ident.name if ident.quoted else ident.name.lower()


def _is_ref(node: exp.Expression) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.lower() == "ref"


def _ref_key(node: exp.Dot, foreign_keys: list[ForeignKey], table: str) -> tuple[ForeignKey, str, str]:
    """Check REF(cols).col: the foreign key it follows, the row (NEW or OLD) and the parent's column."""
    ref = node.this
    args = ref.expressions
    if not args or not all(isinstance(a, exp.Column) and isinstance(a.this, exp.Identifier) for a in args):
        raise UsageError("--when: REF(...) takes the columns of a foreign key, e.g. REF(customer_id).tier")
    rows = {(a.args.get("table").name.lower() if a.args.get("table") else "new") for a in args}
    if len(rows) != 1 or not rows <= set(_ROW_NAMES) or any(a.args.get("db") for a in args):
        raise UsageError("--when: REF(...) follows NEW's key (REF(customer_id)) or OLD's (REF(OLD.customer_id)), "
                         "not a mix")
    names = tuple(_column_name(a.this) for a in args)
    matching = [fk for fk in foreign_keys if set(fk.columns) == set(names) and len(fk.columns) == len(names)]
    if not matching:
        declared = "; ".join(f"REF({', '.join(fk.columns)}) -> {fk.parent}" for fk in foreign_keys) or "none"
        raise UsageError(f"--when: REF({', '.join(names)}) does not follow a declared foreign key of {table}; "
                         f"only declared foreign keys can be followed (declared: {declared})")
    fk = matching[0]
    if not isinstance(node.expression, exp.Identifier):
        raise UsageError("--when: REF(...) must be followed by a column of the row it points to, e.g. .tier")
    column = _column_name(node.expression)
    if column not in fk.parent_all:
        listed = ", ".join(sorted(fk.parent_all)[:20])
        raise UsageError(f"--when: {fk.parent} has no column {column} (REF({', '.join(names)}).{column}); "
                         f"its columns are: {listed}")
    return fk, _ROW_NAMES[rows.pop()], column


def _check_tree(node: exp.Expression, columns: set[str], table: str, foreign_keys: list[ForeignKey],
                compiled: set[str] | None = None, text: str | None = None) -> None:
    """Check every node of the predicate. compiled: the rendered text is checked, where the
    sidecar-made forms (REF subqueries, CONTEXT calls) are allowed exactly as rendered, and CONTEXT
    and REF as the user writes them are not."""
    if compiled is not None and isinstance(node, (exp.Subquery, exp.Dot)) \
            and node.sql(dialect="postgres", comments=False) in compiled:
        return
    if compiled is None and isinstance(node, exp.Dot) and _is_ref(node.this):
        _ref_key(node, foreign_keys, table)
        return
    if compiled is None and _is_ref(node):
        raise UsageError("--when: REF(...) must be followed by a column of the row it points to, "
                         "e.g. REF(customer_id).tier")
    if isinstance(node, exp.Column):
        _check_column(node, columns, table, context_allowed=compiled is None)
    else:
        _check_node(node, columns, table, text)
    for child in node.iter_expressions():
        _check_tree(child, columns, table, foreign_keys, compiled, text)


def _parse_one(text: str) -> exp.Expression:
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
    return tree


def _ref_subquery(fk: ForeignKey, row: str, column: str) -> exp.Expression:
    """(SELECT p."col" FROM "schema"."parent" AS p WHERE p."pk" = NEW."fk" AND ...)"""
    match = [exp.EQ(this=exp.column(pc, table="p", quoted=True),
                    expression=exp.Column(this=exp.to_identifier(c, quoted=True),
                                          table=exp.to_identifier(row, quoted=False)))
             for c, pc in zip(fk.columns, fk.parent_columns)]
    select = (exp.select(exp.column(column, table="p", quoted=True))
              .from_(exp.table_(fk.parent_table, db=fk.parent_schema, quoted=True, alias="p"))
              .where(exp.and_(*match)))
    return exp.Subquery(this=select)


def _context_call(key: str) -> exp.Expression:
    function = "_context_number" if key == "confidence" else "_context_text"
    return exp.Dot(this=exp.to_identifier("sidecar"),
                   expression=exp.Anonymous(this=function, expressions=[exp.Literal.string(key)]))


def compile_predicate(text: str, columns: set[str], table: str,
                      foreign_keys: list[ForeignKey] | None = None) -> str:
    """Check ``text`` and return it rendered for the trigger, e.g. ``NEW."amount" > 500``.

    Raises UsageError (one line) for anything outside the allow-list.
    """
    foreign_keys = foreign_keys or []
    tree = _parse_one(text)
    _check_tree(tree, columns, table, foreign_keys, text=text)
    made: set[str] = set()

    def quote(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Dot) and _is_ref(node.this):
            fk, row, column = _ref_key(node, foreign_keys, table)
            out = _ref_subquery(fk, row, column)
        elif isinstance(node, exp.Column) and node.args["table"].name.lower() == _CONTEXT:
            out = _context_call(node.this.name)
        elif isinstance(node, exp.Column):
            row = _ROW_NAMES[node.args["table"].name.lower()]
            return exp.Column(this=exp.to_identifier(_column_name(node.this), quoted=True),
                              table=exp.to_identifier(row, quoted=False))
        else:
            return node
        made.add(out.sql(dialect="postgres", comments=False))
        return out

    rendered = tree.transform(quote).sql(dialect="postgres", comments=False)
    # The rendered text must itself pass: what is compiled is what was checked (the forms sidecar
    # made, exactly as made, and the user's row references).
    again = sqlglot.parse(rendered, read="postgres")
    if len(again) != 1 or again[0] is None:
        raise SidecarError(f"--when {text!r} did not render back to one expression; please report this")
    _check_tree(again[0], columns, table, foreign_keys, compiled=made)
    if _FUNCTION_QUOTE in rendered:
        raise UsageError(f"--when must not contain the text {_FUNCTION_QUOTE}")
    return rendered


def foreign_keys(conn: psycopg.Connection, table: str) -> list[ForeignKey]:
    """The table's declared foreign keys, the columns of each and of the table it points to."""
    rows = conn.execute(
        """
        SELECT array_agg(ca.attname::text ORDER BY k.ord), pn.nspname::text, pc.relname::text,
               array_agg(pa.attname::text ORDER BY k.ord),
               (SELECT array_agg(a.attname::text) FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = con.confrelid AND a.attnum > 0 AND NOT a.attisdropped)
        FROM pg_catalog.pg_constraint con
        CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(child_att, parent_att, ord)
        JOIN pg_catalog.pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_att
        JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_att
        JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
        JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE con.conrelid = %s::regclass AND con.contype = 'f'
        GROUP BY con.oid, con.confrelid, pn.nspname, pc.relname
        ORDER BY con.conname
        """,
        (table,),
    ).fetchall()
    return [ForeignKey(tuple(cols), schema, rel, tuple(pcols), frozenset(every)) for cols, schema, rel, pcols, every
            in rows]


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
    predicate = (compile_predicate(when, table_columns(conn, name), name, foreign_keys(conn, name))
                 if when is not None else None)
    try:
        with conn.transaction():
            rule_id = conn.execute(
                "SELECT sidecar.add_rule(%s::regclass, %s, %s, %s, %s)",
                (name, predicate, reason, automation, max_rows),
            ).fetchone()[0]
            # Kept for people where the compiled text reads unlike what was written (CONTEXT, REF).
            if predicate is not None and ("sidecar._context_" in predicate or "(SELECT " in predicate):
                conn.execute("UPDATE sidecar.rules SET written = %s WHERE rule_id = %s",
                             (_parse_one(when).sql(dialect="postgres", comments=False), rule_id))
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
    "r.created_by, r.created_at, r.active, r.written FROM sidecar.rules r JOIN sidecar.tracked t USING (tracked_id)"
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
