"""Know what automations touch: the table inventory.

``inventory(conn)`` lists every tracked table with its owner, risk and kind
(set by ``sidecar track --owner --risk --kind``), capture mode and state, hold
rules, and which automations wrote how many rows to it lately; it warns about
high-risk tables automations write without a hold rule, tables nobody owns,
capture that is off, untracked tables automations appear to write, and
untracked tables a foreign key's action changes along with a tracked one.

Who is on duty for each automation (``owners``) is in sidecar/owners.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..capture import settle
from ..capture.tracking import untracked_followers
from ..text.describe import plural

DRILL_AUTOMATION = "sidecar-drill"
UNDO_AUTOMATION = "sidecar undo"
_NOT_AUTOMATIONS = (DRILL_AUTOMATION, UNDO_AUTOMATION)
_CAPTURE_TRIGGERS = ("sidecar_capture_insert", "sidecar_capture_update", "sidecar_capture_delete")
_XID_WRAP = 4_294_967_296  # a row's xmin is the low 32 bits of the 64-bit txid


# -- inventory ------------------------------------------------------------------

@dataclass
class TableEntry:
    table: str
    owner: str | None
    risk: str | None
    kind: str | None
    capture: str
    capture_state: str  # "on", or what is off
    hold_rules: list[str]
    writers: dict[str, int]  # automation -> rows written in the window
    automations_ever: list[str]
    last_drill: dict[str, Any] | None = None


@dataclass
class InventoryWarning:
    kind: str  # high-risk-no-hold | no-owner | capture-off | untracked-writes | cascade-untracked
    table: str
    automations: list[str]
    message: str


@dataclass
class UntrackedWrite:
    table: str
    automations: dict[str, int]  # automation -> rows (xmin) or statement calls (pg_stat_statements)
    source: str  # xmin | pg_stat_statements
    evidence: str


@dataclass
class InventoryReport:
    days: int
    tables: list[TableEntry]
    warnings: list[InventoryWarning]
    untracked: list[UntrackedWrite]
    heuristic: list[str]
    not_checked: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"Tracked tables (rows written by automations in the last {plural(self.days, 'day')})"]
        if not self.tables:
            lines.append("  none yet: sidecar track TABLE --owner NAME --risk low|medium|high --kind draft|final")
        for t in self.tables:
            lines.append("")
            lines.append(f"  {t.table}")
            lines.append(f"    owner {t.owner or '-'}, risk {t.risk or '-'}, kind {t.kind or '-'}; "
                         f"capture {t.capture}" + ("" if t.capture_state == "on" else f" ({t.capture_state})"))
            lines.append("    hold rules: " + ("; ".join(t.hold_rules) if t.hold_rules else "none"))
            writers = ", ".join(f"{a} {plural(n, 'row')}" for a, n in sorted(t.writers.items()))
            lines.append(f"    written by: {writers or 'no automation'}")
            if t.last_drill:
                lines.append(f"    last drill: {t.last_drill['at'].astimezone():%Y-%m-%d %H:%M}, "
                             + ("passed" if t.last_drill["passed"] else "FAILED"))
        if self.untracked:
            lines.append("")
            lines.append("Untracked tables automations appear to write")
            for u in self.untracked:
                who = ", ".join(f"{a} ({n})" for a, n in sorted(u.automations.items()))
                lines.append(f"  {u.table}: {who}; {u.evidence}")
        if self.warnings:
            lines.append("")
            lines.append("Warnings")
            for w in self.warnings:
                lines.append(f"  ! {w.message}")
        lines.append("")
        lines.append("How untracked writes are found (a heuristic):")
        lines.extend(f"  {h}" for h in self.heuristic)
        if self.not_checked:
            lines.append("  Not checked: " + "; ".join(self.not_checked))
        return "\n".join(lines)


_TABLES = """
SELECT t.tracked_id, sidecar._qualname(t.relid), t.owner, t.risk, t.kind, t.capture, t.log_table,
       (SELECT coalesce(jsonb_object_agg(tg.tgname, tg.tgenabled <> 'D'), '{}')
        FROM pg_trigger tg WHERE tg.tgrelid = t.relid AND tg.tgname LIKE 'sidecar\\_capture\\_%%')
FROM sidecar.tracked t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.active AND n.nspname NOT LIKE 'sidecar\\_drill\\_%%'
ORDER BY 2
"""

# Kept in sidecar.table_writers and brought up to date from the statements
# captured since the last call (fn_inventory.sql): not a read of all history.
_EVER = """
SELECT w.tracked_id, array(SELECT a FROM unnest(w.automations) a WHERE a <> ALL(%s) ORDER BY a)
FROM sidecar.table_writers_ever() w
"""

# Rows written in the window, from each statement's row count, counted once and kept
# (sidecar.statement_rows, fn_inventory.sql): not a read of the window's images.
_WRITERS = "SELECT tracked_id, automation, rows FROM sidecar.table_rows_written(%s, %s)"


def _rules(conn: psycopg.Connection) -> dict[int, list[tuple]]:
    """Active hold rules by tracked table (none when the review queue is not installed)."""
    if not conn.execute("SELECT to_regclass('sidecar.rules') IS NOT NULL").fetchone()[0]:
        return {}
    out: dict[int, list[tuple]] = {}
    for row in conn.execute(
        "SELECT tracked_id, rule_id, kind, predicate, max_rows, automation, reason "
        "FROM sidecar.rules WHERE active ORDER BY rule_id"
    ).fetchall():
        out.setdefault(row[0], []).append(row[1:])
    return out


def _rule_text(rule: tuple) -> str:
    rule_id, kind, predicate, max_rows, automation, reason = rule
    what = f"rows where {predicate}" if predicate else "rows"
    if kind == "rows":
        what += f" past {max_rows} per statement"
    who = automation or "every automation"
    return f"rule {rule_id} holds {what} ({who}): {reason}"


def _capture_state(triggers: dict[str, bool]) -> str:
    missing = [t.removeprefix("sidecar_capture_") for t in _CAPTURE_TRIGGERS if t not in triggers]
    disabled = [t.removeprefix("sidecar_capture_") for t in _CAPTURE_TRIGGERS if triggers.get(t) is False]
    parts = []
    if disabled:
        parts.append(f"trigger disabled for {', '.join(disabled)}")
    if missing:
        parts.append(f"trigger missing for {', '.join(missing)}")
    return "; ".join(parts) or "on"


def _last_drills(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT DISTINCT ON (detail ->> 'table') detail ->> 'table', at, (detail ->> 'passed')::boolean, summary "
        "FROM sidecar.events WHERE kind = 'drill' ORDER BY detail ->> 'table', at DESC"
    ).fetchall()
    return {t: {"at": at, "passed": bool(passed), "summary": s} for t, at, passed, s in rows}


def inventory(conn: psycopg.Connection, *, days: int = 7, scan_limit: int = 100_000) -> InventoryReport:
    """Every tracked table with its inventory entry, writers and warnings (see the module doc)."""
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    rules = _rules(conn)
    ever = dict(conn.execute(_EVER, (list(_NOT_AUTOMATIONS),)).fetchall())
    drills = _last_drills(conn)
    written: dict[int, dict[str, int]] = {}
    for tracked_id, automation, rows in conn.execute(_WRITERS, (days, list(_NOT_AUTOMATIONS))).fetchall():
        written.setdefault(tracked_id, {})[automation] = rows
    tables: list[TableEntry] = []
    warnings: list[InventoryWarning] = []
    for tracked_id, name, owner, risk, kind, capture, log_table, triggers in conn.execute(_TABLES).fetchall():
        writers = written.get(tracked_id, {})
        table_rules = rules.get(tracked_id, [])
        entry = TableEntry(name, owner, risk, kind, capture, _capture_state(triggers),
                           [_rule_text(r) for r in table_rules], writers, list(ever.get(tracked_id, [])),
                           drills.get(name))
        tables.append(entry)
        warnings.extend(_table_warnings(entry, table_rules))
    by_name = {t.table: t for t in tables}
    for f in untracked_followers(conn):
        writers = by_name[f.parent].automations_ever if f.parent in by_name else []
        warnings.append(InventoryWarning(
            "cascade-untracked", f.child, writers,
            f"{f.child} follows {f.parent} ({f.actions}) but is not tracked: the rows a write to {f.parent} "
            f"changes or deletes there with it cannot be put back by an undo; sidecar track {f.child}",
        ))
    untracked, heuristic, not_checked = _untracked_writes(conn, days=days, scan_limit=scan_limit)
    for u in untracked:
        warnings.append(InventoryWarning(
            "untracked-writes", u.table, sorted(u.automations),
            f"{u.table} is not tracked, yet {', '.join(sorted(u.automations))} "
            f"appear{'s' if len(u.automations) == 1 else ''} to write it "
            f"({u.evidence}): its changes cannot be undone or paused; sidecar track {u.table}",
        ))
    return InventoryReport(days, tables, warnings, untracked, heuristic, not_checked)


def _table_warnings(t: TableEntry, table_rules: list[tuple]) -> list[InventoryWarning]:
    out = []
    if t.risk == "high" and t.automations_ever:
        if any(r[4] is None for r in table_rules):
            uncovered = []
        else:
            covered = {r[4] for r in table_rules}
            uncovered = [a for a in t.automations_ever if a not in covered]
        if uncovered:
            out.append(InventoryWarning(
                "high-risk-no-hold", t.table, uncovered,
                f"{t.table} is high-risk and {', '.join(uncovered)} wrote to it, but no hold rule covers "
                f"{'them' if len(uncovered) > 1 else 'it'}: add one, e.g. "
                f"sidecar rule add {t.table} --when \"...\" --reason \"...\"",
            ))
    if t.automations_ever and not t.owner:
        out.append(InventoryWarning(
            "no-owner", t.table, t.automations_ever,
            f"{t.table} is written by {', '.join(t.automations_ever)} but names no owner: "
            f"sidecar track {t.table} --owner NAME --risk low|medium|high",
        ))
    if t.capture_state != "on":
        out.append(InventoryWarning(
            "capture-off", t.table, t.automations_ever,
            f"{t.table}: capture is off ({t.capture_state}): automations' writes to it are neither captured "
            f"nor paused; sidecar track {t.table} puts the triggers back",
        ))
    return out


# -- untracked writes (heuristic) ---------------------------------------------------

_CANDIDATES = """
SELECT s.schemaname, s.relname, sidecar._qualname(s.relid), s.n_live_tup,
       has_table_privilege(s.relid, 'SELECT')
FROM pg_stat_user_tables s
WHERE s.n_tup_ins + s.n_tup_upd > 0
  AND s.relid NOT IN (SELECT relid FROM sidecar.tracked WHERE active)
  AND s.schemaname <> 'sidecar' AND s.schemaname NOT LIKE 'sidecar\\_drill\\_%%'
ORDER BY 3
"""

_WRITE_TARGET = re.compile(
    r"^\s*(?:WITH\b.*?\)\s*)?(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO)\s+(?:ONLY\s+)?"
    r'((?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*))?)',
    re.IGNORECASE | re.DOTALL,
)


def write_target(query: str) -> str | None:
    """The table an INSERT/UPDATE/DELETE/MERGE statement writes, as written in it (None: not a write)."""
    match = _WRITE_TARGET.match(query)
    return re.sub(r"\s*\.\s*", ".", match.group(1)) if match else None


def _untracked_writes(conn: psycopg.Connection, *, days: int, scan_limit: int
                      ) -> tuple[list[UntrackedWrite], list[str], list[str]]:
    heuristic = [
        "PostgreSQL does not say which session wrote a row, so sidecar looks for evidence:",
        f"- xmin: the transactions of automation runs in the last {plural(days, 'day')} are known (their writes "
        "to tracked tables); an untracked table with inserts or updates in pg_stat_user_tables whose rows carry "
        "one of those transaction ids (xmin) was written by that run. It misses deletes, rows changed again "
        "since, writes inside savepoints, and automations that never write a tracked table; tables over "
        f"{scan_limit} rows are not scanned.",
    ]
    not_checked: list[str] = []
    txids = conn.execute(
        "SELECT DISTINCT s.txid %% %s, r.automation FROM sidecar.statements s "
        "JOIN sidecar.runs r ON r.run_id = s.run_id "
        "WHERE s.at >= now() - make_interval(days => %s) AND r.undo_of IS NULL AND r.automation <> ALL(%s) "
        "LIMIT 200000",
        (_XID_WRAP, days, list(_NOT_AUTOMATIONS)),
    ).fetchall()
    found: dict[str, UntrackedWrite] = {}
    if txids:
        xids, names = [t[0] for t in txids], [t[1] for t in txids]
        for schema, rel, name, live, readable in conn.execute(_CANDIDATES).fetchall():
            if not readable:
                not_checked.append(f"{name} (no SELECT privilege)")
                continue
            if live > scan_limit:
                not_checked.append(f"{name} ({live} rows, over --scan-limit)")
                continue
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL statement_timeout = '5s'")
                    rows = conn.execute(
                        sql.SQL("SELECT x.automation, count(*) FROM ONLY {} t "
                                "JOIN unnest(%s::bigint[], %s::text[]) AS x(xid, automation) "
                                "ON t.xmin::text::bigint = x.xid GROUP BY 1").format(sql.Identifier(schema, rel)),
                        (xids, names),
                    ).fetchall()
            except psycopg.errors.QueryCanceled:
                not_checked.append(f"{name} (scan took over 5s)")
                continue
            if rows:
                counts = dict(rows)
                found[name] = UntrackedWrite(
                    name, counts, "xmin",
                    f"{plural(sum(counts.values()), 'row')} last written by their transactions")
    else:
        heuristic.append(f"  (no automation wrote a tracked table in the last {plural(days, 'day')}: "
                         "nothing to compare with)")
    _from_pg_stat_statements(conn, days, found, heuristic)
    return list(found.values()), heuristic, not_checked


def _from_pg_stat_statements(conn: psycopg.Connection, days: int, found: dict[str, UntrackedWrite],
                             heuristic: list[str]) -> None:
    schema = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    if schema is None:
        heuristic.append("- pg_stat_statements is not installed in this database (CREATE EXTENSION "
                         "pg_stat_statements adds a second source: write statements by the roles automations use).")
        return
    roles = conn.execute(
        "SELECT r.started_by, array_agg(DISTINCT r.automation ORDER BY r.automation) FROM sidecar.runs r "
        "WHERE r.started_at >= now() - make_interval(days => %s) AND r.undo_of IS NULL "
        "AND r.automation <> ALL(%s) GROUP BY 1",
        (days, list(_NOT_AUTOMATIONS)),
    ).fetchall()
    heuristic.append(
        "- pg_stat_statements: write statements run by the roles automations connected as ("
        + (", ".join(r for r, _ in roles) or "none lately")
        + ") whose target table is not tracked; counted since its last reset, and people using the same "
        "roles show up too.")
    if not roles:
        return
    by_role = dict(roles)
    try:
        with conn.transaction():
            rows = conn.execute(
                sql.SQL("SELECT r.rolname, p.query, sum(p.calls)::bigint FROM {}.pg_stat_statements p "
                        "JOIN pg_roles r ON r.oid = p.userid "
                        "WHERE p.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "AND r.rolname = ANY(%s) GROUP BY 1, 2").format(sql.Identifier(schema[0])),
                (list(by_role),),
            ).fetchall()
    except psycopg.Error as exc:
        heuristic.append(f"  (pg_stat_statements could not be read: {exc.diag.message_primary})")
        return
    for role, query, calls in rows:
        target = write_target(query or "")
        if not target:
            continue
        try:
            name, tracked = conn.execute(
                "SELECT sidecar._qualname(to_regclass(%s)), "
                "EXISTS (SELECT FROM sidecar.tracked WHERE relid = to_regclass(%s) AND active)",
                (target, target),
            ).fetchone()
        except psycopg.Error:
            continue
        if name is None or tracked or name.startswith(("sidecar.", "sidecar_drill_")):
            continue
        entry = found.setdefault(name, UntrackedWrite(name, {}, "pg_stat_statements", ""))
        for automation in by_role[role]:
            entry.automations[automation] = entry.automations.get(automation, 0) + int(calls)
        entry.evidence = ((entry.evidence + "; ") if entry.evidence else "") + \
            f"{plural(int(calls), 'call')} of a write statement by role {role}"
