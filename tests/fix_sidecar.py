"""Fixtures and small helpers for tests of sidecar itself.

``sc``        an autocommit connection to a fresh database where sidecar is installed
``bot``       a second connection, as the automation (application_name ticket-bot)
``cli``       run the ``sidecar`` command against the test's database: ``cli("runs", "--json")``
``run_bot``   let the bot write inside a ``sidecar.Run`` and get the run id back
``snapshot``  a table's rows as ``{pk text: row::text}``, to compare byte for byte
``counting_calls``  a connection that counts calls of sidecar's functions, and the count
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

import sidecar.capture.schema
import sidecar.steps.runs
from sidecar.cli import cli as sidecar_cli
from tests.fix_db import Reader


@pytest.fixture
def sc(dsn: str) -> Iterator[psycopg.Connection]:
    """A connection (autocommit) to a fresh database with sidecar installed."""
    with Reader.connect(dsn, autocommit=True) as connection:
        sidecar.capture.schema.install(connection)
        yield connection


@pytest.fixture
def bot(sc: psycopg.Connection, make_conn: Callable[..., psycopg.Connection]) -> psycopg.Connection:
    """The automation's own session (autocommit, application_name ticket-bot)."""
    return make_conn(application_name="ticket-bot")


@pytest.fixture
def cli(dsn: str) -> Callable[..., Result]:
    """Invoke the sidecar CLI on the test's database; stdin is not a terminal."""

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(sidecar_cli, [*args, "--dsn", dsn], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def run_bot(bot: psycopg.Connection) -> Callable[..., uuid.UUID]:
    """``run_bot("UPDATE ...", "DELETE ...", automation="ticket-bot", meta={...})``: one
    transaction per statement (each its own action), in one run; returns the run id."""

    def run(*statements: str | tuple[str, tuple], automation: str = "ticket-bot", meta: dict | None = None,
            connection: psycopg.Connection | None = None) -> uuid.UUID:
        c = connection or bot
        with sidecar.steps.runs.Run(c, automation, meta=meta) as r:
            for stmt in statements:
                if isinstance(stmt, tuple):
                    c.execute(stmt[0], stmt[1])
                else:
                    c.execute(stmt)
        return r.run_id

    return run


def snapshot(conn: psycopg.Connection, table: str, order_by: str | None = None) -> list[str]:
    """Every row of ``table`` as PostgreSQL prints it, in key order: equal lists mean equal bytes."""
    # table and order_by are written by the tests themselves (quoted where needed).
    query = sql.SQL("SELECT t::text FROM {} t ORDER BY {}").format(sql.SQL(table), sql.SQL(order_by or "1"))
    return [r[0] for r in conn.execute(query).fetchall()]


def track(conn: psycopg.Connection, *tables: str, **options: object) -> None:
    import sidecar.capture.tracking

    for table in tables:
        sidecar.capture.tracking.track(conn, table, **options)


def mode_words(conn: psycopg.Connection, table: str) -> str:
    """What `sidecar track` says of the capture mode ``table`` is tracked in (read from
    sidecar.tracked): ", row triggers" in row mode, nothing in statement mode."""
    mode = conn.execute("SELECT capture_mode FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone()[0]
    return ", row triggers" if mode == "row" else ""


def undo(conn: psycopg.Connection, run_id: uuid.UUID | str, *, actions=None, rows=None, force=False, reason=None):
    import sidecar.undo.restore

    scope = sidecar.undo.restore.make_scope(conn, str(run_id), actions, rows)
    return sidecar.undo.restore.undo(conn, scope, force=force, reason=reason)


def counting_calls(conn: psycopg.Connection, make_conn: Callable[..., psycopg.Connection],
                   **options) -> tuple[psycopg.Connection, Callable[[str], int]]:
    """A new connection with track_functions on (skipped unless the test's role is a superuser,
    which that setting needs), and ``calls(pattern)``: the calls so far in its open transaction
    of sidecar functions whose name is LIKE pattern. Counts of earlier transactions may not be
    flushed yet: compare two counts taken inside one transaction."""
    if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        pytest.skip("counting function calls (track_functions) needs a superuser")
    counted = make_conn(options="-c track_functions=all", **options)

    def calls(pattern: str) -> int:
        return counted.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
                               "WHERE schemaname = 'sidecar' AND funcname LIKE %s", (pattern,)).fetchone()[0]

    return counted, calls
