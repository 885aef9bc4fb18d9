"""A real PgBouncer in transaction pooling mode in front of the test server.

``pgbouncer``        (session) the running pooler: ``.dsn_for(dbname)``
``pooled_conn``      open client connections to the test's database through it:
                     ``pooled_conn(autocommit=True)``

Debian's ``pgbouncer`` package (``.ci/run`` installs it). Where the binary is missing the
tests that need it are skipped with the reason. Its pool has ONE server connection per
database, so that two clients share it, as two users of a busy pooler do. PgBouncer refuses
to run as root: it is started as an unprivileged user then (``-u``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)


def _ini_value(value: str) -> str:
    # PgBouncer's connect strings take libpq's quoting: single quotes, backslash escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class PgBouncer:
    host: str
    port: int
    user: str
    password: str | None
    logfile: Path

    def dsn_for(self, dbname: str) -> str:
        params = {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}
        if self.password:
            params["password"] = self.password
        return make_conninfo(**params)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def pgbouncer(pg_server) -> Iterator[PgBouncer]:
    binary = _binary()
    if binary is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer); .ci/run installs it")
    server = conninfo_to_dict(pg_server.dsn)
    host, port = server.get("host", "127.0.0.1"), int(server.get("port", 5432))
    user, password = server.get("user", "postgres"), server.get("password")
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-pgbouncer-"))
    as_user = None
    if os.geteuid() == 0:
        as_user = next((n for n in ("postgres", "nobody") if _exists(n)), None)
        if as_user is None:
            pytest.skip("PgBouncer cannot run as root and there is no 'postgres' or 'nobody' user")
        entry = pwd.getpwnam(as_user)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    os.chmod(tmp, 0o755)
    listen = _free_port()
    target = f"host={host} port={port} user={user}" + (f" password={_ini_value(password)}" if password else "")
    (tmp / "userlist.txt").write_text(f'"{user}" ""\n')
    (tmp / "pgbouncer.ini").write_text(f"""\
[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {tmp}/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 100
query_wait_timeout = 15
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {tmp}/pgbouncer.log
pidfile = {tmp}/pgbouncer.pid
""")
    cmd = [binary, str(tmp / "pgbouncer.ini")] + (["-u", as_user] if as_user else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            cwd=tmp)
    bouncer = PgBouncer("127.0.0.1", listen, user, password, tmp / "pgbouncer.log")
    try:
        _wait_until_it_answers(bouncer, proc, server.get("dbname", "postgres"))
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _wait_until_it_answers(bouncer: PgBouncer, proc: subprocess.Popen, dbname: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"PgBouncer exited with {proc.returncode}:\n{bouncer.log()}", pytrace=False)
        try:
            with psycopg.connect(bouncer.dsn_for(dbname), connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"PgBouncer did not answer on port {bouncer.port}:\n{bouncer.log()}", pytrace=False)
            time.sleep(0.2)


@pytest.fixture
def pooled_conn(pgbouncer: PgBouncer, dsn: str) -> Iterator[Callable[..., psycopg.Connection]]:
    """Connections to the test's database through PgBouncer (no prepared statements:
    PgBouncer 1.18's transaction pooling cannot keep them)."""
    opened: list[psycopg.Connection] = []
    dbname = conninfo_to_dict(dsn)["dbname"]

    def make(**kwargs: object) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("prepare_threshold", None)
        connection = psycopg.connect(pgbouncer.dsn_for(dbname), **kwargs)
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        connection.close()
