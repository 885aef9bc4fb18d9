"""`sidecar inventory`, `sidecar owners`, `sidecar drill`: know what automations touch, who is on duty,
and whether the team can pause, restore and explain before an automation goes live.

A thin click layer over sidecar.ops (inventory, owners, drill).
Exit codes: 0 done; 1 a drill check failed (or the command failed); 2 bad input.
"""

from __future__ import annotations

import sys

import click

from .. import db
from ..text import render
from ._common import dsn_option, handles_errors, json_option


@click.command("inventory")
@dsn_option
@click.option("--days", default=7, show_default=True, help="Count automations' rows written in this many days.")
@click.option("--scan-limit", default=100_000, show_default=True, metavar="ROWS",
              help="Look for automations' writes in untracked tables up to this many rows.")
@json_option
@handles_errors
def inventory_cmd(dsn, days, scan_limit, as_json):
    """Every tracked table: owner, risk, kind, capture, hold rules, who wrote to it; with warnings.

    Warns about high-risk tables automations write without a hold rule, tables
    without an owner, capture switched off, and untracked tables automations
    appear to write (the heuristic is explained in the output).

    Example: sidecar inventory --json
    """
    from ..ops.inventory import inventory

    with db.connect(dsn) as conn:
        report = inventory(conn, days=days, scan_limit=scan_limit)
    click.echo(render.dumps({"inventory": report}) if as_json else report.text())

@click.command("owners")
@dsn_option
@click.option("--automation", help="Only this automation.")
@json_option
@handles_errors
def owners_cmd(dsn, automation, as_json):
    """Per automation, who can pause, approve, undo, rerun and read its logs (from the role grants).

    Flags a duty nobody but superusers (or nobody at all) can do.

    Example: sidecar owners --automation billing-bot
    """
    from ..ops.owners import owners

    with db.connect(dsn) as conn:
        report = owners(conn, automation=automation)
    click.echo(render.dumps({"owners": report}) if as_json else report.text())

@click.command("drill")
@dsn_option
@click.option("--table", required=True, help="The table to drill (a scratch copy of it is used).")
@click.option("--automation", help="The automation about to go live: its duties are checked too.")
@click.option("--sample", "sample_rows", default=20, show_default=True, metavar="ROWS",
              help="Rows of the table copied into the scratch copy.")
@json_option
@handles_errors
def drill_cmd(dsn, table, automation, sample_rows, as_json):
    """The launch checklist on a scratch copy of TABLE; exit 1 when a check fails.

    Pause stops fresh writes; one record restored; a small batch restored; one
    failed item rerun without a duplicate; the event trail explains it. The live
    rows are never touched; the scratch schema and the drill's runs are removed
    afterwards (the result stays as one 'drill' event).

    Example: sidecar drill --table billing_notes --automation billing-bot --json
    """
    from ..ops.drill import run_drill

    with db.connect(dsn) as conn:
        report = run_drill(conn, table, automation=automation, sample_rows=sample_rows)
    if as_json:
        click.echo(render.dumps({"drill": dict(render.to_jsonable(report), passed=report.passed)}))
    else:
        click.echo(report.text())
    if not report.passed:
        sys.exit(1)
