"""Reruns: open a new run linked to a failed one, redo only the steps not done.

A rerun never touches a step completed in the lineage (the database refuses a
second completion), and refuses a step whose declared rows a person changed
since the run planned it, unless forced. Every rerun is logged in plain
language in sidecar.events.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from ..capture import settle
from ..errors import SidecarError, UsageError
from ..text.describe import plural, row_label
from . import runs as runs_mod


@dataclass
class StepState:
    key: str
    state: str  # completed | failed | blocked | never started
    detail: str = ""  # one line: by whom, why it failed or is blocked
    diagnostics: str | None = None  # a failure's full report (detail, hint, context), for operators


@dataclass
class RerunReport:
    original: uuid.UUID
    rerun_id: uuid.UUID | None
    automation: str
    steps: list[StepState]
    redo: list[str]
    blocked: list[tuple[str, str]]
    log: list[str] = field(default_factory=list)
    exit_code: int | None = None


def step_states(conn: psycopg.Connection, run_id: uuid.UUID, *, stopped: bool = False) -> list[StepState]:
    """Each step of the run's lineage: completed (by whom), failed (why), or never started.

    stopped: the run failed or was abandoned. A step cut off with its session
    could not record its failure: the first planned step not done is the one
    it was on.
    """
    settle.keep_settled(conn)
    rows = conn.execute(
        """
        WITH lineage AS (
            SELECT r.lineage AS root FROM sidecar.runs r WHERE r.run_id = %(run)s
        ), runs_of AS (
            SELECT r.run_id FROM sidecar.runs r, lineage WHERE r.lineage = lineage.root
        ), keys AS (
            SELECT key, min(ord) AS ord FROM sidecar.step_plan WHERE run_id IN (SELECT run_id FROM runs_of) GROUP BY key
            UNION
            SELECT key, NULL FROM sidecar.step_failures WHERE run_id IN (SELECT run_id FROM runs_of)
            UNION
            SELECT s.key, NULL FROM sidecar.steps s, lineage WHERE s.lineage = lineage.root
        )
        SELECT k.key, min(k.ord),
               (SELECT s.run_id FROM sidecar.steps s, lineage WHERE s.lineage = lineage.root AND s.key = k.key),
               (SELECT array[f.error, f.detail] FROM sidecar.step_failures f
                WHERE f.run_id IN (SELECT run_id FROM runs_of) AND f.key = k.key ORDER BY f.failed_at DESC LIMIT 1),
               -- An undo (not undone in turn) of the completing run, or of the step's action.
               (SELECT u.run_id FROM sidecar.steps s CROSS JOIN lineage
                JOIN sidecar.actions a ON a.action_id = s.action_id
                JOIN sidecar.runs u ON u.undo_of = s.run_id AND u.status = 'succeeded' AND u.undone_by IS NULL
                WHERE s.lineage = lineage.root AND s.key = k.key
                  AND (u.meta ->> 'scope' = 'run' OR coalesce(u.meta -> 'actions', '[]') ? a.key)
                ORDER BY u.started_at DESC LIMIT 1),
               (SELECT max(f.failed_at) FROM sidecar.step_failures f
                WHERE f.run_id IN (SELECT run_id FROM runs_of) AND f.key = k.key),
               -- The latest rerun that blocked it (its rows changed since), and when.
               (SELECT array[b.reason, br.started_at::text] FROM sidecar.step_blocks b
                JOIN sidecar.runs br ON br.run_id = b.run_id
                WHERE b.run_id IN (SELECT run_id FROM runs_of) AND b.key = k.key
                  AND coalesce(br.meta -> 'blocked', '{}') ? b.key
                ORDER BY br.started_at DESC LIMIT 1)
        FROM keys k GROUP BY k.key ORDER BY min(k.ord) NULLS LAST, k.key
        """,
        {"run": run_id},
    ).fetchall()
    out = []
    for key, ord_, done_by, failure, undone_by, failed_at, block in rows:
        error, diagnostics = failure if failure else (None, None)
        blocked_at = datetime.fromisoformat(block[1]) if block else None
        if not done_by and block and (failed_at is None or blocked_at > failed_at):
            out.append(StepState(key, "blocked", block[0]))
            continue
        if done_by and undone_by:
            # Still done for the lineage, so a rerun skips it: say that its changes are gone.
            out.append(StepState(key, "completed", f"by run {str(done_by)[:8]}; undone since by run "
                                                   f"{str(undone_by)[:8]}, and not redone by a rerun"))
        elif done_by:
            out.append(StepState(key, "completed", f"by run {str(done_by)[:8]}"))
        elif error:
            out.append(StepState(key, "failed", error, diagnostics))
        elif stopped and ord_ is not None and not any(s.state in ("failed", "blocked") for s in out):
            out.append(StepState(key, "failed", "the run stopped while on it (its session ended)"))
        else:
            out.append(StepState(key, "never started"))
    return out


def steps_of(conn: psycopg.Connection, run_ref: str) -> tuple[runs_mod.RunInfo, list[StepState]]:
    """A run and each step of its lineage (completed, failed, blocked, never started); opens nothing."""
    info = runs_mod.get(conn, run_ref)
    return info, step_states(conn, info.run_id, stopped=info.state in ("failed", "abandoned"))


def _check_targets(conn: psycopg.Connection, run_id: uuid.UUID, key: str) -> list[str]:
    """Why the step's declared rows no longer match what the run planned on (empty: they match)."""
    row = conn.execute(
        "SELECT p.targets FROM sidecar.step_plan p JOIN sidecar.runs r ON r.run_id = p.run_id "
        "WHERE r.lineage = (SELECT lineage FROM sidecar.runs WHERE run_id = %s) "
        "AND p.key = %s ORDER BY r.started_at LIMIT 1",
        (run_id, key),
    ).fetchone()
    reasons = []
    for target in (row[0] if row else []):
        now = conn.execute(
            "SELECT sidecar._row_fingerprint(%s::regclass, %s)", (target["table"], Jsonb(target["key"]))
        ).fetchone()[0]
        if now != target.get("fingerprint"):
            label = row_label(target["table"], target["key"])
            what = "deleted" if now is None else "changed"
            reasons.append(f"a person {what} {label} after the run")
    return reasons


def rerun(conn: psycopg.Connection, run_ref: str, *, steps: list[str] | None = None, force: bool = False,
          reason: str | None = None) -> RerunReport:
    """Open a rerun of RUN: report its steps, check their rows, and block the steps that must not be redone."""
    original = runs_mod.get(conn, run_ref)
    if original.undo_of:
        raise UsageError(f"run {original.run_id} is an undo; rerun the original run instead")
    if original.status == "running" and original.alive and not force:
        raise UsageError(
            f"run {original.run_id} is still held by a live session (pid {_pid(conn, original.run_id)}); "
            "wait for it, or add --force if you are sure it is stuck"
        )
    states = step_states(conn, original.run_id, stopped=original.state in ("failed", "abandoned"))
    if not states:
        raise UsageError(
            f"run {original.run_id} recorded no steps, so a rerun cannot tell what is left; "
            "wrap the automation's work in sidecar steps (run.step / sidecar.begin_step)"
        )
    known = {s.key for s in states}
    for key in steps or []:
        if key not in known:
            raise UsageError(f"run {original.run_id} has no step {key!r}",
                             shell=f"sidecar rerun {str(original.run_id)[:8]} lists them")
    todo = [s for s in states if s.state != "completed" and (not steps or s.key in steps)]
    log = [f"{s.key}: {s.state}" + (f" ({s.detail})" if s.detail else "") for s in states]
    blocked: list[tuple[str, str]] = []
    redo: list[str] = []
    for s in todo:
        reasons = _check_targets(conn, original.run_id, s.key)
        if reasons and not force:
            blocked.append((s.key, "; ".join(reasons)))
        else:
            redo.append(s.key)
            if reasons:
                log.append(f"Step {s.key} allowed despite: {'; '.join(reasons)} (--force)")
    for key, why in blocked:
        log.append(f"Step {key} skipped: {why}")
    # Steps other than the ones to redo are not this rerun's business.
    blocks = {s.key: dict(blocked).get(s.key, "not asked for in this rerun (--step)")
              for s in states if s.state != "completed" and s.key not in redo}
    if not redo:
        # Nothing left to redo: no run is opened (looking at the steps is `sidecar steps RUN`).
        return RerunReport(original.run_id, None, original.automation, states, redo, blocked, log)
    meta = {"rerun_of": str(original.run_id), "steps": redo, "blocked": dict(blocked), "reason": reason,
            "force": force}
    summary = (f"Rerun of run {str(original.run_id)[:8]}: {plural(len(redo), 'step')} to redo"
               + (f", {plural(len(blocked), 'step')} skipped" if blocked else "")
               + (f" ({reason})" if reason else ""))
    rerun_id = conn.execute(
        "SELECT sidecar._rerun_open(%s, %s, %s, %s, %s)",
        (original.run_id, Jsonb(meta), Jsonb(blocks), summary,
         Jsonb({"log": log, "redo": redo, "blocked": dict(blocked)})),
    ).fetchone()[0]
    return RerunReport(original.run_id, rerun_id, original.automation, states, redo, blocked, log)


def _pid(conn: psycopg.Connection, run_id: uuid.UUID) -> int | None:
    row = conn.execute("SELECT backend_pid FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()
    return row[0] if row else None


def execute(conn: psycopg.Connection, report: RerunReport, command: str) -> int:
    """Run the automation's own command attached to the rerun; finish the run as failed if it fails."""
    env = dict(os.environ, SIDECAR_RUN_ID=str(report.rerun_id), SIDECAR_RERUN_OF=str(report.original),
               SIDECAR_STEPS=",".join(report.redo))
    try:
        code = subprocess.call(command, shell=True, env=env)
    except OSError as exc:
        raise SidecarError(f"could not start {command!r}: {exc}") from None
    status = conn.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (report.rerun_id,)).fetchone()[0]
    if status == "running":
        conn.execute(
            "SELECT sidecar.finish_run(%s, %s, %s)",
            ("succeeded" if code == 0 else "failed", None if code == 0 else f"command exited {code}", report.rerun_id),
        )
    return code
