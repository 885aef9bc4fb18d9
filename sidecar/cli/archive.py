"""`sidecar archive`: write finished runs' history to files before a purge, and load a run back."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..ops import archive as archive_mod
from ..text import render
from ._common import connect, dsn_option, handles_errors, json_option, parse_since


@click.group(invoke_without_command=True)
@dsn_option
@click.option("--before", help="Archive finished runs started before this time: 90d, 2026-01-01, ...")
@click.option("--to", "directory", metavar="DIR", help="Directory for the files and their manifest (created if missing).")
@click.option("--automation", help="Only runs of this automation.")
@json_option
@click.pass_context
@handles_errors
def archive(ctx, dsn, before, directory, automation, as_json):
    """Write the history of finished runs to compressed files, with a manifest; change nothing.

    Purge afterwards to free the space; `sidecar archive restore FILE` loads a run back.

    Example: sidecar archive --before 90d --to /backups/sidecar && sidecar purge --before 90d --yes
    """
    if ctx.invoked_subcommand is not None:
        return
    if not before or not directory:
        raise UsageError("sidecar archive needs --before WHEN and --to DIR (or: sidecar archive restore FILE)")
    cutoff = parse_since(before)
    with connect(dsn) as conn:
        report = archive_mod.archive(conn, cutoff, directory, automation=automation)
    click.echo(render.dumps({"archive": report}) if as_json else report.text())


@archive.command("restore")
@dsn_option
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@handles_errors
def restore(dsn, file, as_json):
    """Load a purged run's history back from FILE (checked against its manifest's checksum).

    Example: sidecar archive restore /backups/sidecar/run-6f1c2d3e-....jsonl.gz
    """
    with connect(dsn) as conn:
        report = archive_mod.restore(conn, file)
    click.echo(render.dumps({"restore": report}) if as_json else report.text())
