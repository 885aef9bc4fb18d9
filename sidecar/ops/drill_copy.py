"""The failure drill's scratch copy: a sample of one table in schema sidecar_drill_<random>.

``ScratchCopy`` makes the copy (the table's columns, constraints and triggers,
self-references, the on/off state of its capture triggers, a sample of its
rows, tracked like the table), reads it, and drops it with everything sidecar
recorded about it (sidecar._drill_cleanup). ``remove_leftovers`` drops the
copies of drills killed before they could clean up. The checks that use the
copy are in sidecar/drill.py.
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql

from ..text.describe import plural, table_name

SCHEMA_PREFIX = "sidecar_drill_"
SIDECAR_TRIGGERS = ("sidecar_capture_insert", "sidecar_capture_update", "sidecar_capture_delete",
                    "sidecar_refuse_truncate")


class CheckFailed(Exception):
    """A check's verdict: the message says what did not hold."""


def remove_leftovers(conn: psycopg.Connection) -> list[str]:
    """Scratch schemas of drills that were killed before they could clean up (none runs now: we hold the lock)."""
    notes = []
    for (nsp,) in conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sidecar\\_drill\\_%' ORDER BY 1"
    ).fetchall():
        with conn.transaction():
            cleanup_schema(conn, nsp)
        notes.append(f"removed the leftovers of an interrupted drill (schema {nsp})")
    return notes


def cleanup_schema(conn: psycopg.Connection, nsp: str) -> dict[str, int]:
    removed = {"runs": 0, "events": 0}
    for (tracked_id,) in conn.execute(
        "SELECT t.tracked_id FROM sidecar.tracked t JOIN pg_class c ON c.oid = t.relid "
        "WHERE c.relnamespace = %s::regnamespace", (sql.Identifier(nsp).as_string(conn),)
    ).fetchall():
        counts = conn.execute("SELECT sidecar._drill_cleanup(%s, %s)", (tracked_id, nsp)).fetchone()[0]
        for k in removed:
            removed[k] += counts.get(k, 0)
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(nsp)))
    return removed


class ScratchCopy:
    """The copy of one table the drill writes to instead of the table."""

    def __init__(self, conn: psycopg.Connection, table: str, sample_rows: int):
        self.conn, self.table, self.sample_rows = conn, table, sample_rows
        self.schema = SCHEMA_PREFIX + secrets.token_hex(4)
        self.notes: list[str] = []
        self.copy = ""  # the copy's qualified name
        self.copy_ident: sql.Composable = sql.SQL("")
        self.stash_ident: sql.Composable = sql.SQL("")  # every sample row, to put rows back from
        self.pk: list[str] = []
        self.columns: list[str] = []
        self.rows: list[tuple[str, ...]] = []  # keys of the copy's sample rows
        self.items: list[tuple[str, ...]] = []  # keys of the rows the rerun check creates
        self.editable: list[tuple[str, str, int | None]] = []  # (column, type category, max length)
        self.live_sidecar: dict[str, str] = {}  # the live table's sidecar triggers: name -> tgenabled
        self.tracked_id: int | None = None  # the copy's

    # -- making the copy -------------------------------------------------------
    def _make_copy(self) -> str:
        conn = self.conn
        nsp, rel, tracked = conn.execute(
            "SELECT n.nspname, c.relname, t.tracked_id FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN sidecar.tracked t ON t.relid = c.oid AND t.active WHERE c.oid = %s::regclass",
            (self.table,),
        ).fetchone()
        live = sql.Identifier(nsp, rel)
        self.pk = conn.execute("SELECT sidecar._pk_columns(%s::regclass)::text[]", (self.table,)).fetchone()[0] or []
        if not self.pk:
            raise CheckFailed(f"{self.table} has no primary key, so sidecar cannot track it (nor a copy of it)")
        self.columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (self.table,)
        ).fetchall()]
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        pk = sql.SQL(", ").join(map(sql.Identifier, self.pk))
        self.copy_ident = sql.Identifier(self.schema, rel)
        self.stash_ident = sql.Identifier(self.schema, "drill_sample" if rel != "drill_sample" else "drill_sample_")

        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(self.copy_ident, live))
        self.copy = conn.execute("SELECT sidecar._qualname(%s::regclass)",
                                 (self.copy_ident.as_string(conn),)).fetchone()[0]
        # The sample goes in before any trigger exists: setting up fires none of the table's own code.
        conn.execute(sql.SQL("INSERT INTO {c} ({cols}) OVERRIDING SYSTEM VALUE "
                             "SELECT {cols} FROM {live} ORDER BY {pk} LIMIT %s").format(
            c=self.copy_ident, cols=cols, live=live, pk=pk), (self.sample_rows,))
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.copy_ident)).fetchone()[0]
        if n == 0:
            raise CheckFailed(f"{self.table} has no rows to copy; the drill needs at least 3")
        conn.execute(sql.SQL("CREATE TABLE {stash} AS SELECT {cols} FROM {c}").format(
            stash=self.stash_ident, cols=cols, c=self.copy_ident))
        key_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.pk)
        by_key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in self.pk)
        keys = [tuple(r) for r in conn.execute(
            sql.SQL("SELECT {} FROM {} AS t ORDER BY {}").format(key_text, self.copy_ident, by_key)).fetchall()]
        # The rerun check's items: the last rows, set aside for the drill automation to create again.
        n_items = 0 if n < 3 else 2 if n <= 5 else 3
        self.rows, self.items = keys[: n - n_items], keys[n - n_items:]
        for key in self.items:
            conn.execute(sql.SQL("DELETE FROM {} AS t WHERE {}").format(self.copy_ident, self._where()), key)

        not_copied = self._copy_foreign_keys(nsp, rel)
        triggers = self._copy_triggers(nsp, rel)
        self._track_copy(tracked)
        self.editable = self._editable_columns()
        constraints = self._compare()
        parts = [f"{plural(len(self.columns), 'column')}, "
                 f"{plural(constraints, 'constraint')}, "
                 f"{plural(len(triggers), 'trigger')} of its own" + (f" ({', '.join(triggers)})" if triggers else ""),
                 f"{plural(n, 'sample row')} ({len(self.items)} set aside as rerun items)"]
        if not_copied:
            parts.append("not copied: foreign keys to other tables (" + ", ".join(not_copied) + ")")
            self.notes.append("foreign keys to other tables are not copied: adding them would lock those tables")
        if not tracked:
            parts.append(f"{self.table} is not tracked, so the copy captures nothing either")
        return "; ".join(parts)

    def _copy_foreign_keys(self, nsp: str, rel: str) -> list[str]:
        """Self-references point at the copy (NOT VALID: the sample may lack parents); others are listed."""
        actions = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
        skipped = []
        for name, self_ref, cols, refcols, upd, dele, match, deferrable, deferred, target in self.conn.execute(
            "SELECT con.conname, con.confrelid = con.conrelid, "
            "  (SELECT array_agg(a.attname::text ORDER BY k.o) FROM unnest(con.conkey) WITH ORDINALITY k(n, o) "
            "   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), "
            "  (SELECT array_agg(a.attname::text ORDER BY k.o) FROM unnest(con.confkey) WITH ORDINALITY k(n, o) "
            "   JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n), "
            "  con.confupdtype, con.confdeltype, con.confmatchtype, con.condeferrable, con.condeferred, "
            "  sidecar._qualname(con.confrelid) "
            "FROM pg_constraint con WHERE con.conrelid = %s::regclass AND con.contype = 'f' ORDER BY 1",
            (self.table,),
        ).fetchall():
            if not self_ref:
                skipped.append(f"{name} -> {target}")
                continue
            self.conn.execute(sql.SQL(
                "ALTER TABLE {c} ADD CONSTRAINT {name} FOREIGN KEY ({cols}) REFERENCES {c} ({refcols}) "
                "MATCH {match} ON UPDATE {upd} ON DELETE {dele} {deferrable} NOT VALID").format(
                c=self.copy_ident, name=sql.Identifier(name),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                refcols=sql.SQL(", ").join(map(sql.Identifier, refcols)),
                match=sql.SQL("FULL" if match == "f" else "SIMPLE"),
                upd=sql.SQL(actions[upd]), dele=sql.SQL(actions[dele]),
                deferrable=sql.SQL(("DEFERRABLE INITIALLY DEFERRED" if deferred else "DEFERRABLE")
                                   if deferrable else "")))
        return skipped

    def _copy_triggers(self, nsp: str, rel: str) -> list[str]:
        """The table's own triggers, on the copy, enabled or disabled as on the table."""
        # pg_get_triggerdef names the table as format('%I.%I') does.
        qualified = self.conn.execute("SELECT format('%%I.%%I', %s::text, %s::text)", (nsp, rel)).fetchone()[0]
        live_on = f" ON {qualified} "
        copy_on = " ON " + self.copy_ident.as_string(self.conn) + " "
        names = []
        for tgname, definition, enabled in self.conn.execute(
            "SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger "
            "WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY tgname", (self.table,)
        ).fetchall():
            if tgname.startswith("sidecar_"):
                self.live_sidecar[tgname] = enabled
                continue
            ident = sql.Identifier(tgname).as_string(self.conn)
            head = definition.find(ident) + len(ident)
            at = definition.find(live_on, head)
            if at < 0:
                raise CheckFailed(f"cannot copy trigger {tgname}: its definition does not name {live_on.strip()}")
            self.conn.execute(definition[:at] + copy_on + definition[at + len(live_on):])
            self._set_enabled(tgname, enabled)
            names.append(tgname)
        return names

    def _set_enabled(self, tgname: str, enabled: str) -> None:
        how = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}.get(enabled)
        if how:
            self.conn.execute(sql.SQL("ALTER TABLE {} {} {}").format(self.copy_ident, sql.SQL(how),
                                                                     sql.Identifier(tgname)))

    def _track_copy(self, live_tracked: int | None) -> None:
        capture, label, display, mode = "tagged", None, None, None
        if live_tracked:
            capture, label, display, mode = self.conn.execute(
                "SELECT capture, label_column, display_name, capture_mode FROM sidecar.tracked WHERE tracked_id = %s",
                (live_tracked,)).fetchone()
        self.tracked_id = self.conn.execute("SELECT sidecar.track(%s::regclass, %s, %s, %s, %s)",
                                            (self.copy, capture, label, display, mode)).fetchone()[0]
        # The copy captures exactly as the table does: a capture trigger missing
        # or disabled there is missing or disabled here.
        for tgname in SIDECAR_TRIGGERS:
            state = self.live_sidecar.get(tgname)
            if state is None:
                self.conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(tgname), self.copy_ident))
            else:
                self._set_enabled(tgname, state)
        if any(t.startswith("sidecar_hold") for t in self.live_sidecar):
            self.notes.append("hold rules are not copied: the drill's writes are never held for review")

    def _editable_columns(self) -> list[tuple[str, str, int | None]]:
        """Columns the drill may try to change: no key, identity, generated, unique index or foreign key.

        Text first, then numbers, times and booleans; a change a check constraint
        or trigger refuses falls through to the next column (see _damage).
        """
        return [tuple(r) for r in self.conn.execute(
            """
            SELECT a.attname, t.typcategory,
                   CASE WHEN t.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4 THEN a.atttypmod - 4 END
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %(c)s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              AND a.attidentity = '' AND t.typcategory IN ('S', 'N', 'D', 'B') AND NOT a.attname = ANY(%(pk)s)
              AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
                              AND a.attnum = ANY(i.indkey))
              AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conrelid = a.attrelid
                              AND c.contype IN ('f', 'x') AND a.attnum = ANY(c.conkey))
            ORDER BY array_position(ARRAY['S', 'N', 'D', 'B']::"char"[], t.typcategory), a.attnum
            """,
            {"c": self.copy, "pk": self.pk},
        ).fetchall()]

    def _count_constraints(self, table: str) -> int:
        """Constraints (but foreign keys to other tables) and NOT NULL columns."""
        return self.conn.execute(
            "SELECT (SELECT count(*) FROM pg_constraint WHERE conrelid = %(t)s::regclass "
            "        AND (contype <> 'f' OR confrelid = conrelid)) "
            "     + (SELECT count(*) FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attnum > 0 "
            "        AND attnotnull AND NOT attisdropped)",
            {"t": table}).fetchone()[0]

    def _compare(self) -> int:
        """The copy must look like the table: columns, constraints, triggers and their state.

        Returns the copy's count of constraints."""
        def shape(table: str) -> list[tuple]:
            return self.conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attgenerated, attidentity "
                "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (table,)).fetchall()

        def triggers(table: str) -> list[tuple]:
            return self.conn.execute(
                "SELECT tgname, tgenabled, tgtype FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
                "AND tgname NOT LIKE 'sidecar\\_hold%%' ORDER BY 1", (table,)).fetchall()

        if shape(self.table) != shape(self.copy):
            raise CheckFailed("the copy's columns differ from the table's")
        constraints = self._count_constraints(self.copy)
        if self._count_constraints(self.table) != constraints:
            raise CheckFailed("the copy's constraints differ from the table's")
        live = [t for t in triggers(self.table) if t[0] in self.live_sidecar or not t[0].startswith("sidecar_")]
        if live != triggers(self.copy):
            raise CheckFailed("the copy's triggers differ from the table's")
        return constraints

    # -- reading the copy ------------------------------------------------------------
    def _where(self, alias: str = "t") -> sql.Composable:
        """(alias.k1::text, ...) = (%s, ...): the row whose key is given as parameters, carried as text."""
        cols = sql.SQL(", ").join(sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(c))
                                  for c in self.pk)
        return sql.SQL("({}) = ({})").format(cols, sql.SQL(", ").join(sql.Placeholder() * len(self.pk)))

    def _row(self, key: tuple[str, ...]) -> str | None:
        # Not `t::text`: a column named t would be read instead of the row.
        row = self.conn.execute(sql.SQL("SELECT sidecar_drill_row::text FROM {} AS sidecar_drill_row WHERE {}").format(
            self.copy_ident, self._where("sidecar_drill_row")), key).fetchone()
        return row[0] if row else None

    def _present(self, keys: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        return [k for k in keys if self._row(k) is not None]

    def _items_present(self) -> list[int]:
        return [self.conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
            self.copy_ident, self._where()), k).fetchone()[0] for k in self.items]

    def _label(self, key: tuple[str, ...]) -> str:
        name = table_name(self.table)
        if len(key) == 1:
            return f"{name} #{key[0]}"
        return f"{name} (" + ", ".join(f"{c} {v}" for c, v in zip(self.pk, key)) + ")"

    def _drop(self) -> str:
        """Drop the scratch schema and what sidecar recorded about the copy; what was removed, as a sentence."""
        conn = self.conn
        exists = conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)",
                              (self.schema,)).fetchone()[0]
        if not exists:
            return ""
        try:
            with conn.transaction():
                removed = cleanup_schema(conn, self.schema)
        except psycopg.Error as exc:
            return (f"Cleanup failed ({exc.diag.message_primary}); schema {self.schema} is left and the next "
                    "drill removes it.")
        return (f"Schema {self.schema} dropped; the drill's {plural(removed['runs'], 'run')} and "
                f"{plural(removed['events'], 'event')} removed (its result is kept as one 'drill' event).")
