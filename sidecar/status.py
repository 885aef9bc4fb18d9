"""`sidecar status`: tracked tables, automations and their pause state, recent runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from . import gate, render, runs, schema, tracking
from .describe import plural
from .errors import SidecarError


@dataclass
class AutomationState:
    name: str
    state: str
    runs: int
    running: int
    last_run: str | None
    paused: gate.Pause | None = None
    in_flight: list[str] = field(default_factory=list)


@dataclass
class StatusReport:
    version: int
    tables: list[tracking.TrackedTable]
    automations: list[AutomationState]
    pauses: list[gate.Pause]
    recent: list[runs.RunInfo]
    events: list[tuple]
    history_bytes: int

    def text(self) -> str:
        lines = [f"sidecar schema version {self.version}; history {self.history_bytes / 1_048_576:.1f} MB"]
        lines.append("")
        lines.append("Tracked tables")
        for t in self.tables:
            label = f", label {t.label_column}" if t.label_column else ""
            lines.append(f"  {t.table}  (capture {t.capture}{label})")
        if not self.tables:
            lines.append("  none yet: sidecar track TABLE")
        lines.append("")
        lines.append("Automations")
        everything = next((p for p in self.pauses if p.scope == "automation" and p.target == "*"), None)
        if everything:
            lines.append(f"  EVERY AUTOMATION PAUSED since {render.when(everything.paused_at)} "
                         f"by {everything.paused_by}: {everything.reason}")
        for a in self.automations:
            line = f"  {a.name:<20} {a.state:<8} {plural(a.runs, 'run')}, last {a.last_run or '-'}"
            if a.paused:
                line += f"\n    paused since {render.when(a.paused.paused_at)} by {a.paused.paused_by}: {a.paused.reason}"
            for r in a.in_flight:
                line += f"\n    still running: {r}"
            lines.append(line)
        if not self.automations:
            lines.append("  none yet")
        for p in self.pauses:
            if p.scope == "table":
                lines.append(f"  table {p.target} paused since {render.when(p.paused_at)} by {p.paused_by}: {p.reason}")
        lines.append("")
        lines.append("Recent runs")
        lines.append(render.runs_table(self.recent))
        if self.events:
            lines.append("")
            lines.append("Recent events")
            for at, actor, summary in self.events:
                lines.append(f"  {render.when(at)}  {actor}: {summary}")
        return "\n".join(lines)


def gather(conn: psycopg.Connection) -> StatusReport:
    version = schema.installed_version(conn)
    if version is None:
        raise SidecarError("sidecar is not installed in this database; run: sidecar install")
    pauses = gate.pauses(conn)
    paused = {p.target: p for p in pauses if p.scope == "automation"}
    automations = []
    for name, n, running, last in conn.execute(
        "SELECT automation, count(*), count(*) FILTER (WHERE status = 'running'), max(started_at) "
        "FROM sidecar.runs WHERE undo_of IS NULL GROUP BY automation ORDER BY automation"
    ).fetchall():
        p = paused.get(name) or paused.get("*")
        in_flight = []
        if p:
            for run_id, last_write in conn.execute(
                "SELECT r.run_id, (SELECT max(at) FROM sidecar.statements s WHERE s.run_id = r.run_id) "
                "FROM sidecar.runs r WHERE r.automation = %s AND r.status = 'running' ORDER BY r.started_at",
                (name,),
            ).fetchall():
                in_flight.append(f"run {str(run_id)[:8]}, last write {render.when(last_write)}")
        automations.append(AutomationState(name, "paused" if p else "active", n, running,
                                           render.when(last), p, in_flight))
    for name, p in paused.items():
        if name != "*" and name not in {a.name for a in automations}:
            automations.append(AutomationState(name, "paused", 0, 0, None, p))
    history_bytes = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "WHERE c.relnamespace = 'sidecar'::regnamespace AND c.relkind = 'r'"
    ).fetchone()[0]
    events = conn.execute("SELECT at, actor, summary FROM sidecar.events ORDER BY at DESC LIMIT 10").fetchall()
    return StatusReport(version, tracking.list_tracked(conn), automations, pauses,
                        runs.list_runs(conn, limit=10), events, int(history_bytes))
