"""The names of records: what a changed row and the rows its foreign keys point at are called.

A change reads `customer_id 2`; a person thinks "customer Northwind Solar (#2)". For
the tables on a page, `lookup` finds in two queries (one for the foreign keys and
label columns, one for every referenced row's label) what each value is called,
and `Labels` answers per value. A table's label column is the one it is tracked
with (`--label-column`), else a column called name, title, subject or label.
Values whose table the reader may not SELECT stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import psycopg
from psycopg import sql

GUESSED = ("name", "title", "subject", "label")

_TABLES = """
WITH wanted AS (
    SELECT DISTINCT pg_catalog.to_regclass(x) AS relid FROM unnest(%(tables)s::text[]) AS x
), labelled AS (
    SELECT c.oid AS relid,
           coalesce(t.label_column::text,
                    (SELECT a.attname::text FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attname::text = ANY(%(guess)s)
                     ORDER BY array_position(%(guess)s, a.attname::text) LIMIT 1)) AS label_column,
           t.display_name
    FROM pg_catalog.pg_class c LEFT JOIN sidecar.tracked t ON t.relid = c.oid
)
SELECT 'own', w.relid::regclass::text, NULL, NULL, NULL, l.label_column, NULL, NULL, NULL, NULL, NULL, NULL
FROM wanted w JOIN labelled l ON l.relid = w.relid WHERE w.relid IS NOT NULL
UNION ALL
SELECT 'ref', k.conrelid::regclass::text, a.attname::text, k.confrelid::regclass::text, fa.attname::text,
       l.label_column, l.display_name,
       pg_catalog.has_table_privilege(k.confrelid, 'SELECT'), fn.nspname::text, fc.relname::text,
       tn.nspname::text, ft.typname::text
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
JOIN wanted w ON w.relid = k.conrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
JOIN pg_catalog.pg_type ft ON ft.oid = fa.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = ft.typnamespace
JOIN labelled l ON l.relid = k.confrelid
WHERE k.contype = 'f' AND cardinality(k.conkey) = 1 AND l.label_column IS NOT NULL
"""


@dataclass(frozen=True)
class Reference:
    column: str  # customer_id
    table: str  # customers (as regclass prints it)
    schema: str
    relname: str
    key_type: tuple[str, str]  # the referenced key's type (schema, name): values are cast to it, so its index serves
    ref_column: str  # id
    label_column: str  # name
    display_name: str | None
    readable: bool

    @property
    def noun(self) -> str:
        """customer_id -> customer; without an _id suffix, the referenced table's name."""
        if self.column.endswith("_id") and len(self.column) > 3:
            return self.column[:-3].replace("_", " ")
        return self.display_name or self.table.rsplit(".", 1)[-1]


@dataclass
class Labels:
    """Labels of the tables on one page and of the rows their foreign keys point at."""

    own: dict[str, str] = field(default_factory=dict)  # table -> its label column
    refs: dict[str, dict[str, Reference]] = field(default_factory=dict)  # table -> column -> reference
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (referenced table, key as text) -> label

    def label_column(self, table: str, tracked: str | None = None) -> str | None:
        return tracked or self.own.get(_bare(table)) or self.own.get(table)

    def reference(self, table: str, column: str) -> Reference | None:
        return (self.refs.get(_bare(table)) or self.refs.get(table) or {}).get(column)

    def named(self, table: str, column: str, value: Any) -> str | None:
        """`customer Northwind Solar (#2)` for tickets.customer_id = 2; None when it has no name."""
        ref = self.reference(table, column)
        if ref is None or value is None or isinstance(value, (dict, list)):
            return None
        label = self.names.get((ref.table, str(value)))
        if label is None:
            return None
        return f"{ref.noun} {label} (#{value})"


def _bare(table: str) -> str:
    return table.removeprefix("public.")


def lookup(conn: psycopg.Connection, images: Iterable[tuple[str, dict | None]]) -> Labels:
    """Labels for these (table, row image) pairs: their tables' label columns, and the label of
    every row their foreign-key values point at (one query for all of them)."""
    images = [(t, i) for t, i in images if i]
    labels = Labels()
    tables = sorted({t for t, _ in images})
    if not tables:
        return labels
    try:
        rows = conn.execute(_TABLES, {"tables": tables, "guess": list(GUESSED)}).fetchall()
    except psycopg.Error:
        return labels  # no catalogue access: values stay as they are
    for (kind, table, column, ref_table, ref_column, label_column, display_name, readable, schema, relname,
         type_schema, type_name) in rows:
        if kind == "own":
            if label_column:
                labels.own[table] = label_column
        else:
            labels.refs.setdefault(table, {})[column] = Reference(column, ref_table, schema, relname, (type_schema, type_name), ref_column,
                                                                  label_column, display_name, bool(readable))
    wanted: dict[Reference, set[str]] = {}
    for table, image in images:
        for column, ref in (labels.refs.get(_bare(table)) or labels.refs.get(table) or {}).items():
            v = image.get(column)
            if ref.readable and v is not None and not isinstance(v, (dict, list)):
                wanted.setdefault(ref, set()).add(str(v))
    if not wanted:
        return labels
    parts = []
    for ref, values in wanted.items():
        target = sql.Identifier(ref.schema, ref.relname)
        parts.append(sql.SQL("SELECT {t}, {k}::text, {l}::text FROM {tbl} WHERE {k} = ANY({vals}::text[]::{typ}[])").format(
            t=sql.Literal(ref.table), k=sql.Identifier(ref.ref_column), l=sql.Identifier(ref.label_column),
            tbl=target, vals=sql.Literal(sorted(values)), typ=sql.Identifier(*ref.key_type)))
    try:
        for table, key, label in conn.execute(sql.SQL(" UNION ALL ").join(parts)):
            if label not in (None, ""):
                labels.names[(table, key)] = label
    except psycopg.Error:
        pass
    return labels

