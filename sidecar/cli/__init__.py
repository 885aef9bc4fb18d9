"""The `sidecar` command: a thin layer over the library. Exit codes:
0 done; 1 failed and nothing changed; 2 usage or bad input; 3 undo done but
conflicting rows were skipped (each listed)."""

from __future__ import annotations

import click

from . import archive, capture, console, demo, gate, inventory, mcp, ops, review, runs, steps, undo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rollback-sidecar")
def cli():
    """Capture, pause, undo and safely rerun the database writes of automations.

    Quick start on a throwaway database: sidecar demo
    """

for _command in (
    capture.install, capture.uninstall, capture.track, capture.untrack,
    runs.runs_cmd, runs.show, undo.undo, steps.steps_cmd, steps.rerun,
    gate.pause, gate.resume, *review.COMMANDS,
    ops.status, ops.purge, *archive.COMMANDS, *inventory.COMMANDS,
    console.serve, mcp.mcp, demo.demo,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="sidecar")
