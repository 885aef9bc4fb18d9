"""The `sidecar` command: a thin layer over the library. Exit codes:
0 done; 1 failed and nothing changed; 2 usage or bad input; 3 undo done but
conflicting rows were skipped (each listed).

Each command's module is imported only when that command runs (or when the
help lists them all), so `sidecar undo` does not pay for the console, the
agents' tool or the demo."""

from __future__ import annotations

import importlib

import click

# Command name -> (module under sidecar.cli, attribute).
COMMANDS = {
    "install": ("capture", "install"), "uninstall": ("capture", "uninstall"),
    "track": ("capture", "track"), "untrack": ("capture", "untrack"),
    "runs": ("runs", "runs_cmd"), "show": ("runs", "show"), "undo": ("undo", "undo"),
    "steps": ("steps", "steps_cmd"), "rerun": ("steps", "rerun"),
    "pause": ("gate", "pause"), "resume": ("gate", "resume"),
    "rule": ("review", "rule_group"), "queue": ("review", "queue_cmd"),
    "approve": ("review", "approve_cmd"), "reject": ("review", "reject_cmd"),
    "status": ("ops", "status"), "purge": ("ops", "purge"), "archive": ("archive", "archive"),
    "inventory": ("inventory", "inventory_cmd"), "owners": ("inventory", "owners_cmd"),
    "drill": ("inventory", "drill_cmd"),
    "serve": ("console", "serve"), "mcp": ("mcp", "mcp"), "demo": ("demo", "demo"), "notify": ("notify", "notify"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when looked up, not when the group is."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attr = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"{__name__}.{module}"), attr), name)
        return self.commands.get(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rollback-sidecar")
def cli():
    """Capture, pause, undo and safely rerun the database writes of automations.

    Quick start on a throwaway database: sidecar demo
    """


def main() -> None:
    cli(prog_name="sidecar")
