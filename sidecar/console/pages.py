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
from ..capture import labels as labels_mod
from ..capture.history import Change
from ..errors import UsageError
from ..ops import named
from ..ops import summary as run_summary
from ..review import gate
from ..steps import rerun as rerun_mod
from ..steps import runs
from ..text import describe, render
from ..text.describe import agree, plural, row_name
from ..undo import restore
from . import changes, queue
from .drafts import back_of
from .runview import meta_in_words, undone_of
from .web import Named, Page, Pager, page

STATES = runs.STATES
SINCE = {"1h": ("the last hour", timedelta(hours=1)), "24h": ("the last day", timedelta(days=1)),
         "7d": ("the last week", timedelta(days=7)), "30d": ("the last 30 days", timedelta(days=30))}
PREVIEW_ROWS = 50  # rows listed per table and step in an undo preview


# -- automations -----------------------------------------------------------------

@dataclass
class AutomationRow:
    name: str
    state: str  # active | paused
    runs: int
    states: dict[str, int]  # runs per run state (runs.STATES)
    last_run: datetime | None
    paused: gate.Pause | None

    @property
    def breakdown(self) -> str:
        """`1 abandoned, 2 undone`: the runs not simply succeeded, in the words of the runs page."""
        return ", ".join(f"{self.states[s]:,} {s}" for s in STATES if s != "succeeded" and self.states.get(s))


def _automations(p: Page) -> dict:
    """Automations and their pause state (what `sidecar status` shows, without its recent runs)."""
    pauses = gate.pauses(p.conn)
    paused = {x.target: x for x in pauses if x.scope == "automation"}
    everything = paused.get("*")
    rows = []
    by_state = runs.state_counts(p.conn)
    for name, n, last in p.conn.execute(
        "SELECT automation, count(*), max(started_at) "
        "FROM sidecar.runs WHERE undo_of IS NULL GROUP BY automation ORDER BY automation"
    ).fetchall():
        pause_of = paused.get(name) or everything
        rows.append(AutomationRow(name, "paused" if pause_of else "active", n, by_state.get(name, {}), last, pause_of))
    for name, pause_of in sorted(paused.items()):
        if name != "*" and name not in {r.name for r in rows}:
            rows.append(AutomationRow(name, "paused", 0, {}, None, pause_of))
    return {"automations": rows, "everything": everything, "table_pauses": [x for x in pauses if x.scope == "table"]}


@page()
def automations(p: Page):
    return p.render("automations.html", **_automations(p))


@page()
def automation_rows(p: Page):
    """The live part of the automations page, fetched by live.js after a NOTIFY."""
    return p.render("_automations.html", **_automations(p))


@page("pause", changes="pause", back="/automations")
def pause(p: Page):
    reason = p.field("reason")
    if not reason:
        raise UsageError("A pause needs a reason, so that people know why; nothing was paused")
    automation, table = p.field("automation"), p.field("table")
    if not (automation or table):
        raise UsageError("name the automation to pause")
    done = gate.pause(p.conn, automation=automation or None, table=table or None, reason=reason)
    return p.redirect(back_of(p.request, "/automations"), done[0].upper() + done[1:])


@page("pause", changes="resume", back="/automations")
def resume(p: Page):
    automation, table = p.field("automation"), p.field("table")
    if not (automation or table):
        raise UsageError("name the automation to resume")
    done = gate.resume(p.conn, automation=automation or None, table=table or None)
    return p.redirect(back_of(p.request, "/automations"), done[0].upper() + done[1:] + ".")


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
    runs.check_state(state)
    filters = {"automation": automation or None, "since": _since(since), "status": state or None}
    pager = Pager.of(p.request, runs.count_runs(p.conn, **filters))
    found = runs.list_runs(p.conn, **filters, offset=pager.offset, limit=pager.per_page)
    names = [n for n, in p.conn.execute("SELECT DISTINCT automation FROM sidecar.runs ORDER BY 1")]
    held = queue.open_counts(p.conn, [r.run_id for r in found]) if p.rights.has_queue else {}
    return p.render("runs.html", runs=found, pager=pager, names=names, states=STATES, since_choices=SINCE,
                    automation=automation, state=state, since=since,
                    summary=lambda info: _run_summary(info, held.get(info.run_id, 0)))


def _run_summary(info: runs.RunInfo, held: int = 0) -> str:
    """What the run did, in a sentence: rows changed, held writes waiting, failures."""
    total = sum(info.rows.values())
    if total:
        text = (("Changed at least " if not info.rows_complete else "Changed ") + plural(total, "row") + " in "
                + ", ".join(f"{describe.table_name(t)} ({n:,})" for t, n in sorted(info.rows.items())))
    else:
        text = "Changed no rows"
    if held:
        text += f"; {plural(held, 'write')} held for review {agree(held, 'waits', 'wait')} in the queue"
    if info.undo_of:
        text = f"Undo of run {str(info.undo_of)[:8]}: " + text[0].lower() + text[1:]
    if info.state == "abandoned":
        text += "; its session ended before it finished"
    if info.error:
        text += f"; failed: {describe.value(info.error, 120).strip(chr(39))}"
    return text + "."


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


def _named(table: str, column: str, v: object, labels) -> object:
    """A foreign-key value as the record it names (customer Northwind Solar (#2)), else the value."""
    found = labels.named(table, column, v) if labels is not None else None
    return Named(found, v) if found else v


def _columns(change: Change, labels=None) -> list[tuple[str, object, object]]:
    return [(c, _named(change.table, c, b, labels), _named(change.table, c, a, labels))
            for c, b, a in _side_by_side(change.op, change.before, change.after, change.changed_columns)]


def _held_columns(item, labels=None) -> list[tuple[str, object, object]]:
    """(column, now, proposed) for a held change."""
    return [(c, _named(item.table, c, b, labels), _named(item.table, c, a, labels))
            for c, b, a in _side_by_side(item.op, item.old_row, item.new_row, item.changed_columns)]


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
    labels = labels_mod.lookup(p.conn, [(c.table, i) for c in shown for i in (c.before, c.after)])
    events = named.events(p.conn, p.conn.execute(
        "SELECT at, actor, kind, summary, detail FROM sidecar.events WHERE run_id = %s ORDER BY at, event_id",
        (info.run_id,)).fetchall(), 3, 4)
    # The four questions, as `sidecar show` opens with them; what each action's automation said.
    story = run_summary.summarize(p.conn, info, shell=False)
    contexts = context.of_actions(p.conn, info.run_id, [a.key for a in action_rows] + [action_key])
    undos = p.conn.execute(
        "SELECT run_id, started_at, started_by, meta->>'scope' FROM sidecar.runs WHERE undo_of = %s ORDER BY started_at",
        (info.run_id,)).fetchall()
    undone = undone_of(p.conn, info, _row_spec)
    everything_undone = bool(action_rows) and apager.total == len(action_rows) and all(
        undone.of_action(a.key) for a in action_rows)
    return p.render(
        "run.html", run=info, story=story, contexts=contexts, actions=action_rows, apager=apager, action=action_key,
        changes=shown, pager=pager, events=events, undos=undos, columns=lambda ch: _columns(ch, labels),
        row_spec=_row_spec, labels=labels, undone=undone, everything_undone=everything_undone,
        total_rows=sum(info.rows.values()), undo_url=_undo_url, meta=meta_in_words(info),
    )


def _undo_url(run_id: uuid.UUID, action: str | None = None, row: str | None = None) -> str:
    args = {k: v for k, v in (("action", action), ("row", row)) if v}
    return f"/runs/{run_id}/undo" + ("?" + urlencode(args) if args else "")


@page("rerun", changes="rerun")
def rerun(p: Page):
    report = rerun_mod.rerun(p.conn, p.request.path_params["run_id"], reason=p.field("reason") or None)
    message = (f"Opened rerun {str(report.rerun_id)[:8]} of run {str(report.original)[:8]}: "
               f"{plural(len(report.redo), 'step')} to redo ({', '.join(report.redo) or 'none'})"
               + (f"; {plural(len(report.blocked), 'step')} skipped because their rows changed" if report.blocked
                  else "")
               + f". {report.automation} does them when it next runs attached to this rerun.")
    return p.redirect(f"/runs/{report.rerun_id}", message)


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
    if scope.kind == "run" and info.undone_by:
        return p.render("error.html", status=409, title="This run is undone already",
                        message=f"Run {str(info.run_id)[:8]} was undone by run {str(info.undone_by)[:8]}. "
                                "To put its changes back, undo that run.",
                        links=[(f"/runs/{info.undone_by}", f"Open the undo, run {str(info.undone_by)[:8]}"),
                               (f"/runs/{info.run_id}", f"Back to run {str(info.run_id)[:8]}")])
    planned: list[tuple[str, list[PreviewRow], int]] = []
    with p.conn.transaction(force_rollback=True):
        planner, result = restore.preview(p.conn, scope)
        for plan in planner.ordered():
            t = plan.info
            listed: list[tuple[str, dict, dict | None, dict | None]] = []
            more = 0
            for step, verb in (("update", "Restore"), ("insert", "Put back"), ("delete", "Remove")):
                n = plan.counts.get(step, 0)
                for key, before, after in (planner.steps(plan, step, limit=PREVIEW_ROWS) if n else []):
                    listed.append((verb, key, before, after))
                more += max(0, n - PREVIEW_ROWS)
            labels = labels_mod.lookup(p.conn, [(t.table, i) for _, _, b, a in listed for i in (b, a)])
            rows = []
            for verb, key, before, after in listed:
                label = row_name(t.table, key, before or after, labels, t.label_column, t.display_name)
                diffs = []
                if verb == "Restore":
                    diffs = [(c, _named(t.table, c, after.get(c), labels), _named(t.table, c, before.get(c), labels))
                             for c in before if before.get(c) != after.get(c)]
                rows.append(PreviewRow(verb, label, diffs))
            planned.append((describe.table_name(t.table, t.display_name), rows, more))
    named = labels_mod.lookup(p.conn, render.result_images(result))
    conflicts = [_conflict(c, named) for c in result.conflicts]
    to_restore = sum(sum(c.get(s, 0) for s in ("insert", "update", "delete")) for c in result.tables.values())
    already = sum(c.get("done", 0) for c in result.tables.values())
    notes = [n.replace(" (undo needs --force to restore the rest)", "") for n in result.notes]
    return p.render("undo.html", run=info, scope=scope, planned=planned, conflicts=conflicts,
                    conflict_count=result.conflict_count, notes=notes, to_restore=to_restore,
                    already=already, held=result.held_rejected)


def _conflict(c: restore.Conflict, labels=None) -> dict:
    label = row_name(c.table, c.key, c.now or c.run_left, labels, c.label_column, c.display_name)
    if c.now is None:
        what = [("", "the row is gone", None)]
    elif c.run_left is None:
        what = [("", "the row is back", None)]
    else:
        what = [(k, _named(c.table, k, c.run_left.get(k), labels), _named(c.table, k, v, labels))
                for k, v in c.now.items() if k in c.run_left and c.run_left.get(k) != v]
    who = f"run {str(c.changed_by_run)[:8]}" if c.changed_by_run else "someone outside any run"
    # A row left for a reason of its own (rows still refer to it, its old unique value is
    # taken...) was not changed since: the reason says why, not a later writer.
    return {"label": label, "who": who, "what": what, "run": c.changed_by_run, "reason": c.reason}


@page("undo", changes="undo")
def undo_apply(p: Page):
    scope = _scope(p, p.form)
    result = restore.undo(p.conn, scope, reason=p.field("reason") or None)
    if scope.kind == "actions":
        scope_text = f"{agree(len(scope.actions), 'action', 'actions')} {', '.join(scope.actions)} of run"
    else:
        scope_text = "run" if scope.kind == "run" else f"{agree(len(scope.rows), 'row', 'rows')} of run"
    message = f"Undid {scope_text} {str(scope.run_id)[:8]}: restored {plural(result.restored, 'row')}."
    if result.held_rejected:
        message += (f" Rejected {plural(result.held_rejected, 'held change')} of it that "
                    f"{agree(result.held_rejected, 'had', 'had')} not landed.")
    if result.conflict_count:
        named = labels_mod.lookup(p.conn, render.result_images(result))
        message += (f" Kept {plural(result.conflict_count, 'conflicting row')} "
                    f"{agree(result.conflict_count, 'as it is', 'as they are')} (changed since): "
                    + "; ".join(f"{x['label']} ({x['reason'] or 'changed by ' + x['who']})"
                                for x in (_conflict(c, named) for c in result.conflicts)))
    return p.redirect(f"/runs/{scope.run_id}", message, "warn" if result.conflict_count else "ok")


# -- review queue ------------------------------------------------------------------

def _blocking_pauses(p: Page):
    """item -> the pauses that refuse its approval: its automation's, every automation's ('*')
    and its table's. Approving writes as the automation's run, which each of them refuses
    (sidecar._gate), so the queue says why and offers the button that would help."""
    pauses = gate.pauses(p.conn)
    automations = {x.target: x for x in pauses if x.scope == "automation"}
    tables = {x.target: x for x in pauses if x.scope == "table"}

    def of(item) -> list[gate.Pause]:
        found = [x for x in (automations.get("*") or automations.get(item.automation),) if x]
        return found + [x for x in (tables.get(item.table),) if x]
    return of


@page()
def queue_page(p: Page):
    if not p.rights.has_queue:
        return p.render("error.html", status=404, title="No review queue",
                        message="This database has no review queue (sidecar.pending); a DBA installs it.")
    show_all = p.request.query_params.get("show") == "all"
    pager = Pager.of(p.request, 0)
    held, pager.total = queue.items(p.conn, open_only=not show_all, offset=pager.offset, limit=pager.per_page)
    labels = labels_mod.lookup(p.conn, [(i.table, r) for i in held for r in (i.old_row, i.new_row)])
    blocked_by = _blocking_pauses(p)
    refused = queue.still_refused(p.conn, [i for i in held if not blocked_by(i)]) if p.rights.approve else {}
    return p.render("queue.html", items=held, pager=pager, show_all=show_all, labels=labels,
                    columns=lambda item: _held_columns(item, labels),
                    blocked_by=blocked_by, refused=refused,
                    change=lambda item: _held_change(item, labels))


def _held_change(item, labels) -> str:
    """The held change's sentence, its row named and its foreign keys named."""
    return describe.held_change(item, labels)


def _pending_id(p: Page) -> int:
    try:
        return int(p.request.path_params["pending_id"])
    except ValueError:
        raise UsageError("that is not a held change's number") from None


@page("approve", changes="approve", back="/queue")
def approve(p: Page):
    # "Resume and approve": approving writes as the automation's run, which a pause of the
    # automation or of the table refuses; the button names what it resumes.
    resumed = ""
    automation, table = p.field("resume"), p.field("resume_table")
    if (automation or table) and not p.rights.pause:
        raise UsageError(f"resuming {automation or table} needs the sidecar_pauser role; nothing was done")
    for target in ({"automation": automation}, {"table": table}):
        if next(iter(target.values())):
            done = gate.resume(p.conn, **target)
            resumed += done[0].upper() + done[1:] + ". "
    kind, message = queue.approve(p.conn, _pending_id(p))
    return p.redirect("/queue", resumed + message, kind)


@page("approve", changes="reject", back="/queue")
def reject(p: Page):
    reason = p.field("reason")
    if not reason:
        raise UsageError("A rejection needs a reason, so that the automation's owner knows why; nothing was rejected")
    kind, message = queue.reject(p.conn, _pending_id(p), reason)
    return p.redirect("/queue", message, kind)


# -- event trail -------------------------------------------------------------------

@page()
def events_page(p: Page):
    kind = p.request.query_params.get("kind", "")
    kinds = [k for k, in p.conn.execute("SELECT DISTINCT kind FROM sidecar.events ORDER BY 1")]
    total = p.conn.execute("SELECT count(*) FROM sidecar.events WHERE %s = '' OR kind = %s", (kind, kind)).fetchone()[0]
    pager = Pager.of(p.request, total)
    rows = named.events(p.conn, p.conn.execute(
        "SELECT e.at, e.actor, e.kind, e.summary, e.run_id, r.automation, e.detail FROM sidecar.events e "
        "LEFT JOIN sidecar.runs r ON r.run_id = e.run_id WHERE %s = '' OR e.kind = %s "
        "ORDER BY e.at DESC, e.event_id DESC OFFSET %s LIMIT %s",
        (kind, kind, pager.offset, pager.per_page)).fetchall(), 3, 6)
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
        Route("/runs/{run_id}/rerun", rerun, methods=["POST"]),
        Route("/queue", queue_page),
        Route("/queue/{pending_id}/approve", approve, methods=["POST"]),
        Route("/queue/{pending_id}/reject", reject, methods=["POST"]),
        Route("/events", events_page),
    ]
