"""Retention: purge old history in batches, only when an operator asks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from ..capture import settle
from ..text.describe import plural


@dataclass
class PurgeReport:
    before: datetime
    automation: str | None
    runs_purged: int = 0
    rows_removed: int = 0
    kept: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    partitions_dropped: int = 0  # whole history partitions dropped (their rows count in rows_removed, estimated)
    partitions_kept: list[str] = field(default_factory=list)  # why a partition of old history stays

    def text(self) -> str:
        lines = [f"Purged {plural(self.runs_purged, 'run')} started before {self.before:%Y-%m-%d %H:%M}"
                 + (f" of {self.automation}" if self.automation else "")
                 + f": {plural(self.rows_removed, 'row image')} removed"
                 + (f" ({plural(self.partitions_dropped, 'history partition')} dropped whole)"
                    if self.partitions_dropped else "")]
        for run_id, why in self.kept:
            lines.append(f"  kept run {str(run_id)[:8]}: {why}")
        for why in dict.fromkeys(self.partitions_kept):
            lines.append(f"  kept a history partition whole: {why}")
        return "\n".join(lines)


def purge(conn: psycopg.Connection, before: datetime, *, automation: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> PurgeReport:
    """Remove the captured history of finished runs started before `before`, one run per transaction.

    Runs still running, with held items, or being undone are kept. Each run is
    purged in its own transaction, so an interrupted purge is simply run again.
    """
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    report = PurgeReport(before, automation)
    _drop_partitions(conn, report)
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
                    "rows": report.rows_removed, "partitions": report.partitions_dropped})),
        )
    return report


def _drop_partitions(conn: psycopg.Connection, report: PurgeReport) -> None:
    """Drop the history partitions whose statements all belong to purgeable runs: no row is
    deleted, so no dead tuple is left and the time follows the number of partitions, not rows.
    Statement ranges are taken oldest first, each in its own transaction, up to the first that holds
    a run started after the limit; a range kept (a run still running, held or being undone, or of
    another automation) is left to the run-by-run purge. The runs whose statements were all in
    dropped partitions are marked purged here; the runs at the edges are purged row by row after."""
    if not conn.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = 'sidecar.statements'::regclass").fetchone()[0]:
        return
    ranges = conn.execute(
        "SELECT b.lo, b.hi FROM sidecar._partition_bounds('sidecar.statements') b, sidecar.stmt_seq s "
        "WHERE b.hi <= s.last_value ORDER BY b.hi"  # only ranges whose every id was handed out
    ).fetchall()
    dropped: list[uuid.UUID] = []
    kept: set[uuid.UUID] = set()
    stop = None
    for lo, hi in ranges:
        try:
            with conn.transaction():
                outcome, why, runs, partitions, images = conn.execute(
                    "SELECT * FROM sidecar._purge_range(%s, %s, %s, %s)",
                    (lo, hi, report.before, report.automation)).fetchone()
        except psycopg.errors.LockNotAvailable:
            outcome, why, runs, partitions, images = "kept", "capture held its lock for over a second", [], 0, 0
        if outcome == "newer":
            stop = lo
            break
        if outcome == "purgeable":
            dropped.extend(runs)
            report.partitions_dropped += partitions
            report.rows_removed += images
        else:
            kept.update(runs)
            report.partitions_kept.append(why)
    if stop is None:
        stop = ranges[-1][1] if ranges else None
    gone = [r for r in dict.fromkeys(dropped) if r not in kept]
    if gone and stop is not None:
        with conn.transaction():
            report.runs_purged += conn.execute("SELECT sidecar._mark_purged(%s, %s)", (gone, stop)).fetchone()[0]
