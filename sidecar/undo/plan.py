"""Undo, planning: read a scope's history into temporary tables and decide each row's step.

The plan lives in temporary tables inside the undo's own transaction. The
per-table ones are made by the table's undo function (sidecar.undo_<id>,
sql/functions/fn_undo.sql), which runs with the table owner's rights and
reads the images from the history itself: this module says what to do, in
which order, and reads the results; the operator needs sidecar_undoer only.
  _sc_first_<id>    per row key, the scope's first image (kind O: the row as it
                    was before; kind N: the row did not exist before)
  _sc_last_<id>     per row key, the scope's last image (what the run left)
  _sc_plan_<id>     per row key, the step: insert, update, delete, done
                    (already as before), none (added and removed by the run),
                    conflict (changed since by someone else), orphan (it
                    would refer to a row deleted since)
Rows are locked (FOR UPDATE, or the whole table past ROW_LOCKS_MAX rows)
before the plan compares them, so the check and the write are atomic.
keys orders the tables by their foreign keys, apply writes the plan, and
restore runs both in one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..capture.history import _IN_SCOPE, TableInfo, history_from, statement_of_image
from ..capture.tracking import untracked_followers
from ..errors import SidecarError, UsageError
from .keys import keep_referenced, mark_orphans, table_order
from .scope import Scope
from .tables import Column, TablePlan, key_join, quoted, server_step, temp_table
from .unique import mark_clashes

CONFLICTS_LISTED = 200
# An undo restoring more rows of a table than this locks the table (SHARE ROW
# EXCLUSIVE) rather than each row.
ROW_LOCKS_MAX = 10_000
# Types whose = calls different values equal (their text differs): a later edit
# that only changes such a value (a numeric's scale, an interval's units, -0)
# is still a conflict, so they are compared as text.
LOOSE_EQUALITY = ["numeric", "interval", "real", "double precision"]


@dataclass
class Conflict:
    table: str
    key: dict[str, Any]
    run_left: dict[str, Any] | None
    now: dict[str, Any] | None
    changed_by_run: uuid.UUID | None
    label_column: str | None = None
    display_name: str | None = None
    reason: str | None = None  # set when the conflict is not a later change of the row itself


class Planner:
    """Builds the restore plan of one scope inside the caller's transaction (apply writes it)."""

    def __init__(self, conn: psycopg.Connection, scope: Scope, *, force: bool = False,
                 progress: Callable[[str], None] | None = None):
        self.conn = conn
        self.scope = scope
        self.force = force
        # Told what is being done, step by step (a big undo is a few long statements).
        self.progress = progress or (lambda _step: None)
        self.tables: list[TablePlan] = []
        self.notes: list[str] = []
        # What the undo cannot restore (columns dropped or retyped since): said,
        # and the rest is restored only with force.
        self.lost: list[str] = []
        self._order: list[TablePlan] | None = None
        self.action_ids: list[int] | None = None
        # Writes that mirror one statement point at its images instead of
        # being captured (undo.apply); False captures every write, as before.
        self.pointers = True

    # -- scope -------------------------------------------------------------
    def _select_statements(self) -> None:
        conn, scope = self.conn, self.scope
        action_ids = None
        if scope.actions:
            found = conn.execute(
                "SELECT key, action_id FROM sidecar.actions WHERE run_id = %s AND key = ANY(%s)",
                (scope.run_id, scope.actions),
            ).fetchall()
            missing = sorted(set(scope.actions) - {k for k, _ in found})
            if missing:
                raise UsageError(
                    f"run {scope.run_id} has no action {missing[0]!r}",
                    shell=f"sidecar show {scope.run_id} lists its actions"
                )
            action_ids = [a for _, a in found]
        self.action_ids = action_ids
        # Columns renamed, dropped or retyped since the table's last captured
        # write: sync its history first, or images and table would not line up.
        # (The statements in scope are read by run, index statements_run; each
        # table's undo function reads its own for the images.)
        scope_args = (scope.run_id, action_ids, action_ids)
        conn.execute("SELECT sidecar._sync_shape(tracked_id) FROM (SELECT DISTINCT s.tracked_id "
                     "FROM sidecar.statements s WHERE " + _IN_SCOPE + ") s", scope_args)
        rows = conn.execute(
            """
            SELECT t.tracked_id, sidecar._qualname(t.relid), t.log_table, t.pk_columns::text[], t.label_column,
                   t.display_name, s.lo, s.hi,
                   EXISTS (SELECT FROM pg_class c WHERE c.oid = t.relid) AS present, s.single_op, t.active
            FROM (SELECT s.tracked_id, min(s.stmt_id) AS lo, max(s.stmt_id) AS hi,
                         CASE WHEN count(*) = 1 THEN min(s.op::text) END AS single_op
                  FROM sidecar.statements s WHERE """ + _IN_SCOPE + """
                  GROUP BY s.tracked_id) s  -- grouped first: one name per table
            JOIN sidecar.tracked t USING (tracked_id)
            ORDER BY 2
            """, scope_args
        ).fetchall()
        for r in rows:
            if not r[8]:
                self.lost.append(f"table {r[1]} was dropped since the run; its rows cannot be put back")
            elif not r[10]:
                self.notes.append(f"{r[1]} is not tracked any more: its rows are restored, but this undo of them is "
                                  f"not recorded and cannot itself be undone (sidecar track {r[1]} first records it)")
        infos = [TableInfo(*r[:6], stmt_range=(r[6], r[7])) for r in rows if r[8]]
        single_op = {r[0]: r[9] for r in rows}
        if scope.rows:
            wanted = {t for t, _ in scope.rows}
            known = {i.table for i in infos}
            for t in sorted(wanted - known):
                raise UsageError(f"run {scope.run_id} changed no row of table {t}")
            infos = [i for i in infos if i.table in wanted]
        for info in infos:
            plan = self._columns(info)
            plan.single_op = single_op[info.tracked_id]
            self.tables.append(plan)

    def _columns(self, info: TableInfo) -> TablePlan:
        """The columns an undo restores: captured by every statement in scope and still on the table."""
        rows = self.conn.execute(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                   c.log_column IS NOT NULL AND NOT c.retired AND c.since_stmt <= %(since)s AS captured,
                   EXISTS (SELECT FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
                           WHERE am.amname = 'btree' AND oc.opcdefault
                             AND oc.opcintype = CASE WHEN bt.typtype = 'e' THEN 'anyenum'::regtype
                                                     WHEN bt.typcategory = 'A' AND bt.typelem <> 0
                                                          AND el.typtype <> 'c' AND el.typname NOT IN ('json', 'xml', 'point')
                                                          THEN 'anyarray'::regtype
                                                     ELSE bt.oid END)
                   -- Equal to = but not the same value (2.5 = 2.50, '1 day' = '24:00:00', 0 = -0,
                   -- a nondeterministic collation): a person's edit all the same, compared as text.
                   AND NOT (bt.oid = ANY (%(loose)s::regtype[]) OR bt.typname = 'citext'
                            OR (bt.typcategory = 'A' AND (el.oid = ANY (%(loose)s::regtype[]) OR el.typname = 'citext'))
                            OR EXISTS (SELECT FROM pg_collation co
                                       WHERE co.oid = a.attcollation AND NOT co.collisdeterministic)) AS comparable,
                   a.attidentity = 'a'
            FROM pg_attribute a
            JOIN pg_type ty ON ty.oid = a.atttypid
            JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
            LEFT JOIN pg_type el ON el.oid = bt.typelem
            LEFT JOIN sidecar.columns c ON c.tracked_id = %(tracked)s AND c.attnum = a.attnum AND NOT c.retired
            WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
            ORDER BY a.attnum
            """,
            {"since": info.stmt_range[0], "tracked": info.tracked_id, "table": info.table, "loose": LOOSE_EQUALITY},
        ).fetchall()
        columns, skipped = [], []
        for name, type_name, captured, comparable, identity_always in rows:
            if captured:
                columns.append(Column(name, type_name, comparable, identity_always))
            else:
                skipped.append(name)
        missing_pk = [c for c in info.pk_columns if c not in {col.name for col in columns}]
        if missing_pk:
            raise SidecarError(
                f"table {info.table}: key column {missing_pk[0]} was dropped, renamed away or retyped since the run; "
                "its rows cannot be matched, so this table cannot be undone"
            )
        # History columns the run filled that no longer match a column of the
        # table: retired because the column was dropped or retyped since.
        changed = self.conn.execute(
            """
            SELECT split_part(c.log_column, '~', 1), c.type_name, format_type(a.atttypid, a.atttypmod)
            FROM sidecar.columns c
            LEFT JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attnum = c.attnum AND NOT a.attisdropped
            WHERE c.tracked_id = %s AND c.retired AND c.since_stmt <= %s
              AND (c.retired_stmt IS NULL OR c.retired_stmt > %s)
            ORDER BY c.attnum
            """,
            (info.table, info.tracked_id, info.stmt_range[1], info.stmt_range[0]),
        ).fetchall()
        retyped = set()
        for name, old_type, new_type in changed:
            if new_type is None:
                self.lost.append(f"{info.table}: column {name} was dropped since the run; its old values cannot "
                                 "be put back")
            else:
                retyped.add(name)
                self.lost.append(f"{info.table}: column {name} was retyped since the run ({old_type} -> {new_type}); "
                                 "its old values are left as they are now")
        for name in skipped:
            if name not in retyped:
                self.notes.append(f"{info.table}: column {name} was added since the run started; left as it is")
        return TablePlan(info, columns, skipped)

    # -- plan --------------------------------------------------------------
    def _row_keys(self, plan: TablePlan) -> list[list[str]] | None:
        """The --row keys of this table, as text in the order of its key (None: every row)."""
        keys = [k for t, k in self.scope.rows if t == plan.table]
        if not keys:
            return None
        pk = plan.info.pk_columns
        for k in keys:
            if sorted(k) != sorted(pk):
                raise UsageError(
                    f"--row {plan.table}: the key of {plan.table} is ({', '.join(pk)}), not ({', '.join(k)})"
                )
        # Keys are compared as text, so a key given on the command line matches any key type.
        return [[_text(k[c]) for c in pk] for k in keys]

    def _build_images(self, plan: TablePlan) -> None:
        """The scope's first and last image of each row, read from the history by the table's undo
        function into _sc_first_<id> and _sc_last_<id> (fn_undo.sql: sidecar._undo_images)."""
        columns = [{"name": c.name, "comparable": c.comparable, "identity_always": c.identity_always}
                   for c in plan.columns]
        plan.rows = server_step(self.conn, plan, "images", self.scope.run_id,
                                {"columns": columns, "action_ids": self.action_ids, "rows": self._row_keys(plan)})

    def _check_rows_found(self, plan: TablePlan) -> None:
        """A --row the scope never changed is bad input: say so rather than undo nothing and exit 0."""
        keys = [k for t, k in self.scope.rows if t == plan.table]
        if not keys:
            return
        pk = plan.info.pk_columns
        found = {
            tuple(r) for r in self.conn.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(quoted(c)) for c in pk), temp_table("first", plan))
            )
        }
        for k in keys:
            if tuple(_text(k[c]) for c in pk) not in found:
                key = ", ".join(f"{c} {_text(k[c])}" for c in pk)
                raise UsageError(
                    f"run {self.scope.run_id} changed no row of {plan.table} with {key}",
                    shell=f"sidecar show {self.scope.run_id} lists the rows it changed"
                )

    def _lock_and_classify(self, plan: TablePlan, lock: bool) -> None:
        """Lock the rows as they are now and decide each row's step into _sc_plan_<id>
        (fn_undo.sql: sidecar._undo_classify).

        A row changed meanwhile is waited for and then seen in its newest
        state. Past ROW_LOCKS_MAX rows the table is locked instead (SHARE ROW
        EXCLUSIVE): locking each row rewrites it, which cost about as much as
        the restore itself. Readers go on either way; with the table lock every
        writer of the table waits for the undo to commit. A preview (lock=False)
        changes nothing and holds nobody up. An UPDATE that changed keys has,
        per key, a first image that is not always a before-image: the images
        are then read again the general way.
        """
        server_step(self.conn, plan, "classify", self.scope.run_id,
                    {"lock": lock, "force": self.force, "row_locks_max": ROW_LOCKS_MAX})
        self.count(plan)

    def count(self, plan: TablePlan) -> None:
        rows = self.conn.execute(
            sql.SQL("SELECT step, count(*), count(*) FILTER (WHERE forced) FROM {} GROUP BY step").format(
                temp_table("plan", plan))
        ).fetchall()
        plan.counts = {step: n for step, n, _ in rows}
        for step in ("orphan", "kept", "clash"):
            if plan.counts.get(step):
                plan.counts["conflict"] = plan.counts.get("conflict", 0) + plan.counts[step]
        forced = sum(f for _, _, f in rows)
        if forced:
            plan.counts["forced"] = forced

    def plan(self, *, lock_timeout: str | None = None, lock: bool = True) -> None:
        """Build the plan; with lock (an undo about to apply it) the rows it compares are locked first."""
        if lock_timeout:
            self.conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        self._select_statements()
        if not self.tables:
            return
        for plan in self.tables:
            self.progress(f"reading the history of {plan.table}")
            self._build_images(plan)
            self._check_rows_found(plan)
        for plan in self.ordered():
            self.progress(f"locking and checking the rows of {plan.table}")
            self._lock_and_classify(plan, lock)
        mark_clashes(self)
        mark_orphans(self)
        if not lock and keep_referenced(self, self.ordered(), predicted=True):
            # A plan only looked at (preview, --sql) says now which rows the
            # undo will keep because rows changed since refer to them.
            for plan in self.tables:
                self.count(plan)
        self._note_untracked_cascades()

    def _note_untracked_cascades(self) -> None:
        """Say so when rows put back had rows of an untracked table that their delete took along."""
        put_back = [p.table for p in self.tables if p.counts.get("insert")]
        for f in untracked_followers(self.conn, put_back) if put_back else []:
            if f.on_delete:
                self.notes.append(f"{f.parent}: rows put back do not bring back what their delete did to {f.child} "
                                  f"(a foreign key's ON DELETE action; {f.child} is not tracked)")

    def ordered(self) -> list[TablePlan]:
        """The tables parents first (foreign keys among the tables in the plan)."""
        if self._order is None:
            self._order = table_order(self.conn, self.tables)
        return self._order

    # -- reading the plan --------------------------------------------------
    def conflicts(self, limit: int = CONFLICTS_LISTED, *, kept: bool = False) -> list[Conflict]:
        """The conflicting rows; with kept, the rows apply() kept because rows changed since refer to them."""
        out: list[Conflict] = []
        for plan in self.tables:
            found = plan.counts.get("kept") if kept else (plan.counts.get("conflict") or plan.counts.get("forced"))
            if not found or len(out) >= limit:
                continue
            pk = plan.info.pk_columns
            server_step(self.conn, plan, "now", self.scope.run_id)  # the rows as they are now, into _sc_now_<id>
            # The run that changed each listed row since, if one did (its newest
            # image of the row by another run; none when only untagged writes
            # did). History is searched newest first, in windows of statement
            # ids that double, until every listed row has its run: the cost
            # follows how far back the last writer is, not how much history
            # came after the scope (issue 25). Only rows no later run wrote
            # read all of it.
            def query(source: sql.Composable, plan: TablePlan = plan) -> sql.Composable:
                """The query over one window of history (source: history_from(), fn_history.sql)."""
                return sql.SQL(
                    """
                    WITH listed AS MATERIALIZED (
                        SELECT p.*, l._kind AS _sc_kind, to_jsonb(l) - '_kind' AS _sc_left
                        FROM {plan} p JOIN {last} l ON {pl}
                        WHERE {which} ORDER BY {pkp} LIMIT %s),
                    later AS (
                        SELECT DISTINCT ON ({pkh}) {pkh}, s.run_id
                        FROM {source} h JOIN listed p ON {ph}
                        CROSS JOIN LATERAL ({statement}) s
                        WHERE h._stmt > %s AND h._stmt <= %s
                        ORDER BY {pkh}, h._stmt DESC)
                    SELECT to_jsonb(p) - 'step' - 'forced' - '_sc_kind' - '_sc_left',
                           CASE WHEN p._sc_kind = 'N' THEN p._sc_left END,
                           (SELECT n._sc_row FROM {now} n WHERE {pn}), p.step, h.run_id
                    FROM listed p LEFT JOIN later h ON {ph}
                    ORDER BY {pkp}
                    """
                ).format(
                    which=sql.SQL("p.step = 'kept'" if kept else "p.step IN ('conflict', 'orphan', 'clash') OR p.forced"),
                    now=temp_table("now", plan), plan=temp_table("plan", plan), last=temp_table("last", plan),
                    source=source, pn=key_join("p", "n", plan), pl=key_join("p", "l", plan), ph=key_join("p", "h", plan),
                    pkp=sql.SQL(", ").join(sql.SQL("p.{}").format(quoted(c)) for c in pk),
                    pkh=sql.SQL(", ").join(sql.SQL("h.{}").format(quoted(c)) for c in pk),
                    statement=statement_of_image(sql.SQL("s.run_id"), sql.SQL("s.run_id IS DISTINCT FROM %s"), image="h"),
                )
            after = plan.info.stmt_range[1]
            top = self.conn.execute("SELECT max(stmt_id) FROM sidecar.statements").fetchone()[0] or after
            rows, width = None, 4096
            while True:
                low = max(after, top - width)
                found = self.conn.execute(query(history_from(self.conn, plan.info, low + 1, top)),
                                          (limit - len(out), self.scope.run_id, low, top)).fetchall()
                if rows is None:
                    rows = [list(r) for r in found]
                else:  # the same listed rows, in the same order: keep the newer window's run
                    for r, f in zip(rows, found):
                        r[4] = r[4] if r[4] is not None else f[4]
                if low <= after or all(r[4] is not None or r[3] in _REASONS for r in rows):
                    break
                top, width = low, width * 2
            for key, left, now, step, later_run in rows:
                out.append(
                    Conflict(plan.table, {c: key.get(c) for c in pk}, left, now,
                             None if step in _REASONS else later_run, plan.info.label_column,
                             plan.info.display_name, _REASONS.get(step))
                )
        return out

    def steps(self, plan: TablePlan, step: str, limit: int | None = None):
        """(key, first image, last image) of rows with the given step."""
        pk = plan.info.pk_columns
        query = sql.SQL(
            "SELECT row_to_json(f), row_to_json(l), f._kind, l._kind "  # json keeps the column order
            "FROM {plan} p JOIN {first} f ON {pf} JOIN {last} l ON {pl} WHERE p.step = %s ORDER BY {pkp}"
            + (" LIMIT %s" if limit else "")
        ).format(
            plan=temp_table("plan", plan), first=temp_table("first", plan), last=temp_table("last", plan),
            pf=key_join("p", "f", plan), pl=key_join("p", "l", plan),
            pkp=sql.SQL(", ").join(sql.SQL("p.{}").format(quoted(c)) for c in pk),
        )
        params = (step, limit) if limit else (step,)
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            for first, last, fk, lk in cur:
                first.pop("_kind", None)
                last.pop("_kind", None)
                yield {c: first.get(c) for c in pk}, (first if fk == "O" else None), (last if lk == "N" else None)


# Conflicts that are not a later change of the row itself, by plan step.
_REASONS = {
    "kept": "added by the run, and rows changed since still refer to it",
    "clash": "another row holds its old value of a unique key now, so it cannot be restored as it was",
    "orphan": "a row it referred to before the run was deleted since, so it cannot be restored as it was",
}


def _text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
