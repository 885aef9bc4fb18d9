"""Know what automations touch: the table inventory and who is on duty for each automation.

``inventory(conn)`` lists every tracked table with its owner, risk and kind
(set by ``sidecar track --owner --risk --kind``), capture mode and state, hold
rules, and which automations wrote how many rows to it lately; it warns about
high-risk tables automations write without a hold rule, tables nobody owns,
capture that is off, and untracked tables automations appear to write.

``owners(conn)`` says, per automation, who can pause it, approve its held
writes, undo it, rerun it and read its history, from the PostgreSQL roles and
grants themselves, and flags a duty only superusers (or nobody) can do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .describe import plural

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
    kind: str  # high-risk-no-hold | no-owner | capture-off | untracked-writes
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

_EVER = """
SELECT s.tracked_id, array_agg(DISTINCT r.automation ORDER BY r.automation)
FROM sidecar.statements s JOIN sidecar.runs r ON r.run_id = s.run_id
WHERE r.undo_of IS NULL AND r.automation <> ALL(%s)
GROUP BY s.tracked_id
"""

_WRITERS = """
SELECT r.automation, count(*)
FROM sidecar.{log} l
JOIN sidecar.statements s ON s.stmt_id = l._stmt
JOIN sidecar.runs r ON r.run_id = s.run_id
WHERE l._stmt >= %(lo)s AND s.tracked_id = %(id)s AND s.at >= now() - make_interval(days => %(days)s)
  AND r.undo_of IS NULL AND r.automation <> ALL(%(skip)s) AND (l._kind = 'N' OR s.op = 'D')
GROUP BY 1
"""


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
    rules = _rules(conn)
    ever = dict(conn.execute(_EVER, (list(_NOT_AUTOMATIONS),)).fetchall())
    drills = _last_drills(conn)
    tables: list[TableEntry] = []
    warnings: list[InventoryWarning] = []
    for tracked_id, name, owner, risk, kind, capture, log_table, triggers in conn.execute(_TABLES).fetchall():
        lo = conn.execute(
            "SELECT min(stmt_id) FROM sidecar.statements WHERE tracked_id = %s "
            "AND at >= now() - make_interval(days => %s)", (tracked_id, days)
        ).fetchone()[0]
        writers: dict[str, int] = {}
        if lo is not None:
            writers = dict(conn.execute(
                sql.SQL(_WRITERS).format(log=sql.Identifier(log_table)),
                {"lo": lo, "id": tracked_id, "days": days, "skip": list(_NOT_AUTOMATIONS)},
            ).fetchall())
        table_rules = rules.get(tracked_id, [])
        entry = TableEntry(name, owner, risk, kind, capture, _capture_state(triggers),
                           [_rule_text(r) for r in table_rules], writers, list(ever.get(tracked_id, [])),
                           drills.get(name))
        tables.append(entry)
        warnings.extend(_table_warnings(entry, table_rules))
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


# -- owners ----------------------------------------------------------------------

# duty -> the group role that grants it, and the object whose privilege it needs.
DUTIES: dict[str, tuple[str, str, str, str]] = {
    "pause": ("sidecar_pauser", "function", "sidecar.pause(text,text)", "EXECUTE"),
    "approve": ("sidecar_approver", "function", "sidecar.approve(bigint,text)", "EXECUTE"),
    "undo": ("sidecar_undoer", "function", "sidecar._undo_begin(uuid,jsonb)", "EXECUTE"),
    "rerun": ("sidecar_rerunner", "function", "sidecar._rerun_open(uuid,jsonb,jsonb,text,jsonb)", "EXECUTE"),
    "logs": ("sidecar_viewer", "table", "sidecar.events", "SELECT"),
}


@dataclass
class Holder:
    role: str
    how: str  # via sidecar_pauser, superuser, owns schema sidecar, direct grant


@dataclass
class Duty:
    holders: list[Holder]
    unable: list[Holder]  # members who still cannot (the reason in .how)
    flag: str | None  # nobody | superusers only | not installed | None


@dataclass
class RoleState:
    role: str
    exists: bool
    granted: bool | None  # None: what it grants is not installed
    needs: str


@dataclass
class AutomationDuties:
    automation: str
    tables: list[str]
    table_owners: dict[str, str | None]
    duties: dict[str, Duty]


@dataclass
class OwnersReport:
    roles: list[RoleState]
    automations: list[AutomationDuties]
    flags: list[str]

    def text(self) -> str:
        lines = []
        for a in self.automations:
            head = "Every automation (none has run yet)" if a.automation == "*" else f"Automation {a.automation}"
            tables = ", ".join(f"{t} (owner {a.table_owners.get(t) or '-'})" for t in a.tables)
            lines.append(f"{head}" + (f": writes {tables}" if tables else ""))
            for duty, d in a.duties.items():
                who = ", ".join(f"{h.role} ({h.how})" for h in d.holders) or "nobody"
                line = f"  {duty:<8} {who}"
                if d.flag:
                    line += f"   <- {d.flag.upper()}"
                lines.append(line)
                for h in d.unable:
                    lines.append(f"  {'':<8} not {h.role}: {h.how}")
            lines.append("")
        if self.flags:
            lines.append("Flags")
            lines.extend(f"  ! {f}" for f in self.flags)
        else:
            lines.append("Every duty has someone besides superusers.")
        return "\n".join(lines).rstrip()


_MEMBERS = """
WITH RECURSIVE members(member, grp, via) AS (
    SELECT am.member, g.rolname, ARRAY[g.rolname::text]
    FROM pg_roles g JOIN pg_auth_members am ON am.roleid = g.oid
    WHERE g.rolname = ANY(%s)
  UNION
    SELECT am.member, m.grp, r.rolname::text || m.via
    FROM members m JOIN pg_roles r ON r.oid = m.member
    JOIN pg_auth_members am ON am.roleid = m.member
    WHERE cardinality(m.via) < 16
)
SELECT DISTINCT ON (m.member, m.grp) r.rolname, m.grp, m.via
FROM members m JOIN pg_roles r ON r.oid = m.member
WHERE r.rolcanlogin
ORDER BY m.member, m.grp, cardinality(m.via)
"""


def _privilege(conn: psycopg.Connection, role: str, kind: str, target: str, priv: str) -> bool:
    query = ("SELECT has_function_privilege(%s, %s, %s)" if kind == "function"
             else "SELECT has_table_privilege(%s, %s, %s)")
    return bool(conn.execute(query, (role, target, priv)).fetchone()[0])


def _installed(conn: psycopg.Connection, kind: str, target: str) -> bool:
    query = "SELECT to_regprocedure(%s) IS NOT NULL" if kind == "function" else "SELECT to_regclass(%s) IS NOT NULL"
    return bool(conn.execute(query, (target,)).fetchone()[0])


def role_states(conn: psycopg.Connection) -> list[RoleState]:
    """Each operator role: does it exist, and does it hold the privilege its duty needs?"""
    out = []
    for duty, (role, kind, target, priv) in DUTIES.items():
        exists = conn.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (role,)).fetchone()[0]
        granted = None
        if exists and _installed(conn, kind, target):
            granted = _privilege(conn, role, kind, target, priv)
        out.append(RoleState(role, exists, granted, f"{priv} on {target}"))
    return out


def _automation_tables(conn: psycopg.Connection) -> dict[str, list[tuple[str, str, str | None, bool]]]:
    """Per automation, the tracked tables it wrote: (table, history table, owner, has own triggers)."""
    out: dict[str, list[tuple[str, str, str | None, bool]]] = {}
    for automation, name, log_table, owner, own_triggers in conn.execute(
        """
        SELECT DISTINCT r.automation, sidecar._qualname(t.relid), t.log_table, t.owner,
               EXISTS (SELECT FROM pg_trigger tg WHERE tg.tgrelid = t.relid AND NOT tg.tgisinternal
                       AND tg.tgenabled <> 'D' AND tg.tgname NOT LIKE 'sidecar\\_%%')
        FROM sidecar.statements s
        JOIN sidecar.runs r ON r.run_id = s.run_id
        JOIN sidecar.tracked t ON t.tracked_id = s.tracked_id
        JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.active AND r.undo_of IS NULL AND n.nspname NOT LIKE 'sidecar\\_drill\\_%%'
        ORDER BY 1, 2
        """
    ).fetchall():
        out.setdefault(automation, []).append((name, log_table, owner, own_triggers))
    return out


def owners(conn: psycopg.Connection, *, automation: str | None = None,
           extra_tables: list[str] | None = None) -> OwnersReport:
    """Who can pause, approve, undo, rerun and read the history of each automation (see the module doc).

    extra_tables are counted among the automation's tables (the drill names the table it drills).
    """
    roles = role_states(conn)
    people = conn.execute(
        "SELECT r.rolname, r.rolsuper, r.oid = (SELECT nspowner FROM pg_namespace WHERE nspname = 'sidecar') "
        "FROM pg_roles r WHERE r.rolcanlogin ORDER BY r.rolname"
    ).fetchall()
    paths: dict[tuple[str, str], list[str]] = {}
    for member, group, via in conn.execute(_MEMBERS, ([d[0] for d in DUTIES.values()],)).fetchall():
        paths[(member, group)] = via

    written = _automation_tables(conn)
    if automation:
        names = [automation]
    else:
        names = [r[0] for r in conn.execute(
            "SELECT automation FROM sidecar.runs WHERE undo_of IS NULL AND automation <> ALL(%s) "
            "UNION SELECT target FROM sidecar.pauses WHERE scope = 'automation' AND target <> '*' ORDER BY 1",
            (list(_NOT_AUTOMATIONS),),
        ).fetchall()] or ["*"]
    all_tables = [(t.table, t.log_table, t.owner, t.own_triggers) for t in _tracked_brief(conn)]
    extra = [t for t in all_tables if t[0] in set(extra_tables or [])]

    result, flags = [], []
    for name in names:
        if name == "*":
            tables = [] if extra else all_tables
        else:
            tables = written.get(name, [])
        for t in extra:
            if t[0] not in {x[0] for x in tables}:
                tables = [*tables, t]
        duties = {}
        for duty, (group, kind, target, priv) in DUTIES.items():
            duties[duty] = _duty(conn, duty, group, kind, target, priv, people, paths, tables)
            d = duties[duty]
            if d.flag in ("nobody", "superusers only"):
                who = "every automation" if name == "*" else name
                fix = f"GRANT {group} TO <a person on call>"
                if d.unable:
                    fix = "; ".join(f"{h.role} {h.how.split(', but ')[-1]}" for h in d.unable) + f"; or {fix}"
                flags.append(f"{who}: {duty}: " + ("nobody can" if d.flag == "nobody" else
                             "nobody but superusers and the schema owner can") + f"; {fix}")
        result.append(AutomationDuties(name, [t[0] for t in tables], {t[0]: t[2] for t in tables}, duties))
    for r in roles:
        if not r.exists:
            flags.append(f"role {r.role} does not exist: run sidecar install as a role with CREATEROLE")
        elif r.granted is False:
            flags.append(f"role {r.role} lacks {r.needs}: its members cannot do that; grant it "
                         "(sidecar install grants what it knows of)")
    return OwnersReport(roles, result, flags)


@dataclass
class _Brief:
    table: str
    log_table: str
    owner: str | None
    own_triggers: bool


def _tracked_brief(conn: psycopg.Connection) -> list[_Brief]:
    return [_Brief(*r) for r in conn.execute(
        """
        SELECT sidecar._qualname(t.relid), t.log_table, t.owner,
               EXISTS (SELECT FROM pg_trigger tg WHERE tg.tgrelid = t.relid AND NOT tg.tgisinternal
                       AND tg.tgenabled <> 'D' AND tg.tgname NOT LIKE 'sidecar\\_%%')
        FROM sidecar.tracked t WHERE t.active ORDER BY 1
        """
    ).fetchall()]


def _duty(conn, duty, group, kind, target, priv, people, paths, tables) -> Duty:
    if not _installed(conn, kind, target):
        return Duty([], [], "not installed")
    group_has = conn.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (group,)).fetchone()[0] \
        and _privilege(conn, group, kind, target, priv)
    holders, unable = [], []
    for role, is_super, owns_schema in people:
        via = paths.get((role, group))
        if is_super:
            how = "superuser"
        elif owns_schema:
            how = "owns schema sidecar"
        elif _privilege(conn, role, kind, target, priv):
            how = "via " + " -> ".join(via) if via else "direct grant"
        elif via and group_has:
            how = "via " + " -> ".join(via) + " (SET ROLE)"
        else:
            if via:
                unable.append(Holder(role, f"member of {group}, which lacks {priv} on {target}"))
            continue
        why = None if is_super else _table_gap(conn, duty, role, tables)
        if why:
            unable.append(Holder(role, f"{how}, but {why}"))
        else:
            holders.append(Holder(role, how))
    if not holders:
        flag = "nobody"
    elif all(h.how in ("superuser", "owns schema sidecar") for h in holders):
        flag = "superusers only"
    else:
        flag = None
    return Duty(holders, unable, flag)


def _table_gap(conn: psycopg.Connection, duty: str, role: str, tables) -> str | None:
    """What keeps a role from doing a duty on the automation's tables (None: nothing)."""
    for table, log_table, _, own_triggers in tables:
        if duty == "undo":
            for priv in ("INSERT", "UPDATE", "DELETE"):
                if not conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, priv)).fetchone()[0]:
                    return f"has no {priv} on {table}"
            if own_triggers and not conn.execute(
                "SELECT pg_has_role(%s, (SELECT relowner FROM pg_class WHERE oid = %s::regclass), 'USAGE')",
                (role, table),
            ).fetchone()[0]:
                return f"does not own {table}, whose own triggers an undo must switch off"
        elif duty == "logs":
            log = f"sidecar.{sql.Identifier(log_table).as_string(conn)}"
            if not conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, log)).fetchone()[0]:
                return f"cannot read the history of {table} ({log})"
    return None

