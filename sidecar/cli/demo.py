"""`sidecar demo`: the seed scenario on a throwaway PostgreSQL."""

from __future__ import annotations

import click

from ..demo import run_demo
from ._common import handles_errors


@click.command()
@click.option("--keep", is_flag=True, help="Leave the throwaway server running and print its DSN.")
@click.option("--hand-over", is_flag=True,
              help="Stop where a person takes over in the console (bad run written, a person's fix made, "
                   "refunds held), keep the server running and print how to open the console.")
@handles_errors
def demo(keep, hand_over):
    """The seed scenario on a throwaway PostgreSQL this command starts itself."""
    run_demo(click.get_current_context().find_root().command, echo=click.echo, keep=keep, hand_over=hand_over)
