"""Who is on duty for each automation: ``owners(conn)`` says who can pause it,
approve its held writes, undo it, rerun it and read its history, from the
PostgreSQL roles and grants themselves, and flags a duty only superusers (or
nobody) can do. The table inventory is in sidecar/inventory.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..capture import settle
from .inventory import _NOT_AUTOMATIONS

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


# A tracked table as the duties need it: (table, history table, owner, has own triggers).
_TABLE = """sidecar._qualname(t.relid), t.log_table, t.owner,
       EXISTS (SELECT FROM pg_trigger tg WHERE tg.tgrelid = t.relid AND NOT tg.tgisinternal
               AND tg.tgenabled <> 'D' AND tg.tgname NOT LIKE 'sidecar\\_%%')"""


def _automation_tables(conn: psycopg.Connection) -> dict[str, list[tuple[str, str, str | None, bool]]]:
    """Per automation, the tracked tables it wrote (as _TABLE)."""
    out: dict[str, list[tuple[str, str, str | None, bool]]] = {}
    for automation, *table in conn.execute(
        f"""
        SELECT DISTINCT r.automation, {_TABLE}
        FROM sidecar.statements s
        JOIN sidecar.runs r ON r.run_id = s.run_id
        JOIN sidecar.tracked t ON t.tracked_id = s.tracked_id
        JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.active AND r.undo_of IS NULL AND n.nspname NOT LIKE 'sidecar\\_drill\\_%%'
        ORDER BY 1, 2
        """
    ).fetchall():
        out.setdefault(automation, []).append(tuple(table))
    return out


def owners(conn: psycopg.Connection, *, automation: str | None = None,
           extra_tables: list[str] | None = None) -> OwnersReport:
    """Who can pause, approve, undo, rerun and read the history of each automation (see the module doc).

    extra_tables are counted among the automation's tables (the drill names the table it drills).
    """
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    roles = role_states(conn)
    people = conn.execute(
        "SELECT r.rolname, r.rolsuper, r.oid = (SELECT nspowner FROM pg_namespace WHERE nspname = 'sidecar') "
        "FROM pg_roles r WHERE r.rolcanlogin ORDER BY r.rolname"
    ).fetchall()
    paths: dict[tuple[str, str], list[str]] = {}
    for member, group, via in conn.execute(_MEMBERS, ([d[0] for d in DUTIES.values()],)).fetchall():
        paths[(member, group)] = via
    granted = {r.role: r.granted for r in roles}
    candidates = {duty: _candidates(conn, group, kind, target, priv, granted[group] is True, people, paths)
                  for duty, (group, kind, target, priv) in DUTIES.items()}

    written = _automation_tables(conn)
    if automation:
        names = [automation]
    else:
        names = [r[0] for r in conn.execute(
            "SELECT automation FROM sidecar.runs WHERE undo_of IS NULL AND automation <> ALL(%s) "
            "UNION SELECT target FROM sidecar.pauses WHERE scope = 'automation' AND target <> '*' ORDER BY 1",
            (list(_NOT_AUTOMATIONS),),
        ).fetchall()] or ["*"]
    all_tables = [tuple(r) for r in conn.execute(f"SELECT {_TABLE} FROM sidecar.tracked t WHERE t.active ORDER BY 1")]
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
        for duty, (group, *_) in DUTIES.items():
            duties[duty] = d = _duty(conn, duty, candidates[duty], tables)
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


def _candidates(conn: psycopg.Connection, group: str, kind: str, target: str, priv: str, group_has: bool,
                people: list[tuple], paths: dict[tuple[str, str], list[str]]
                ) -> list[tuple[str, bool, str, bool]] | None:
    """Who holds a duty's privilege, whatever the tables: (role, superuser, how, able) in people's order;
    a member of the group who cannot is listed with able false and the reason as how. None: not installed."""
    if not _installed(conn, kind, target):
        return None
    out = []
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
                out.append((role, False, f"member of {group}, which lacks {priv} on {target}", False))
            continue
        out.append((role, is_super, how, True))
    return out


def _duty(conn: psycopg.Connection, duty: str, candidates: list[tuple[str, bool, str, bool]] | None,
          tables: list[tuple]) -> Duty:
    """The duty for one automation: the candidates less those its tables keep out."""
    if candidates is None:
        return Duty([], [], "not installed")
    holders, unable = [], []
    for role, is_super, how, able in candidates:
        why = None if is_super or not able else _table_gap(conn, duty, role, tables)
        if not able:
            unable.append(Holder(role, how))
        elif why:
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
            # An undo writes through the table's undo function, with its owner's rights.
            function = conn.execute(
                "SELECT to_regprocedure(format('sidecar.%%I(text, uuid, jsonb)', 'undo_' || tracked_id))::text "
                "FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone()
            if not function or function[0] is None:
                return f"{table} has no undo function: its owner runs sidecar track {table}"
            if not conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, function[0])).fetchone()[0]:
                return f"cannot execute {function[0]}, the undo function of {table}"
        elif duty == "logs":
            log = f"sidecar.{sql.Identifier(log_table).as_string(conn)}"
            if not conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, log)).fetchone()[0]:
                return f"cannot read the history of {table} ({log})"
    return None

