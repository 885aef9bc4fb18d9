"""`sidecar status`: tracked tables, automations and their pause state, recent runs.

For each automation: the held changes waiting for review (how many; for a paused
automation the first few, in the queue's plain language), and for a paused one
its runs in flight (running, or abandoned by a session that is gone) with what
each wrote last.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from ..capture import history, schema, settle, tracking
from ..errors import SidecarError
from ..review import gate, held
from ..steps import runs
from ..text import describe, render
from ..text.describe import plural
from . import named

HELD_SHOWN = 3  # held changes listed per paused automation; `sidecar queue` has them all


@dataclass
class InFlight:
    """A run of a paused automation that has not finished."""

    run_id: uuid.UUID
    state: str  # running | waiting (a rerun not attached yet) | abandoned (no live session holds it)
    started_at: datetime
    last_write_at: datetime | None = None
    last_write: str | None = None  # the last statement's first row, in plain language
    last_write_rows: int = 0

    @property
    def text(self) -> str:
        how = "still running" if self.state == "running" else f"{self.state} (no live session)"
        head = f"run {str(self.run_id)[:8]} {how}"
        if self.last_write_at is None:
            return f"{head}, started {render.when(self.started_at)}, no write yet"
        line = f"{head}, last write {render.when(self.last_write_at)}"
        if self.last_write:
            line += f": {self.last_write}"
            if self.last_write_rows > 1:
                line += f" (and {plural(self.last_write_rows - 1, 'more row')})"
        return line


@dataclass
class HeldItem:
    """A held change waiting for review, as `sidecar queue` words it."""

    pending_id: int
    run_id: uuid.UUID
    action: str
    status: str
    text: str


@dataclass
class AutomationState:
    name: str
    state: str
    runs: int
    running: int
    last_run: str | None
    paused: gate.Pause | None = None
    in_flight: list[InFlight] = field(default_factory=list)
    pending: int = 0  # held changes waiting for review
    held: list[HeldItem] = field(default_factory=list)  # the first few, for a paused automation


@dataclass
class StatusReport:
    version: int
    tables: list[tracking.TrackedTable]
    automations: list[AutomationState]
    pauses: list[gate.Pause]
    recent: list[runs.RunInfo]
    events: list[tuple]
    history_bytes: int
    # How history follows ALTER TABLE: 'watched' (event triggers), 'checked' (each
    # captured statement), 'lost' (capture relies on event triggers that are gone or disabled).
    shapes: str = "checked"

    def text(self) -> str:
        lines = [f"sidecar schema version {self.version}; history {self.history_bytes / 1_048_576:.1f} MB"]
        lines.append("")
        lines.append("Tracked tables")
        for t in self.tables:
            label = f", label {t.label_column}" if t.label_column else ""
            lines.append(f"  {t.table}  (capture {t.capture}{label})")
        if not self.tables:
            lines.append("  none yet: sidecar track TABLE")
        elif self.shapes == "watched":
            lines.append("  schema changes: followed at each ALTER TABLE (event triggers sidecar_watch_alter/_drop)")
        elif self.shapes == "lost":
            lines.append("  SCHEMA CHANGES NOT FOLLOWED: event trigger sidecar_watch_alter or sidecar_watch_drop "
                         "is gone or disabled; run sidecar install")
        else:
            lines.append("  schema changes: checked by every captured statement "
                         "(sidecar install as a superuser follows them at ALTER TABLE instead)")
        lines.append("")
        lines.append("Automations")
        everything = next((p for p in self.pauses if p.scope == "automation" and p.target == "*"), None)
        if everything:
            lines.append(f"  EVERY AUTOMATION PAUSED since {render.when(everything.paused_at)} "
                         f"by {everything.paused_by}: {everything.reason}")
        for a in self.automations:
            line = f"  {a.name:<20} {a.state:<8} {plural(a.runs, 'run')}, last {a.last_run or '-'}"
            if a.pending:
                line += f"; {plural(a.pending, 'held change')} to review"
            if a.paused:
                line += f"\n    paused since {render.when(a.paused.paused_at)} by {a.paused.paused_by}: {a.paused.reason}"
            for r in a.in_flight:
                line += f"\n    {r.text}"
            if a.held:
                line += "\n    waiting for review (sidecar approve ID | sidecar reject ID --reason TEXT):"
                for item in a.held:
                    line += f"\n      #{item.pending_id}  {item.text}"
                if a.pending > len(a.held):
                    line += f"\n      … and {a.pending - len(a.held)} more: sidecar queue"
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
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    version = schema.installed_version(conn)
    if version is None:
        raise SidecarError("sidecar is not installed in this database; run: sidecar install")
    pauses = gate.pauses(conn)
    paused = {p.target: p for p in pauses if p.scope == "automation"}
    automations = []
    pending = dict(conn.execute(
        "SELECT r.automation, count(*) FROM sidecar.pending p JOIN sidecar.runs r USING (run_id) "
        "WHERE p.status IN ('pending', 'conflict') GROUP BY r.automation"
    ).fetchall())
    for name, n, running, last in conn.execute(
        "SELECT automation, count(*), count(*) FILTER (WHERE status = 'running'), max(started_at) "
        "FROM sidecar.runs WHERE undo_of IS NULL GROUP BY automation ORDER BY automation"
    ).fetchall():
        p = paused.get(name) or paused.get("*")
        a = AutomationState(name, "paused" if p else "active", n, running, render.when(last), p,
                            pending=pending.get(name, 0))
        if p:
            a.in_flight = _in_flight(conn, name)
            a.held = _held(conn, name) if a.pending else []
        automations.append(a)
    for name, p in paused.items():
        if name != "*" and name not in {a.name for a in automations}:
            automations.append(AutomationState(name, "paused", 0, 0, None, p))
    history_bytes = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "WHERE c.relnamespace = 'sidecar'::regnamespace AND c.relkind = 'r'"
    ).fetchone()[0]
    events = named.events(conn, conn.execute(
        "SELECT at, actor, summary, detail FROM sidecar.events ORDER BY at DESC LIMIT 10").fetchall(), 2, 3)
    rendered, triggers_on = conn.execute(
        "SELECT coalesce(bool_or(shape_watched), false), sidecar._shapes_watched() FROM sidecar.tracked WHERE active"
    ).fetchone()
    shapes = ("watched" if triggers_on else "lost") if rendered else "checked"
    return StatusReport(version, tracking.list_tracked(conn), automations, pauses,
                        runs.list_runs(conn, limit=10), events, int(history_bytes), shapes)


def _in_flight(conn: psycopg.Connection, automation: str) -> list[InFlight]:
    """The automation's unfinished runs, oldest first, each with its last write."""
    found = []
    for run_id, started_at, alive, waiting, stmt_id, action_id, at in conn.execute(
        """
        SELECT r.run_id, r.started_at,
               EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = r.backend_pid
                       AND (r.backend_start IS NULL OR a.backend_start = r.backend_start)),
               r.backend_pid IS NULL AND r.rerun_of IS NOT NULL AND s.stmt_id IS NULL,
               s.stmt_id, s.action_id, s.at
        FROM sidecar.runs r
        LEFT JOIN LATERAL (SELECT stmt_id, action_id, at FROM sidecar.statements
                           WHERE run_id = r.run_id ORDER BY stmt_id DESC LIMIT 1) s ON true
        WHERE r.automation = %s AND r.status = 'running' ORDER BY r.started_at
        """,
        (automation,),
    ).fetchall():
        run = InFlight(run_id, runs.state_word("running", alive=alive, waiting=waiting), started_at, at)
        if action_id is not None:
            # The rows of the last statement, read from its action (one step or transaction, not the whole run).
            rows = list(history.changes(conn, run_id, action_ids=[action_id], stmt_id=stmt_id))
            if rows:
                run.last_write, run.last_write_rows = describe.change_sentence(rows[0]), len(rows)
        found.append(run)
    return found


def _held(conn: psycopg.Connection, automation: str, limit: int = HELD_SHOWN) -> list[HeldItem]:
    """The automation's first held changes, worded as in `sidecar queue`."""
    rows = conn.execute(
        held._SELECT + " WHERE r.automation = %s AND p.status IN ('pending', 'conflict') "
        "ORDER BY p.pending_id LIMIT %s",
        (automation, limit),
    ).fetchall()
    items = [held._to_item(r) for r in rows]
    return [HeldItem(i.pending_id, i.run_id, i.action, i.status, i.text) for i in items]
