"""`sidecar demo`: the seed scenario on a throwaway PostgreSQL."""

from __future__ import annotations

import click

from ..demo import run_demo
from ._common import handles_errors


@click.command()
@click.option("--keep", is_flag=True, help="Leave the throwaway server running and print its DSN.")
@handles_errors
def demo(keep):
    """The seed scenario on a throwaway PostgreSQL this command starts itself."""
    run_demo(click.get_current_context().find_root().command, echo=click.echo, keep=keep)
