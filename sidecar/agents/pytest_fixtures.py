"""The fixtures of sidecar's pytest plugin, registered by `pytest_plugin` when it is on.

``sidecar_dsn``       DSN of a fresh database of the test's own, with sidecar installed
``sidecar_db``        an autocommit psycopg connection to it (a superuser's)
``sidecar_track``     ``sidecar_track("tickets", "notes", capture="tagged")``
``sidecar_undoable``  ``with sidecar_undoable() as proof: <the automation runs>``: on leaving the
                      block, the runs started in it are undone (newest first) and every tracked
                      table must be as it was when the block began, row for row; else the test
                      fails with what differs. ``proof.runs`` holds the runs undone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ..capture import schema, tracking
from . import testdb

_SERVERS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def sidecar_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """DSN of the server's maintenance database (see sidecar/agents/testdb.py for which server)."""
    try:
        with testdb.server() as (kind, dsn):
            pytestconfig.stash.setdefault(_SERVERS, []).append(kind)
            yield dsn
    except testdb.NoServer as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def _sidecar_template(sidecar_server: str) -> Iterator[str]:
    name = testdb.create_database(sidecar_server)
    with psycopg.connect(make_conninfo(sidecar_server, dbname=name), autocommit=True) as conn:
        schema.install(conn)
    yield name
    testdb.drop_database(sidecar_server, name)


@pytest.fixture
def sidecar_dsn(sidecar_server: str, _sidecar_template: str) -> Iterator[str]:
    name = testdb.create_database(sidecar_server, template=_sidecar_template)
    yield make_conninfo(sidecar_server, dbname=name)
    testdb.drop_database(sidecar_server, name)


@pytest.fixture
def sidecar_db(sidecar_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(sidecar_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def sidecar_track(sidecar_db: psycopg.Connection) -> Callable[..., None]:
    def track(*tables: str, capture: str = "tagged") -> None:
        for table in tables:
            tracking.track(sidecar_db, table, capture=capture)

    return track


@dataclass
class Proof:
    runs: list[uuid.UUID] = field(default_factory=list)


@pytest.fixture
def sidecar_undoable(sidecar_db: psycopg.Connection) -> Callable[[], contextmanager]:
    @contextmanager
    def undoable() -> Iterator[Proof]:
        before, seen = testdb.Snapshot.take(sidecar_db), testdb.known_runs(sidecar_db)
        proof = Proof()
        yield proof
        proof.runs, problems = testdb.undo_and_compare(sidecar_db, before, seen)
        if problems:
            runs = ", ".join(str(r)[:8] for r in proof.runs) or "none"
            pytest.fail(f"the automation's writes cannot be undone exactly (runs undone: {runs}); "
                        f"after the undo:\n  " + "\n  ".join(problems), pytrace=False)

    return undoable


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for kind in terminalreporter.config.stash.get(_SERVERS, []):
        terminalreporter.write_line(f"sidecar fixtures ran on a PostgreSQL server: {kind}")
