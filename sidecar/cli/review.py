"""`sidecar rule ...`, `sidecar queue`, `sidecar approve`, `sidecar reject`: hold rules and the review queue.

A thin click layer over sidecar.review. Exit codes as everywhere: 0 done; 1 failed and
nothing changed (an approval refused for a conflict included); 2 bad input.
"""

from __future__ import annotations

import sys
from types import ModuleType

import click

from .. import db
from ..capture import labels
from ..review import held
from ..text import describe, render
from ._common import dsn_option, handles_errors, json_option


def _rules() -> ModuleType:
    """sidecar.rules, imported when a rule command runs: it loads sqlglot, which every other command can do without."""
    from ..review import rules

    return rules


def _short(run_id) -> str:
    return str(run_id)[:8]


def named(conn, items: list[held.HeldChange]) -> dict[int, str]:
    """pending_id -> the held change as a sentence, its records named (capture.labels)."""
    found = labels.lookup(conn, [(i.table, r) for i in items for r in (i.old_row, i.new_row)])
    return {i.pending_id: describe.held_change(i, found) for i in items}


def _line(item: held.HeldChange, names: dict[int, str]) -> str:
    """item.text with the records named."""
    return item.text.replace(item.change, names.get(item.pending_id, item.change), 1)


def queue_text(items: list[held.HeldChange], names: dict[int, str] | None = None) -> str:
    """The queue grouped by run and action, each item one plain-language line."""
    names = names or {}
    if not items:
        return "No held changes wait for review."
    lines = [f"{len(items)} held change{'s' if len(items) != 1 else ''} wait{'' if len(items) != 1 else 's'} "
             "for review (sidecar approve ID | sidecar reject ID --reason TEXT)."]
    groups: dict[tuple, list[held.HeldChange]] = {}
    for item in items:
        groups.setdefault((item.run_id, item.action, item.automation), []).append(item)
    for (run_id, action, automation), items_held in groups.items():
        lines.append("")
        lines.append(f"{automation}  run {_short(run_id)}  action {action}  held {render.when(items_held[0].held_at)}")
        if items_held[0].context is not None:
            lines += [f"  {line}" for line in items_held[0].context.lines()]
        for item in items_held:
            lines.append(f"  #{item.pending_id}  {_line(item, names)}")
        if len(items_held) > 1:
            lines.append(f"  the whole action: sidecar approve --action {action} --run {_short(run_id)}"
                         f"  |  sidecar reject --action {action} --run {_short(run_id)} --reason TEXT")
    return "\n".join(lines)


def _item_json(item: held.HeldChange) -> dict:
    return dict(render.to_jsonable(item), text=item.text)



@click.group("rule")
def rule_group():
    """Hold rules: which automation writes wait for review.

    Example: sidecar rule add invoices --when "NEW.refund_amount > 500" --hold --reason "refund over limit"
    """

@rule_group.command("add")
@dsn_option
@click.argument("table")
@click.option("--when", "when", metavar="EXPR",
              help="Hold rows where EXPR is true: NEW.col / OLD.col, literals, comparisons, AND/OR/NOT, "
                   "IS NULL, IN (...), BETWEEN, LIKE, casts, lower/upper/abs/coalesce/length... "
                   "It is checked on every row written: add AND NEW.col IS DISTINCT FROM OLD.col to hold "
                   "only writes that change col.")
@click.option("--hold", is_flag=True, default=True,
              help="Hold matching writes for review (the default, and the only action so far).")
@click.option("--reason", required=True, help="Why: reviewers read it next to each held change.")
@click.option("--automation", help="Only hold this automation's writes (default: every automation's).")
@click.option("--max-rows", type=int, metavar="N",
              help="Hold every row past the N-th of one statement (with --when: of its matching rows).")
@json_option
@handles_errors
def rule_add(dsn, table, when, hold, reason, automation, max_rows, as_json):
    """Hold automations' writes to TABLE that match a rule; the statement succeeds without them.

    Held rows wait in `sidecar queue` until approved or rejected; automations
    can read them in sidecar.pending.

    Example: sidecar rule add invoices --when "NEW.refund_amount > 500" --reason "refund over limit"
    """
    with db.connect(dsn) as conn:
        rule = _rules().add_rule(conn, table, when=when, reason=reason, automation=automation, max_rows=max_rows)
    if as_json:
        click.echo(render.dumps({"rule": rule}))
        return
    click.echo(f"rule {rule.rule_id} on {rule.table}: hold {rule.condition} (reason: {rule.reason})")

@rule_group.command("list")
@dsn_option
@click.option("--all", "include_dropped", is_flag=True, help="Include dropped rules.")
@json_option
@handles_errors
def rule_list(dsn, include_dropped, as_json):
    """The hold rules, by id."""
    with db.connect(dsn) as conn:
        found = _rules().list_rules(conn, include_dropped=include_dropped)
        missing = _rules().tables_missing_hold(conn)
    if as_json:
        click.echo(render.dumps({"rules": found, "tables_missing_hold_trigger": missing}))
        return
    if not found:
        click.echo("No hold rules. Add one: sidecar rule add TABLE --when \"NEW.col > 500\" --reason TEXT")
    for r in found:
        state = "" if r.active else "  [dropped]"
        click.echo(f"#{r.rule_id}  {r.table}  hold {r.condition}  (reason: {r.reason}; "
                   f"by {r.created_by} at {render.when(r.created_at)}){state}")
    for table in missing:
        click.echo(f"warning: {table} has rules but is missing hold triggers (tracked again since?); "
                   f"run: sidecar rule refresh", err=True)

@rule_group.command("drop")
@dsn_option
@click.argument("rule_id", type=int)
@handles_errors
def rule_drop(dsn, rule_id):
    """Drop hold rule RULE_ID; changes it already held stay in the queue."""
    with db.connect(dsn) as conn:
        rule = _rules().drop_rule(conn, rule_id)
    click.echo(f"dropped rule {rule.rule_id} on {rule.table} (hold {rule.condition})")

@rule_group.command("refresh")
@dsn_option
@handles_errors
def rule_refresh(dsn):
    """Recompile every table's hold trigger from its rules (after tracking a table again)."""
    with db.connect(dsn) as conn:
        tables = _rules().refresh(conn)
    for table in tables:
        click.echo(f"recompiled hold trigger of {table}")
    if not tables:
        click.echo("No table has hold rules.")

@click.command("queue")
@dsn_option
@click.option("--all", "include_decided", is_flag=True, help="Include approved and rejected changes.")
@json_option
@handles_errors
def queue_cmd(dsn, include_decided, as_json):
    """Held changes waiting for review, in plain language."""
    with db.connect(dsn) as conn:
        items = held.queue(conn, include_decided=include_decided)
        names = {} if as_json else named(conn, items)
    if as_json:
        click.echo(render.dumps({"queue": [_item_json(i) for i in items]}))
    else:
        click.echo(queue_text(items, names))

def _decision_options(f):
    f = click.option("--run", "run_ref", metavar="RUN_ID",
                     help="The run of --action (id or 6+ character prefix).")(f)
    f = click.option("--action", metavar="KEY", help="Decide on every held change of this action of --run.")(f)
    return click.argument("pending_id", type=int, required=False)(f)

@click.command("approve")
@dsn_option
@_decision_options
@click.option("--reason", "why", help="Why (optional), for the event trail.")
@json_option
@handles_errors
def approve_cmd(dsn, pending_id, action, run_ref, why, as_json):
    """Apply held change ID (or a whole --action of --run) under its original run.

    Refused, applying nothing (exit 1), when a row changed since it was held.

    Example: sidecar approve 12    or    sidecar approve --action refund:17 --run 3f2a9c
    """
    with db.connect(dsn) as conn:
        decision = held.approve(conn, pending_id, run=run_ref, action=action, why=why)
        names = {} if as_json else named(conn, decision.items)
    if as_json:
        click.echo(render.dumps({
            "decision": decision.decision,
            "items": [_item_json(i) for i in decision.items],
            "conflicts": [{"pending_id": c.item.pending_id, "kind": c.kind, "now": c.now, "text": c.text}
                          for c in decision.conflicts],
        }))
    if decision.refused:
        if not as_json:
            click.echo("sidecar: approval refused, nothing was applied:", err=True)
            for c in decision.conflicts:
                click.echo(f"  #{c.item.pending_id}: {c.text}", err=True)
            click.echo("The changes stay in the queue (marked conflict): reject them, or approve again "
                       "once the row is back as it was.", err=True)
        sys.exit(1)
    if as_json:
        return
    for item in decision.items:
        click.echo(f"approved #{item.pending_id}: {names.get(item.pending_id, item.change)}")
    first = decision.items[0]
    click.echo(f"Applied as run {_short(first.run_id)} ({first.automation}), action {first.action}; "
               f"undo with: sidecar undo {_short(first.run_id)} --action {first.action}")

@click.command("reject")
@dsn_option
@_decision_options
@click.option("--reason", "why", required=True, help="Why: goes to the event trail.")
@json_option
@handles_errors
def reject_cmd(dsn, pending_id, action, run_ref, why, as_json):
    """Drop held change ID (or a whole --action of --run); the row is never written.

    Example: sidecar reject 13 --reason "customer already refunded by phone"
    """
    with db.connect(dsn) as conn:
        decision = held.reject(conn, pending_id, run=run_ref, action=action, why=why)
        names = {} if as_json else named(conn, decision.items)
    if as_json:
        click.echo(render.dumps({"decision": decision.decision, "items": [_item_json(i) for i in decision.items]}))
        return
    for item in decision.items:
        click.echo(f"rejected #{item.pending_id}: {names.get(item.pending_id, item.change)} ({why})")
