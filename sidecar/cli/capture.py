"""`sidecar install`, `uninstall`, `track`, `untrack`: the shadow schema and the tables it captures."""

from __future__ import annotations

import click

from ..capture import schema, tracking
from ..errors import UsageError
from ._common import connect, dsn_option, handles_errors


@click.command()
@dsn_option
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@handles_errors
def install(dsn, dry_run):
    """Create or upgrade the shadow schema (idempotent).

    Example: sidecar install --dsn postgresql://admin@db/app
    """
    with connect(dsn) as conn:
        report = schema.install(conn, dry_run=dry_run)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        if not report.changed:
            click.echo("-- sidecar is up to date: nothing would run")
        for text in report.statements:
            click.echo(text)
        return
    if not report.changed:
        click.echo("sidecar is already installed and up to date: nothing changed.")
        _say_undo_missing(report)
        return
    for name in report.migrations:
        click.echo(f"applied migration {name}")
    for name in report.functions:
        click.echo(f"applied functions {name}")
    for name in report.templates:
        click.echo(f"stored trigger template {name}")
    if report.shapes_watched:
        click.echo("created event triggers sidecar_watch_alter and sidecar_watch_drop: "
                   "ALTER TABLE on a tracked table updates its history columns at once")
    for table in report.rerendered:
        click.echo(f"re-rendered capture of {table}")
    for table in report.undo_functions:
        click.echo(f"made the undo function of {table}: sidecar_undoer can restore it now")
    _say_undo_missing(report)
    click.echo("sidecar is installed.")


def _say_undo_missing(report: schema.InstallReport) -> None:
    for table, owner in report.undo_missing:
        click.echo(f"note: {table} has no undo function, so undoers cannot restore it; "
                   f"as its owner ({owner}), run: sidecar track {table}")


@click.command()
@dsn_option
@click.option("--yes", is_flag=True, help="Confirm: remove every trigger and function sidecar created.")
@click.option("--keep-history", is_flag=True, help="Keep the captured history (runs, changes, events).")
@handles_errors
def uninstall(dsn, yes, keep_history):
    """Remove sidecar's triggers, functions and schema."""
    if not yes:
        raise UsageError("uninstall removes sidecar's triggers and schema; add --yes to confirm")
    with connect(dsn) as conn:
        untracked = schema.uninstall(conn, keep_history=keep_history)
    for table in untracked:
        click.echo(f"removed capture triggers from {table}")
    click.echo("sidecar is uninstalled" + (" (history kept in schema sidecar)." if keep_history else "."))


@click.command()
@dsn_option
@click.argument("tables", nargs=-1, required=True)
@click.option("--capture", type=click.Choice(["tagged", "all"]), default="tagged", show_default=True,
              help="tagged: only writes of runs; all: untagged writes too.")
@click.option("--capture-mode", type=click.Choice(["statement", "row"]), default=None,
              help="statement: one trigger call per statement, cheapest for bulk writes; row: one call per "
                   "changed row, cheapest for small transactions and untagged writes. "
                   "Default: a tracked table keeps its mode, a new one is statement.")
@click.option("--label-column", help="Column that names a row for people, e.g. name.")
@click.option("--display-name", help="What people call a row of this table, e.g. ticket.")
@click.option("--owner", metavar="NAME", help="Inventory: the team or person who answers for this table.")
@click.option("--risk", type=click.Choice(["low", "medium", "high"]), help="Inventory: harm a bad write does.")
@click.option("--kind", type=click.Choice(["draft", "final"]), help="Inventory: drafts people review, or final records.")
@handles_errors
def track(dsn, tables, capture, capture_mode, label_column, display_name, owner, risk, kind):
    """Capture writes to TABLES (schema-qualified, '"Mixed Case"' quoted).

    Example: sidecar track tickets customers --label-column name
    Example: sidecar track invoices --owner billing-team --risk high --kind final
    Example: sidecar track orders --capture-mode row
    """
    inventory = ", ".join(f"{k} {v}" for k, v in (("owner", owner), ("risk", risk), ("kind", kind)) if v)
    with connect(dsn) as conn:
        for table in tables:
            t = tracking.track(conn, table, capture=capture, capture_mode=capture_mode,
                               label_column=label_column, display_name=display_name,
                               owner=owner, risk=risk, kind=kind)
            mode = ", row triggers" if t.capture_mode == "row" else ""
            click.echo(f"tracking {t.table} (capture {t.capture}{mode}, key {', '.join(t.pk_columns)}"
                       + (f"; {inventory}" if inventory else "") + ")")
            owner_needed = tracking.undo_function_owner_needed(conn, t.table)
            if owner_needed:
                click.echo(f"note: only {t.table}'s owner ({owner_needed}) can let undoers restore it; "
                           f"as {owner_needed}, run: sidecar track {t.table}")


@click.command()
@dsn_option
@click.argument("tables", nargs=-1, required=True)
@handles_errors
def untrack(dsn, tables):
    """Stop capturing TABLES; their history is kept."""
    with connect(dsn) as conn:
        for table in tables:
            tracking.untrack(conn, table)
            click.echo(f"stopped tracking {table} (history kept)")
