"""`sidecar undo`: preview, script or apply the restore of a run, its actions or rows."""

from __future__ import annotations

import sys

import click

from ..capture import labels
from ..errors import UsageError
from ..text import render
from ..undo import restore
from ._common import (
    EXIT_CONFLICTS,
    connect,
    dsn_option,
    handles_errors,
    json_option,
    progress_line,
)


@click.command()
@dsn_option
@click.argument("run_id")
@click.option("--action", "actions", multiple=True, metavar="KEY", help="Undo only this action (repeatable).")
@click.option("--row", "rows", multiple=True, metavar="TABLE:PK",
              help='Undo only this row (repeatable): tickets:42, order_items:{"order_id":1,"line":2}.')
@click.option("--preview", is_flag=True, help="Change nothing; list each row to restore and each conflict.")
@click.option("--sql", "as_sql", is_flag=True, help="Print the restore SQL that would run; change nothing.")
@click.option("--force", is_flag=True, help="Restore conflicting rows too (overwrites later edits).")
@click.option("--cascade", is_flag=True,
              help="First undo the later runs that wrote the same rows, newest first, in the same transaction.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", help="Why, for the event trail.")
@click.option("--lock-timeout", default="30s", show_default=True, help="How long to wait for the locks of the rows (or table) to restore.")
@json_option
@handles_errors
def undo(dsn, run_id, actions, rows, preview, as_sql, force, cascade, yes, reason, lock_timeout, as_json):
    """Restore the rows RUN_ID changed to how they were before it.

    RUN_ID is a full run id or a unique prefix of 6+ characters.
    Exit 3 when conflicting rows (changed since by someone else) were skipped.

    Example: sidecar undo 3f2a9c --preview
    """
    with connect(dsn) as conn:
        scope = restore.make_scope(conn, run_id, actions, rows)
        if cascade and (actions or rows):
            raise UsageError("--cascade undoes whole runs; leave out --action and --row")
        if preview or as_sql or not yes:
            with conn.transaction(force_rollback=True):
                first = []
                if cascade:
                    # The later runs are undone for real inside this rolled-back
                    # transaction, so the preview below shows what would be left.
                    from ..undo.cascade import undo_later_runs

                    first = undo_later_runs(conn, scope.run_id, force=force)
                planner, planned = restore.preview(conn, scope, force=force)
                if as_sql:
                    from ..undo.script import script

                    for chunk in script(conn, planner):
                        click.echo(chunk, nl=False)
                    return
                # Records named (capture.labels), looked up before the rollback, as the rows are now.
                named = None if preview and as_json else labels.lookup(
                    conn, render.preview_images(planner, planned) + [i for r in first for i in render.result_images(r)])
                text = "".join(f"First, a later run that wrote the same rows:\n"
                               f"{render.undo_result(r, would=True, labels=named)}\n"
                               for r in first) + render.preview(planner, planned, labels=named)
            if preview:
                click.echo(render.dumps({"preview": planned}) if as_json else text)
                return
            click.echo(text)
            if not sys.stdin.isatty():
                raise UsageError("not undoing without confirmation; add --yes (or --preview to only look)")
            if not click.confirm("Undo these changes?", default=False):
                click.echo("Nothing was changed.")
                return
        if cascade:
            from ..undo.cascade import undo_cascade

            results = undo_cascade(conn, scope, force=force, reason=reason, lock_timeout=lock_timeout)
        else:
            results = [restore.undo(conn, scope, force=force, reason=reason, lock_timeout=lock_timeout,
                                    progress=progress_line())]
        named = None if as_json else labels.lookup(conn, [i for r in results for i in render.result_images(r)])
    if as_json:
        click.echo(render.dumps({"undo": results[-1], "cascade": results[:-1]}))
    else:
        click.echo("\n".join(render.undo_result(r, labels=named) for r in results))
    if any(sum(t.get("conflict", 0) for t in r.tables.values()) for r in results):
        sys.exit(EXIT_CONFLICTS)
