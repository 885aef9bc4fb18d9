"""`sidecar pause` and `sidecar resume`: stop an automation's (or a table's) writes, and let them through again."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..review import gate
from ._common import connect, dsn_option, handles_errors


@click.command()
@dsn_option
@click.argument("automation", required=False)
@click.option("--table", help="Pause every automation's writes to this table instead.")
@click.option("--reason", required=True, help="Why: people read it in the error the automation gets.")
@handles_errors
def pause(dsn, automation, table, reason):
    """Pause AUTOMATION ('*' pauses every automation), or --table TABLE.

    Example: sidecar pause ticket-bot --reason "matching wrong customers"
    """
    if bool(automation) == bool(table):
        raise UsageError("name one automation ('*' for all) or --table TABLE")
    with connect(dsn) as conn:
        click.echo(gate.pause(conn, automation=automation, table=table, reason=reason))


@click.command()
@dsn_option
@click.argument("automation", required=False)
@click.option("--table", help="Resume automations' writes to this table.")
@handles_errors
def resume(dsn, automation, table):
    """Resume AUTOMATION ('*' lifts the pause of every automation), or --table TABLE."""
    if bool(automation) == bool(table):
        raise UsageError("name one automation ('*' for all) or --table TABLE")
    with connect(dsn) as conn:
        click.echo(gate.resume(conn, automation=automation, table=table))
