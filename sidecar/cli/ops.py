"""`sidecar status` and `sidecar purge`: the state of things, and removing old history when asked."""

from __future__ import annotations

import sys

import click

from ..errors import UsageError
from ..ops import retention
from ..ops.status import gather
from ..text import render
from ._common import connect, dsn_option, handles_errors, json_option, parse_since


@click.command()
@dsn_option
@json_option
@handles_errors
def status(dsn, as_json):
    """Tracked tables, automations and their pause state, recent runs."""
    with connect(dsn) as conn:
        report = gather(conn)
    click.echo(render.dumps(report) if as_json else report.text())


@click.command()
@dsn_option
@click.option("--before", required=True, help="Purge runs started before this time: 90d, 2026-01-01, ...")
@click.option("--automation", help="Only runs of this automation.")
@click.option("--yes", is_flag=True, help="Confirm: captured history of these runs is removed for good.")
@handles_errors
def purge(dsn, before, automation, yes):
    """Remove old captured history (runs and events stay, marked purged).

    Runs still running, with held items, or being undone are kept. To keep the history
    readable after the purge, archive it first (sidecar archive --before 90d --to DIR).
    Example: sidecar purge --before 90d --yes
    """
    cutoff = parse_since(before)
    if not yes:
        raise UsageError("purge removes captured history for good; add --yes to confirm")
    with connect(dsn) as conn:
        with click.progressbar(length=1, label="purging", file=sys.stderr) as bar:
            def progress(done, total):
                bar.length = total
                bar.update(1)

            report = retention.purge(conn, cutoff, automation=automation, progress=progress)
    click.echo(report.text())
