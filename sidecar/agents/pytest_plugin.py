"""pytest plugin for users' CI: prove that an automation's run can be undone.

Loaded by pytest wherever rollback-sidecar is installed (entry point `pytest11`), it stays
off (no fixtures, no options used) unless turned on, by any of:

- installing the extra: ``pip install 'rollback-sidecar[pytest]'``;
- ``pytest --sidecar``, or ``sidecar = true`` under ``[tool.pytest.ini_options]`` / ``[pytest]``;
- ``SIDECAR_PYTEST=1`` (``SIDECAR_PYTEST=0`` keeps it off whatever else says).

Its fixtures (sidecar/agents/pytest_fixtures.py): ``sidecar_dsn`` and ``sidecar_db`` (a fresh
database with sidecar installed, on the server sidecar/agents/testdb.py finds),
``sidecar_track`` (track tables) and ``sidecar_undoable`` (the assertion):

    def test_ticket_bot_can_be_undone(sidecar_db, sidecar_dsn, sidecar_track, sidecar_undoable):
        sidecar_db.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
        sidecar_db.execute("INSERT INTO tickets VALUES (42, 'open')")
        sidecar_track("tickets")
        with sidecar_undoable():
            ticket_bot.main(sidecar_dsn)
"""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest

FIXTURES = "sidecar.agents.pytest_fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sidecar", "sidecar: prove an automation's run can be undone")
    group.addoption("--sidecar", action="store_true", default=False,
                    help="Turn on sidecar's fixtures (sidecar_db, sidecar_track, sidecar_undoable).")
    parser.addini("sidecar", type="bool", default=False, help="Turn on sidecar's fixtures.")


def _extra_installed() -> bool:
    """Whether rollback-sidecar[pytest] is installed: every package of that extra is."""
    try:
        requires = importlib.metadata.requires("rollback-sidecar") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    names = [re.split(r"[ ;<>=!\[~]", r, maxsplit=1)[0] for r in requires if re.search(r"extra\s*==\s*.pytest.", r)]
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return False
    return bool(names)


def enabled(config: pytest.Config) -> bool:
    env = os.environ.get("SIDECAR_PYTEST", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return bool(config.getoption("sidecar") or config.getini("sidecar") or _extra_installed())


def pytest_configure(config: pytest.Config) -> None:
    if enabled(config) and not config.pluginmanager.has_plugin(FIXTURES):
        config.pluginmanager.import_plugin(FIXTURES)
