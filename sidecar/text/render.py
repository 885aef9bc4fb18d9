"""Text and JSON renderings of library results, for the CLI (and anyone else)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from . import describe
from .describe import plural, row_label


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (uuid.UUID, Decimal)):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True, ensure_ascii=False)


def run_json(info) -> dict:
    """A run for --json: its fields, and its state in the words the CLI and console use."""
    return dict(to_jsonable(info), state=info.state)


def when(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def run_line(r) -> str:
    rows = ", ".join(f"{describe.table_name(t)} {n}" for t, n in sorted(r.rows.items())) or "no rows"
    if not r.rows_complete:
        rows = f"at least {rows} (counted {when(r.rows_counted_at)})"
    extra = ""
    if r.undo_of:
        extra = f"  (undo of {str(r.undo_of)[:8]})"
    if r.undone_by:
        extra += f"  (undone by {str(r.undone_by)[:8]})"
    if r.steps_done:
        extra += f"  ({plural(r.steps_done, 'step')} done)"
    return (f"{str(r.run_id)[:8]}  {r.automation:<16} {when(r.started_at)}  {r.started_by:<10} "
            f"{r.state:<9}  {rows}{extra}")


def runs_table(runs) -> str:
    if not runs:
        return "No runs yet."
    head = f"{'run':<8}  {'automation':<16} {'started':<19}  {'by':<10} {'status':<9}  rows changed"
    return "\n".join([head] + [run_line(r) for r in runs])


def first_line(text: str | None, limit: int = 300) -> str | None:
    """A stored error as one line (older releases stored the database's whole report)."""
    if not text:
        return text
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def summary_lines(summary) -> list[str]:
    """The four questions (ops.summary.Summary), each a heading and its answers."""
    lines = []
    for heading, answers in summary.sections():
        lines.append(f"{heading}:")
        lines += [f"  {a}" for a in answers] or ["  nothing"]
    return lines


def show_run(info, actions: list[tuple[int, str, list]], events: list, more_actions: int = 0,
             contexts: dict | None = None, summary=None, held: list | None = None, labels=None) -> str:
    contexts = contexts or {}
    lines = [f"Run {info.run_id}"]
    if summary is not None:
        lines += summary_lines(summary) + ["", "Details"]
    lines += [
        f"  automation  {info.automation}",
        f"  started     {when(info.started_at)} by {info.started_by}",
        f"  status      {info.state}" + (f" ({first_line(info.error)})" if info.error else ""),
    ]
    if info.finished_at:
        lines.append(f"  finished    {when(info.finished_at)}")
    for k, v in sorted(info.meta.items()):
        lines.append(f"  {k:<11} {describe.value(v, 200).strip(chr(39))}")
    if info.steps_done:
        lines.append(f"  steps       {info.steps_done:,} done")
    if info.undo_of:
        lines.append(f"  undo of     {info.undo_of}")
    if info.undone_by:
        lines.append(f"  undone by   {info.undone_by}")
    if getattr(info, "purged_at", None):
        lines.append(f"  purged      {when(info.purged_at)}: its captured changes were removed "
                     "(sidecar archive restore FILE loads an archived run back)")
        return "\n".join(lines)
    total = sum(info.rows.values())
    lines.append(f"  changed     {'' if info.rows_complete else 'at least '}{plural(total, 'row')}"
                 + (" in " + ", ".join(f"{describe.table_name(t)} ({n})" for t, n in sorted(info.rows.items()))
                    if info.rows else "")
                 + ("" if info.rows_complete else
                    f" (counted at {when(info.rows_counted_at)}; the run has written since, and is "
                    "counted again once it has finished)"))
    waiting = [h for h in held or [] if h.status in ("pending", "conflict")]
    if held:
        lines.append(f"  held        {plural(len(held), 'change')} for review, {len(waiting)} still waiting"
                     + (" (sidecar queue)" if waiting else ""))
    for key, changes, more in actions:
        lines.append("")
        lines.append(f"Action {key}")
        if key in contexts:
            lines += [f"  {line}" for line in contexts[key].lines()]
        for ch in changes:
            lines.append(f"  {describe.change_line(ch, labels)}")
        if not changes:
            lines.append("  nothing of it landed (held for review, or it changed nothing)")
        if more:
            lines.append(f"  … and {plural(more, 'more change')}")
    if more_actions:
        lines.append("")
        lines.append(f"… and {plural(more_actions, 'more action')} (--actions 0 shows them all; "
                     "the console pages through them)")
    if held:
        lines.append("")
        lines.append("Held for review")
        for h in held:
            text = h.text if labels is None else h.text.replace(h.change, describe.held_change(h, labels), 1)
            lines.append(f"  [{h.pending_id}] {h.status:<9} action {h.action}: {text}")
    if events:
        lines.append("")
        lines.append("Events")
        for at, actor, summary in events:
            lines.append(f"  {when(at)}  {actor}: {summary}")
    return "\n".join(lines)


def _row(table, key, image, label_column, display_name, labels) -> str:
    """A row by its label and key; with labels (capture.labels), by the page's label columns too."""
    if labels is None:
        return row_label(table, key, image, label_column, display_name)
    return describe.row_name(table, key, image, labels, label_column, display_name)


def _val(table: str, column: str, v, labels) -> str:
    """A value; with labels, a foreign key as the record it names, times as times."""
    return describe.value(v) if labels is None else describe.named_value(table, column, v, labels)


def conflict_lines(conflicts, total: int, forced: bool = False, labels=None) -> list[str]:
    lines = []
    for c in conflicts:
        label = _row(c.table, c.key, c.now or c.run_left, c.label_column, c.display_name, labels)
        if c.reason:
            lines.append(f"  conflict: {label}: {c.reason}; left as it is")
            continue
        if c.now is None:
            now = "the row is gone"
        elif c.run_left is None:
            now = "the row is back"
        else:
            diffs = [f"{k} {_val(c.table, k, c.run_left.get(k), labels)} is now {_val(c.table, k, v, labels)}"
                     for k, v in c.now.items() if k in c.run_left and c.run_left.get(k) != v]
            now = ", ".join(diffs) or "changed"
        who = f"run {str(c.changed_by_run)[:8]}" if c.changed_by_run else "someone outside any run"
        lines.append(f"  conflict: {label}: changed since by {who} ({now}); "
                     + ("restored anyway (--force)" if forced else "left as it is"))
    if total > len(conflicts):
        lines.append(f"  … and {plural(total - len(conflicts), 'more conflict')}")
    return lines


def undo_result(result, *, would: bool = False, labels=None) -> str:
    """What an undo did (or would do); with labels (capture.labels), records named."""
    verb = "Would undo" if would or not result.applied else "Undid"
    scope = "run" if result.scope == "run" else f"{result.scope} of run"
    lines = [f"{verb} {scope} {result.run_id}"
             + (f" as run {result.undo_run_id}" if result.undo_run_id and not would else "")]
    for table, counts in result.tables.items():
        parts = []
        for step, word in (("insert", "put back"), ("update", "restored"), ("delete", "removed")):
            if counts.get(step):
                parts.append(f"{counts[step]:,} {word}")
        if counts.get("done"):
            parts.append(f"{counts['done']:,} already as before")
        if counts.get("conflict"):
            parts.append(f"{counts['conflict']:,} skipped (conflict)")
        lines.append(f"  {describe.table_name(table)}: " + (", ".join(p for p in parts if p) or "nothing to do"))
    lines += conflict_lines(result.conflicts, result.conflict_count, result.forced, labels)
    for note in result.notes:
        lines.append(f"  note: {note}")
    if not result.tables:
        lines.append("  The run changed no tracked rows in this scope: nothing to undo.")
    if result.held_rejected:
        lines.append(f"  rejected {plural(result.held_rejected, 'held change')} of what was undone, "
                     "which had not landed (sidecar queue --all lists them)")
    return "\n".join(lines)


def preview(planner, result, per_table: int = 50, labels=None) -> str:
    """Each row to restore, in plain language, and each conflict, with totals; with labels
    (capture.labels, of preview_images), records named."""
    lines = [f"Preview: undo of {'run' if result.scope == 'run' else result.scope + ' of run'} {result.run_id} "
             "(nothing is changed)"]
    for plan in planner.ordered():
        info = plan.info
        lines.append(f"{describe.table_name(info.table, info.display_name)}:")
        for step, verb in (("update", "restore"), ("insert", "put back"), ("delete", "remove")):
            n = plan.counts.get(step, 0)
            if not n:
                continue
            for key, before, after in planner.steps(plan, step, limit=per_table):
                label = _row(info.table, key, before or after, info.label_column, info.display_name, labels)
                if step == "update":
                    diffs = [f"{c} {_val(info.table, c, after.get(c), labels)} -> {_val(info.table, c, before.get(c), labels)}"
                             for c in before if before.get(c) != after.get(c)]
                    lines.append(f"  {verb} {label}: " + ", ".join(diffs))
                elif step == "insert":
                    lines.append(f"  {verb} {label} (deleted by the run)")
                else:
                    lines.append(f"  {verb} {label} (added by the run)")
            if n > per_table:
                lines.append(f"  … and {plural(n - per_table, 'more row')} to {verb}")
        # Each table's conflicts under its own heading.
        lines += conflict_lines([c for c in result.conflicts if c.table == info.table], 0, result.forced, labels)
    listed = {info.table for info in (p.info for p in planner.ordered())}
    lines += conflict_lines([c for c in result.conflicts if c.table not in listed], 0, result.forced, labels)
    if result.conflict_count > len(result.conflicts):
        lines.append(f"  … and {plural(result.conflict_count - len(result.conflicts), 'more conflict')}")
    for note in result.notes:
        lines.append(f"  note: {note}")
    total = sum(sum(c.get(s, 0) for s in ("insert", "update", "delete")) for c in result.tables.values())
    lines.append(f"Total: {plural(total, 'row')} to restore, {plural(result.conflict_count, 'conflict')}"
                 + (" (restored anyway: --force)" if result.forced and result.conflict_count else ""))
    if result.held_rejected:
        lines.append(f"The undo also rejects {plural(result.held_rejected, 'held change')} of it still waiting "
                     "for review (sidecar queue lists them).")
    return "\n".join(lines)


def preview_images(planner, result, per_table: int = 50) -> list[tuple[str, dict | None]]:
    """The (table, row image) pairs preview() shows, for capture.labels.lookup."""
    images = []
    for plan in planner.ordered():
        for step in ("update", "insert", "delete"):
            if plan.counts.get(step, 0):
                for _, before, after in planner.steps(plan, step, limit=per_table):
                    images += [(plan.info.table, before), (plan.info.table, after)]
    return images + result_images(result)


def result_images(result) -> list[tuple[str, dict | None]]:
    """The (table, row image) pairs of an undo's conflicts, for capture.labels.lookup."""
    return [(c.table, i) for c in result.conflicts for i in (c.now, c.run_left)]
