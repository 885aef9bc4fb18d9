"""`sidecar runs` and `sidecar show`: what ran, and one run in plain language."""

from __future__ import annotations

import click

from ..capture import context, history, labels
from ..ops import named as named_events
from ..ops import summary as run_summary
from ..review import held as held_mod
from ..steps import runs
from ..text import render
from ._common import connect, dsn_option, handles_errors, json_option, parse_since


@click.command("runs")
@dsn_option
@click.option("--automation", help="Only runs of this automation.")
@click.option("--since", help="Only runs started since: 30m, 2h, 3d, or an ISO time.")
@click.option("--status", "state", type=click.Choice(runs.STATES),
              help="Only runs in this state (as the status column says it).")
@click.option("--limit", default=50, show_default=True)
@json_option
@handles_errors
def runs_cmd(dsn, automation, since, state, limit, as_json):
    """List runs, newest first, with rows changed per table."""
    since_at = parse_since(since)
    with connect(dsn) as conn:
        found = runs.list_runs(conn, automation=automation, since=since_at, status=state, limit=limit)
    click.echo(render.dumps({"runs": [render.run_json(r) for r in found]}) if as_json else render.runs_table(found))


@click.command()
@dsn_option
@click.argument("run_id")
@click.option("--limit", default=200, show_default=True, help="Changes shown per action.")
@click.option("--actions", "actions_max", default=100, show_default=True, type=click.IntRange(min=0),
              help="Actions shown, the first ones (0: all).")
@json_option
@handles_errors
def show(dsn, run_id, limit, actions_max, as_json):
    """A run's actions and changes in plain language."""
    with connect(dsn) as conn:
        info = runs.get(conn, run_id)
        actions, more_actions = history.changes_by_action(conn, info.run_id, limit=limit,
                                                          actions=actions_max or None)
        raw_events = conn.execute(
            "SELECT at, actor, summary, detail FROM sidecar.events WHERE run_id = %s ORDER BY at", (info.run_id,)
        ).fetchall()
        events = named_events.events(conn, raw_events, 2, 3)
        held = held_mod.of_run(conn, info.run_id)
        if more_actions:
            contexts = context.of_actions(conn, info.run_id, [k for k, _, _ in actions])
        else:
            # Every action: one whose writes were all held (or changed nothing) still says why.
            contexts = context.of_actions(conn, info.run_id)
            listed = {k for k, _, _ in actions}
            if any(k not in listed for k in contexts):
                order = {k: i for i, (k,) in enumerate(conn.execute(
                    "SELECT key FROM sidecar.actions WHERE run_id = %s AND key = ANY(%s) ORDER BY action_id",
                    (info.run_id, list(listed | set(contexts)))).fetchall())}
                actions = sorted(actions + [(k, [], 0) for k in contexts if k not in listed],
                                 key=lambda a: order.get(a[0], len(order)))
        summary = run_summary.summarize(conn, info)
        named = labels.lookup(conn, [(c.table, i) for _, ch, _ in actions for c in ch for i in (c.before, c.after)]
                              + [(h.table, i) for h in held for i in (h.old_row, h.new_row)])
    if as_json:
        click.echo(render.dumps({
            "run": render.run_json(info),
            "summary": summary,
            "actions": [{"key": k, "context": contexts.get(k),
                         "changes": [dict(render.to_jsonable(c), text=render.describe.change_line(c, named))
                                     for c in ch], "more": m} for k, ch, m in actions],
            "more_actions": more_actions,
            "held": [dict(render.to_jsonable(h), text=h.text) for h in held],
            "events": [{"at": a, "actor": b, "summary": s, "text": t}
                       for (a, b, s, _), (_, _, t) in zip(raw_events, events)],
        }))
    else:
        click.echo(render.show_run(info, actions, events, more_actions, contexts, summary, held, named))
