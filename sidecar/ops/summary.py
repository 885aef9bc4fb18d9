"""The four questions about a run, answered from the trail: what started it, what changed, what
failed, what happens next. `sidecar show RUN` and the console's run page open with it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from ..capture import settle
from ..steps.rerun import step_states
from ..steps.runs import RunInfo
from ..text import describe
from ..text.describe import plural


@dataclass
class Summary:
    """Each answer a list of lines; an empty list: nothing (nothing failed, nothing waits)."""

    started: list[str] = field(default_factory=list)
    # When, apart: the CLI prints it in the local time zone, the console in the reader's.
    started_at: datetime | None = None
    # The run's metadata (prompt, model...) as lines: the console shows its own list of it.
    meta: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    next: list[str] = field(default_factory=list)
    # For the console's buttons beside "What happens next":
    paused: bool = False  # the run's automation is paused now
    paused_by_name: bool = False  # by its own pause (not only with every automation)
    rerun: bool = False  # the run stopped with steps left, which a rerun redoes

    def sections(self) -> list[tuple[str, list[str]]]:
        when = self.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if self.started_at else None
        started = ([f"{self.started[0]} at {when}"] + self.started[1:]) if self.started and when else self.started
        return [("What started this", started + self.meta), ("What changed", self.changed),
                ("What failed", self.failed), ("What happens next", self.next)]


def _meta_word(key: str, v: object) -> str | None:
    """A meta value in words; None for what goes without saying (a rerun's empty blocked list, ...)."""
    if key == "rerun_of" or v in (None, "", [], {}) or (key == "force" and v is False):
        return None
    if key == "steps" and isinstance(v, list):
        return ", ".join(map(str, v))
    if key == "blocked" and isinstance(v, dict):
        return "; ".join(f"{k}: {why}" for k, why in v.items())
    if key == "force" and v is True:
        return "yes: steps redone despite changed rows"
    return describe.value(v, 200).strip(chr(39))


def _short(run_id: uuid.UUID | None) -> str:
    return str(run_id)[:8] if run_id else "-"


def summarize(conn: psycopg.Connection, info: RunInfo, *, shell: bool = True) -> Summary:
    """Plain-language answers, each a few lines, read from runs, actions, steps, the queue and events.

    shell=False: "what happens next" names no command (the console offers the buttons instead)."""
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    s = Summary(started_at=info.started_at)
    s.started.append(f"{info.automation}, started by {info.started_by}")
    # The run's own metadata (prompt, model, job...), the usual keys first, in words.
    keys = sorted(info.meta, key=lambda k: ({"prompt": 0, "model": 1}.get(k, 2), k))
    for key in [k for k in keys if _meta_word(k, info.meta[k]) is not None][:5]:
        s.meta.append(f"{key.replace('_', ' ')}: {_meta_word(key, info.meta[key])}")
    if info.undo_of:
        s.started.append(f"an undo of run {_short(info.undo_of)}")
    if info.rerun_of:
        s.started.append(f"a rerun of run {_short(info.rerun_of)}")

    actions, with_context, low = conn.execute(
        "SELECT count(*), count(context), count(*) FILTER (WHERE CASE WHEN jsonb_typeof(context -> 'confidence') "
        "= 'number' THEN (context ->> 'confidence')::float8 < 0.5 END) "
        "FROM sidecar.actions WHERE run_id = %s", (info.run_id,)).fetchone()
    total = sum(info.rows.values())
    if info.rows:
        s.changed.append(f"{'at least ' if not info.rows_complete else ''}{plural(total, 'row')} in "
                         + ", ".join(f"{describe.table_name(t)} ({n:,})" for t, n in sorted(info.rows.items()))
                         + f", in {plural(actions, 'action')}")
    else:
        s.changed.append(f"no tracked row changed ({plural(actions, 'action')})")
    if with_context:
        s.changed.append(f"{plural(with_context, 'action')} {'says' if with_context == 1 else 'say'} why"
                         + (f"; {plural(low, 'action')} with confidence below 0.5" if low else ""))
    held = dict(conn.execute("SELECT status, count(*) FROM sidecar.pending WHERE run_id = %s GROUP BY status",
                             (info.run_id,)).fetchall())
    if held.get("approved"):
        s.changed.append(f"{plural(held['approved'], 'held change')} approved and applied")

    if info.status == "failed":
        s.failed.append(f"the run failed: {info.error or 'no error recorded'}")
    elif info.state == "abandoned":
        s.failed.append("the run's session is gone and it never finished (abandoned)")
    stopped = info.status == "failed" or info.state == "abandoned"
    steps = step_states(conn, info.run_id, stopped=stopped)
    failed_steps = [st for st in steps if st.state == "failed"]
    for st in failed_steps[:5]:
        s.failed.append(f"step {st.key} failed" + (f": {st.detail}" if st.detail else ""))
    if len(failed_steps) > 5:
        s.failed.append(f"… and {plural(len(failed_steps) - 5, 'more failed step')}")
    if held.get("rejected"):
        s.failed.append(f"{plural(held['rejected'], 'held change')} rejected")
    if held.get("conflict"):
        s.failed.append(f"{plural(held['conflict'], 'approval')} refused: the row changed since it was held")
    for at, summary, conflicts in conn.execute(
        "SELECT at, summary, (detail ->> 'conflicts')::int FROM sidecar.events "
        "WHERE run_id = %s AND kind = 'undo' AND coalesce((detail ->> 'conflicts')::int, 0) > 0 ORDER BY at",
        (info.run_id,),
    ).fetchall():
        s.failed.append(f"an undo skipped {plural(conflicts, 'conflicting row')} ({summary})")

    waiting = held.get("pending", 0) + held.get("conflict", 0)
    if waiting and shell:
        s.next.append(f"{plural(waiting, 'held change')} waiting for review: sidecar queue, "
                      f"then sidecar approve ID or sidecar reject ID --reason TEXT")
    elif waiting:
        s.next.append(f"{plural(waiting, 'held change')} waiting for review in the review queue")
    left = [st for st in steps if st.state != "completed"]
    s.rerun = bool(left and stopped and not info.undo_of)
    if left and stopped:
        s.next.append(f"{plural(len(left), 'step')} left to do: "
                      + (f"sidecar rerun {info.run_id} redoes only those" if shell else "a rerun redoes only those"))
    elif left and info.status == "running":
        s.next.append(f"{plural(len(left), 'step')} not done yet (the run is still running)")
    if info.undone_by:
        s.next.append(f"undone by run {_short(info.undone_by)}; "
                      + (f"sidecar undo {info.undone_by} puts the changes back" if shell
                         else "undoing that run puts the changes back"))
    elif info.rows and shell:
        s.next.append(f"to undo it: sidecar undo {info.run_id} --preview, then without --preview "
                      "(--action KEY for one action)")
    pause = conn.execute(
        "SELECT target, paused_by, reason FROM sidecar.pauses WHERE scope = 'automation' AND target IN (%s, '*') "
        "ORDER BY target = '*' LIMIT 1", (info.automation,)).fetchone()
    s.paused = pause is not None
    s.paused_by_name = bool(pause) and pause[0] != "*"
    if pause:
        who = "every automation" if pause[0] == "*" else info.automation
        s.next.append(f"{who} is paused (by {pause[1]}: {pause[2]}): its runs cannot start and their next write "
                      "fails")
    return s
