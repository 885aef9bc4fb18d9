"""The console's pages. Each handler reads or changes through the sidecar library, on a
connection as the signed-in person (app.page), and renders a template."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

from starlette.routing import Route

from ..capture import context
from ..capture.history import Change
from ..errors import UsageError
from ..ops import summary as run_summary
from ..review import gate
from ..steps import runs
from ..text import describe
from ..text.describe import plural, row_label
from ..undo import restore
from . import changes, queue
from .web import Page, Pager, page

STATES = ("running", "succeeded", "failed", "undone")
SINCE = {"1h": ("the last hour", timedelta(hours=1)), "24h": ("the last day", timedelta(days=1)),
         "7d": ("the last week", timedelta(days=7)), "30d": ("the last 30 days", timedelta(days=30))}
PREVIEW_ROWS = 50  # rows listed per table and step in an undo preview


# -- automations -----------------------------------------------------------------

@dataclass
class AutomationRow:
    name: str
    state: str  # active | paused
    runs: int
    running: int
    last_run: datetime | None
    paused: gate.Pause | None


def _automations(p: Page) -> dict:
    """Automations and their pause state (what `sidecar status` shows, without its recent runs)."""
    pauses = gate.pauses(p.conn)
    paused = {x.target: x for x in pauses if x.scope == "automation"}
    everything = paused.get("*")
    rows = []
    for name, n, running, last in p.conn.execute(
        "SELECT automation, count(*), count(*) FILTER (WHERE status = 'running'), max(started_at) "
        "FROM sidecar.runs WHERE undo_of IS NULL GROUP BY automation ORDER BY automation"
    ).fetchall():
        pause_of = paused.get(name) or everything
        rows.append(AutomationRow(name, "paused" if pause_of else "active", n, running, last, pause_of))
    for name, pause_of in sorted(paused.items()):
        if name != "*" and name not in {r.name for r in rows}:
            rows.append(AutomationRow(name, "paused", 0, 0, None, pause_of))
    return {"automations": rows, "everything": everything, "table_pauses": [x for x in pauses if x.scope == "table"]}


@page()
def automations(p: Page):
    return p.render("automations.html", **_automations(p))


@page()
def automation_rows(p: Page):
    """The live part of the automations page, fetched by live.js after a NOTIFY."""
    return p.render("_automations.html", **_automations(p))


@page("pause")
def pause(p: Page):
    reason = p.field("reason")
    if not reason:
        return p.redirect("/automations", "A pause needs a reason, so that people know why.", "error")
    automation, table = p.field("automation"), p.field("table")
    if not (automation or table):
        raise UsageError("name the automation to pause")
    done = gate.pause(p.conn, automation=automation or None, table=table or None, reason=reason)
    return p.redirect("/automations", done[0].upper() + done[1:])


@page("pause")
def resume(p: Page):
    automation, table = p.field("automation"), p.field("table")
    if not (automation or table):
        raise UsageError("name the automation to resume")
    done = gate.resume(p.conn, automation=automation or None, table=table or None)
    return p.redirect("/automations", done[0].upper() + done[1:] + ".")


# -- runs ------------------------------------------------------------------------

def _since(text: str) -> datetime | None:
    if not text:
        return None
    if text in SINCE:
        return datetime.now(timezone.utc) - SINCE[text][1]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a time; use e.g. 2026-11-01T09:00 (UTC)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@page()
def runs_list(p: Page):
    q = p.request.query_params
    automation, state, since = q.get("automation", ""), q.get("status", ""), q.get("since", "")
    if state and state not in STATES:
        raise UsageError(f"status {state!r}: choose one of {', '.join(STATES)}")
    filters = {"automation": automation or None, "since": _since(since), "status": state or None}
    pager = Pager.of(p.request, runs.count_runs(p.conn, **filters))
    found = runs.list_runs(p.conn, **filters, offset=pager.offset, limit=pager.per_page)
    names = [n for n, in p.conn.execute("SELECT DISTINCT automation FROM sidecar.runs ORDER BY 1")]
    return p.render("runs.html", runs=found, pager=pager, names=names, states=STATES, since_choices=SINCE,
                    automation=automation, state=state, since=since, summary=_run_summary)


def _run_summary(info: runs.RunInfo) -> str:
    total = sum(info.rows.values())
    text = ("" if info.rows_complete else "At least ") + plural(total, "row") + " changed"
    if info.rows:
        text += " in " + ", ".join(f"{describe.table_name(t)} ({n:,})" for t, n in sorted(info.rows.items()))
    if info.undo_of:
        text = f"Undo of run {str(info.undo_of)[:8]}: " + text
    if info.error:
        text += f"; failed: {describe.value(info.error, 120).strip(chr(39))}"
    return text


def _row_spec(change: Change) -> str:
    """The `--row` form of a change's row: tickets:42, order_items:{"order_id":1,"line":2}."""
    if len(change.key) == 1:
        return f"{change.table}:{restore._text(next(iter(change.key.values())))}"
    return f"{change.table}:{json.dumps(change.key, sort_keys=True, default=str)}"


def _side_by_side(op: str, before: dict | None, after: dict | None,
                  changed: list[str]) -> list[tuple[str, object, object]]:
    """(column, before, after) for the columns a person wants to see side by side."""
    if op == "U":
        return [(c, before.get(c), after.get(c)) for c in changed]
    before, after = before or {}, after or {}
    return [(c, before.get(c), after.get(c)) for c in (after if op == "I" else before)]


def _columns(change: Change) -> list[tuple[str, object, object]]:
    return _side_by_side(change.op, change.before, change.after, change.changed_columns)


def _held_columns(item) -> list[tuple[str, object, object]]:
    """(column, now, proposed) for a held change."""
    return _side_by_side(item.op, item.old_row, item.new_row, item.changed_columns)


@page()
def run_page(p: Page):
    info = runs.get(p.conn, p.request.path_params["run_id"])
    if str(info.run_id) != p.request.path_params["run_id"]:
        return p.redirect(f"/runs/{info.run_id}")
    action_key = p.request.query_params.get("action", "")
    action_id = changes.action_id_of(p.conn, info.run_id, action_key) if action_key else None
    if action_key and action_id is None:
        raise UsageError(f"run {str(info.run_id)[:8]} has no action {action_key!r}")
    apager = Pager.of(p.request, 0, per_page=20, param="apage")
    action_rows, apager.total, apager.more = changes.actions(p.conn, info.run_id, offset=apager.offset,
                                                             limit=apager.per_page)
    total, more = changes.count(p.conn, info.run_id, action_id)
    pager = Pager.of(p.request, total, more=more)
    shown = changes.page(p.conn, info.run_id, action_id=action_id, offset=pager.offset, limit=pager.per_page)
    events = p.conn.execute(
        "SELECT at, actor, kind, summary FROM sidecar.events WHERE run_id = %s ORDER BY at, event_id",
        (info.run_id,)).fetchall()
    # The four questions, as `sidecar show` opens with them; what each action's automation said.
    story = run_summary.summarize(p.conn, info)
    contexts = context.of_actions(p.conn, info.run_id, [a.key for a in action_rows] + [action_key])
    undos = p.conn.execute(
        "SELECT run_id, started_at, started_by, meta->>'scope' FROM sidecar.runs WHERE undo_of = %s ORDER BY started_at",
        (info.run_id,)).fetchall()
    return p.render(
        "run.html", run=info, story=story, contexts=contexts, actions=action_rows, apager=apager, action=action_key,
        changes=shown, pager=pager, events=events, undos=undos, columns=_columns, row_spec=_row_spec,
        total_rows=sum(info.rows.values()), undo_url=_undo_url, meta=sorted(info.meta.items()),
    )


def _undo_url(run_id: uuid.UUID, action: str | None = None, row: str | None = None) -> str:
    args = {k: v for k, v in (("action", action), ("row", row)) if v}
    return f"/runs/{run_id}/undo" + ("?" + urlencode(args) if args else "")


@dataclass
class PreviewRow:
    verb: str
    label: str
    diffs: list[tuple[str, object, object]]  # (column, now as the run left it, restored to)


def _scope(p: Page, source) -> restore.Scope:
    actions = [a for a in source.getlist("action") if a]
    rows = [r for r in source.getlist("row") if r]
    return restore.make_scope(p.conn, p.request.path_params["run_id"], actions, rows)


@page("undo")
def undo_preview(p: Page):
    scope = _scope(p, p.request.query_params)
    info = runs.get(p.conn, scope.run_id)
    planned: list[tuple[str, list[PreviewRow], int]] = []
    with p.conn.transaction(force_rollback=True):
        planner, result = restore.preview(p.conn, scope)
        for plan in planner.ordered():
            t = plan.info
            listed: list[PreviewRow] = []
            more = 0
            for step, verb in (("update", "Restore"), ("insert", "Put back"), ("delete", "Remove")):
                n = plan.counts.get(step, 0)
                for key, before, after in (planner.steps(plan, step, limit=PREVIEW_ROWS) if n else []):
                    label = row_label(t.table, key, before or after, t.label_column, t.display_name)
                    if step == "update":
                        diffs = [(c, after.get(c), before.get(c)) for c in before if before.get(c) != after.get(c)]
                    else:
                        diffs = []
                    listed.append(PreviewRow(verb, label, diffs))
                more += max(0, n - PREVIEW_ROWS)
            planned.append((describe.table_name(t.table, t.display_name), listed, more))
    conflicts = [_conflict(c) for c in result.conflicts]
    to_restore = sum(sum(c.get(s, 0) for s in ("insert", "update", "delete")) for c in result.tables.values())
    already = sum(c.get("done", 0) for c in result.tables.values())
    return p.render("undo.html", run=info, scope=scope, planned=planned, conflicts=conflicts,
                    conflict_count=result.conflict_count, notes=result.notes, to_restore=to_restore,
                    already=already, held=result.held_rejected)


def _conflict(c: restore.Conflict) -> dict:
    label = row_label(c.table, c.key, c.now or c.run_left, c.label_column, c.display_name)
    if c.now is None:
        what = [("", "the row is gone", None)]
    elif c.run_left is None:
        what = [("", "the row is back", None)]
    else:
        what = [(k, c.run_left.get(k), v) for k, v in c.now.items() if k in c.run_left and c.run_left.get(k) != v]
    who = f"run {str(c.changed_by_run)[:8]}" if c.changed_by_run else "someone outside any run"
    # A row left for a reason of its own (rows still refer to it, its old unique value is
    # taken...) was not changed since: the reason says why, not a later writer.
    return {"label": label, "who": who, "what": what, "run": c.changed_by_run, "reason": c.reason}


@page("undo")
def undo_apply(p: Page):
    scope = _scope(p, p.form)
    result = restore.undo(p.conn, scope, reason=p.field("reason") or None)
    scope_text = "run" if scope.kind == "run" else f"{scope.kind} of run"
    message = f"Undid {scope_text} {str(scope.run_id)[:8]}: restored {plural(result.restored, 'row')}."
    if result.held_rejected:
        message += f" Rejected {plural(result.held_rejected, 'held change')} of it that had not landed."
    if result.conflict_count:
        message += (f" Kept {plural(result.conflict_count, 'conflicting row')} as they are (changed since): "
                    + "; ".join(f"{x['label']} ({x['reason'] or 'changed by ' + x['who']})"
                                for x in map(_conflict, result.conflicts)))
    return p.redirect(f"/runs/{scope.run_id}", message, "warn" if result.conflict_count else "ok")


# -- review queue ------------------------------------------------------------------

@page()
def queue_page(p: Page):
    if not p.rights.has_queue:
        return p.render("error.html", status=404, title="No review queue",
                        message="This database has no review queue (sidecar.pending); sidecar install adds it.")
    show_all = p.request.query_params.get("show") == "all"
    pager = Pager.of(p.request, 0)
    held, pager.total = queue.items(p.conn, open_only=not show_all, offset=pager.offset, limit=pager.per_page)
    return p.render("queue.html", items=held, pager=pager, show_all=show_all, columns=_held_columns)


def _pending_id(p: Page) -> int:
    try:
        return int(p.request.path_params["pending_id"])
    except ValueError:
        raise UsageError("that is not a held change's number") from None


@page("approve")
def approve(p: Page):
    kind, message = queue.approve(p.conn, _pending_id(p))
    return p.redirect("/queue", message, kind)


@page("approve")
def reject(p: Page):
    reason = p.field("reason")
    if not reason:
        return p.redirect("/queue", "A rejection needs a reason, so that the automation's owner knows why.", "error")
    kind, message = queue.reject(p.conn, _pending_id(p), reason)
    return p.redirect("/queue", message, kind)


# -- event trail -------------------------------------------------------------------

@page()
def events_page(p: Page):
    kind = p.request.query_params.get("kind", "")
    kinds = [k for k, in p.conn.execute("SELECT DISTINCT kind FROM sidecar.events ORDER BY 1")]
    total = p.conn.execute("SELECT count(*) FROM sidecar.events WHERE %s = '' OR kind = %s", (kind, kind)).fetchone()[0]
    pager = Pager.of(p.request, total)
    rows = p.conn.execute(
        "SELECT e.at, e.actor, e.kind, e.summary, e.run_id, r.automation FROM sidecar.events e "
        "LEFT JOIN sidecar.runs r ON r.run_id = e.run_id WHERE %s = '' OR e.kind = %s "
        "ORDER BY e.at DESC, e.event_id DESC OFFSET %s LIMIT %s",
        (kind, kind, pager.offset, pager.per_page)).fetchall()
    return p.render("events.html", events=rows, pager=pager, kinds=kinds, kind=kind)


def routes() -> list[Route]:
    return [
        Route("/automations", automations),
        Route("/automations/rows", automation_rows),
        Route("/automations/pause", pause, methods=["POST"]),
        Route("/automations/resume", resume, methods=["POST"]),
        Route("/runs", runs_list),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/undo", undo_preview, methods=["GET"]),
        Route("/runs/{run_id}/undo", undo_apply, methods=["POST"]),
        Route("/queue", queue_page),
        Route("/queue/{pending_id}/approve", approve, methods=["POST"]),
        Route("/queue/{pending_id}/reject", reject, methods=["POST"]),
        Route("/events", events_page),
    ]
