"""Retention: purge old history in batches, only when an operator asks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from ..text.describe import plural


@dataclass
class PurgeReport:
    before: datetime
    automation: str | None
    runs_purged: int = 0
    rows_removed: int = 0
    kept: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"Purged {plural(self.runs_purged, 'run')} started before {self.before:%Y-%m-%d %H:%M}"
                 + (f" of {self.automation}" if self.automation else "")
                 + f": {plural(self.rows_removed, 'row image')} removed"]
        for run_id, why in self.kept:
            lines.append(f"  kept run {str(run_id)[:8]}: {why}")
        return "\n".join(lines)


def purge(conn: psycopg.Connection, before: datetime, *, automation: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> PurgeReport:
    """Remove the captured history of finished runs started before `before`, one run per transaction.

    Runs still running, with held items, or being undone are kept. Each run is
    purged in its own transaction, so an interrupted purge is simply run again.
    """
    report = PurgeReport(before, automation)
    candidates = conn.execute(
        "SELECT run_id, status FROM sidecar.runs WHERE started_at < %s AND purged_at IS NULL "
        "AND (%s::text IS NULL OR automation = %s) ORDER BY started_at",
        (before, automation, automation),
    ).fetchall()
    for i, (run_id, status) in enumerate(candidates, 1):
        if status == "running":
            report.kept.append((run_id, "still running"))
            continue
        with conn.transaction():
            removed = conn.execute("SELECT sidecar._purge_run(%s)", (run_id,)).fetchone()[0]
        if removed is None:
            report.kept.append((run_id, "held items wait for review, or an undo of it is in progress"))
        else:
            report.runs_purged += 1
            report.rows_removed += removed
        if progress:
            progress(i, len(candidates))
    if report.runs_purged:
        conn.execute(
            "SELECT sidecar._log_event('purge', NULL, %s, %s)",
            (report.text().splitlines()[0],
             Jsonb({"before": before.isoformat(), "automation": automation, "runs": report.runs_purged,
                    "rows": report.rows_removed})),
        )
    return report
