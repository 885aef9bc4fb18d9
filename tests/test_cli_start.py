"""`sidecar undo` starts quickly: it loads what the undo needs, not the console, the
agents' tool, the demo or the other commands (issue 22: the whole CLI is timed)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import click

import sidecar.cli
from tests.fix_sidecar import snapshot, track

# Run the real `sidecar` entry point in a fresh interpreter and list, once it has
# exited, the sidecar modules (and heavy third-party ones) it had loaded.
_PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
from sidecar.cli import main
sys.argv = ["sidecar", *sys.argv[1:]]
main()
"""

# Modules the undo path has no use for.
NOT_FOR_UNDO = [
    "sidecar.console", "sidecar.cli.console", "sidecar.cli.mcp", "sidecar.agents", "sidecar.demo",
    "sidecar.cli.demo", "sidecar.ops", "sidecar.cli.archive", "sidecar.review", "sidecar.cluster",
    "sidecar.sqlalchemy", "sqlalchemy", "jinja2", "mcp", "starlette", "uvicorn", "sqlglot",
]


def _sidecar(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return proc, json.loads(line.removeprefix("MODULES "))


def test_undo_loads_only_what_the_undo_needs(sc, run_bot, dsn):
    sc.execute("CREATE TABLE prices (id int PRIMARY KEY, amount numeric NOT NULL)")
    sc.execute("INSERT INTO prices SELECT g, g * 10 FROM generate_series(1, 20) g")
    track(sc, "prices")
    before = snapshot(sc, "prices", "id")
    run_id = run_bot("UPDATE prices SET amount = amount * 2")

    proc, modules = _sidecar("undo", str(run_id), "--yes", "--dsn", dsn)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert snapshot(sc, "prices", "id") == before
    loaded = [m for m in NOT_FOR_UNDO if m in modules or any(x.startswith(m + ".") for x in modules)]
    assert loaded == []


def test_the_help_still_lists_every_command():
    proc, _ = _sidecar("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("undo", "serve", "mcp", "demo", "archive", "rule", "drill", "notify"):
        assert f"  {command} " in proc.stdout


def test_every_command_of_the_cli_modules_is_reachable():
    """A command added to a module of sidecar/cli but not to sidecar.cli.COMMANDS would never run."""
    defined = set()
    for info in [m for m in pkgutil.iter_modules(sidecar.cli.__path__) if not m.name.startswith("_")]:
        module = importlib.import_module(f"sidecar.cli.{info.name}")
        commands = {name: v for name, v in vars(module).items()
                    if isinstance(v, click.Command) and getattr(v.callback, "__module__", "") == module.__name__}
        # A group's subcommands are reached through the group.
        inner = {id(c) for g in commands.values() if isinstance(g, click.Group) for c in g.commands.values()}
        defined |= {(info.name, name) for name, c in commands.items() if id(c) not in inner}
    assert defined - set(sidecar.cli.COMMANDS.values()) == set()
