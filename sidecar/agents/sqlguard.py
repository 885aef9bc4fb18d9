"""What an agent's SQL may be, checked with sqlglot before it reaches the server.

The agent's tool (`sidecar mcp`) runs one statement per call (or a short list in one
transaction): reads through `query`, row writes through `execute`. Anything else is
refused here with a sentence the model can act on: DDL, TRUNCATE, COPY, DO, CALL,
session settings (`SET`, `RESET`, `set_config`), and sidecar's own functions, so the
agent cannot change its run's tag, resume itself or approve its own held writes. The
database's privileges stop the rest (the agent's role owns no tracked table and holds
no sidecar role); this check makes the refusal clear and early.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
# Functions no agent statement may call, whatever the schema: they change the
# session's settings, the sidecar.* tags among them.
FORBIDDEN_FUNCTIONS = {"set_config"}


class Refused(Exception):
    """The statement is not one the agent's tool runs; the message says why and what to do."""


@dataclass(frozen=True)
class Checked:
    sql: str
    kind: str  # 'read' or 'write'
    verb: str  # SELECT, INSERT, UPDATE, DELETE, MERGE


def _parse(text: str) -> list[exp.Expression]:
    if not text or not text.strip():
        raise Refused("the SQL is empty; pass one statement")
    try:
        statements = [s for s in sqlglot.parse(text, dialect="postgres") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "it does not parse"
        raise Refused(f"the SQL could not be read ({first}); pass one plain statement") from None
    if not statements:
        raise Refused("the SQL is empty; pass one statement")
    if len(statements) > 1:
        raise Refused("the SQL holds more than one statement; pass one statement per item "
                      "(execute takes a list of statements to run in one transaction)")
    return statements


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _check_calls(tree: exp.Expression) -> None:
    for node in tree.find_all(exp.Func):
        name = _function_name(node)
        parent = node.parent
        schema = parent.this.name.lower() if isinstance(parent, exp.Dot) and parent.expression is node \
            and isinstance(parent.this, (exp.Identifier, exp.Column)) else ""
        if name in FORBIDDEN_FUNCTIONS:
            raise Refused(f"{name}() changes session settings, which this tool does not allow; "
                          "the run and action are set by the tool itself")
        if schema == "sidecar":
            raise Refused(f"sidecar.{name}() is sidecar's own function: pausing, approving, undoing and "
                          "tagging are for people and for the tool, not for statements; use the status tool "
                          "to see your run, held writes and pause")
    for table in tree.find_all(exp.Table):
        if (table.db or "").lower() == "sidecar":
            raise Refused("sidecar's own tables are not for agent statements; use the status tool "
                          "to see your run, held writes and pause")


def check(text: str, *, kind: str) -> Checked:
    """Check one statement for the `query` (kind 'read') or `execute` (kind 'write') tool."""
    (tree,) = _parse(text)
    if isinstance(tree, exp.Command) or not isinstance(tree, (exp.Query, *WRITES)):
        verb = text.strip().split()[0].upper()
        raise Refused(f"{verb} is not allowed: this tool runs SELECT for reads and INSERT, UPDATE, DELETE or "
                      "MERGE for writes; schema changes, TRUNCATE, COPY, settings and procedures are for people")
    _check_calls(tree)
    writes = [n for n in tree.find_all(*WRITES)]
    if kind == "read":
        if writes:
            raise Refused("query is for reads only; use execute for a write (with why)")
        return Checked(text, "read", "SELECT")
    if not isinstance(tree, WRITES):
        raise Refused("execute is for writes (INSERT, UPDATE, DELETE, MERGE); use query to read")
    return Checked(text, "write", tree.key.upper())
