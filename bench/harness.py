"""What every workload shares: timing a statement, running the sidecar CLI,
turning interleaved samples into ratios, and printing the result table.

A ratio is always taken against a baseline measured in the same run and in
the same repeat, a few seconds apart: value = median over repeats of
leg[i] / baseline[i], spread = min-max of those per-repeat ratios. Pairing
each leg with its own repeat's baseline cancels slow drift of the machine's
speed (a shared VM's CPU can vary by 2x from one minute to the next).
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

# Settings printed at the top, so a result can be read against its server.
SHOWN_SETTINGS = (
    "fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers", "work_mem",
    "max_wal_size", "checkpoint_timeout", "autovacuum", "data_checksums", "jit",
)


# -- samples and ratios ------------------------------------------------------

@dataclass
class Samples:
    """Measurements of the legs of one workload, by leg name, one per repeat (in repeat order)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, leg: str, value: float) -> None:
        """Record one repeat's value; NaN marks a repeat whose leg failed (kept, so repeats stay aligned)."""
        self.values.setdefault(leg, []).append(value)

    def has(self, leg: str) -> bool:
        return any(math.isfinite(v) for v in self.values.get(leg, []))

    def median(self, leg: str) -> float:
        return statistics.median(v for v in self.values[leg] if math.isfinite(v))

    def ratio(self, leg: str, base: str) -> tuple[float, float, float]:
        """(median of the per-repeat ratios leg[i] / base[i], lowest, highest)."""
        per_repeat = [x / b for x, b in zip(self.values[leg], self.values[base])
                      if math.isfinite(x) and math.isfinite(b) and b > 0]
        if not per_repeat:
            return float("nan"), float("nan"), float("nan")
        return statistics.median(per_repeat), min(per_repeat), max(per_repeat)


@dataclass
class Line:
    """One line of the result table."""

    workload: str
    name: str
    value: float | None          # None: not measured (n/a)
    low: float | None = None
    high: float | None = None
    unit: str = "x"              # "x" ratio, "%" share of the baseline, "MB" memory
    op: str | None = None        # "<=", ">=", "<" or None (information only)
    target: float | None = None
    baseline: str = ""           # what the ratio is against, with its median
    note: str = ""
    cpu: float | None = None     # the same ratio on the server backend's CPU time (information)
    vs_emaj: float | None = None  # the same leg against E-Maj's in the same repeats (--emaj)

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        if self.op is None or self.target is None:
            return "info"
        ok = {"<=": self.value <= self.target, ">=": self.value >= self.target, "<": self.value < self.target}[self.op]
        return "PASS" if ok else "FAIL"

    def _fmt(self, v: float | None) -> str:
        if v is None:
            return "-"
        if self.unit == "%":
            return f"{v * 100:.1f}%"
        if self.unit == "MB":
            return f"{v:.0f} MB"
        return f"{v:.2f}x"

    def cells(self, with_emaj: bool = False) -> list[str]:
        spread = "-" if self.low is None else f"{self._fmt(self.low)}-{self._fmt(self.high)}"
        target = "-" if self.op is None else f"{self.op} {self._fmt(self.target)}"
        cpu = "-" if self.cpu is None or not math.isfinite(self.cpu) else f"{self.cpu:.2f}x"
        out = [self.workload, self.name, self._fmt(self.value) if self.value is not None else "n/a",
               spread, target, self.verdict, cpu]
        if with_emaj:
            ok = self.vs_emaj is not None and math.isfinite(self.vs_emaj)
            out.append(self._fmt(self.vs_emaj) if ok else "-")
        return out + ["; ".join(x for x in (self.baseline, self.note) if x)]


HEADERS = ["", "line", "median", "spread (min-max)", "target", "result", "cpu", "baseline (median) / note"]


def render_table(lines: list[Line], markdown: bool = False) -> str:
    with_emaj = any(line.vs_emaj is not None for line in lines)
    headers = HEADERS[:-1] + ["vs E-Maj"] + HEADERS[-1:] if with_emaj else HEADERS
    rows = [line.cells(with_emaj) for line in lines]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths), "-" * 24)]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)


def seconds(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


# -- the database ------------------------------------------------------------

@dataclass
class Timing:
    wall: float          # seconds, client side, the commit included
    cpu: float | None    # seconds the server backend spent on a CPU (None: server not on this host)
    rows: int


def backend_cpu(conn: psycopg.Connection) -> float | None:
    """On-CPU seconds of this connection's server process so far (/proc/PID/schedstat,
    nanoseconds), when the server runs on this host; else None."""
    try:
        text = Path(f"/proc/{conn.info.backend_pid}/schedstat").read_text()
        if "postgres" not in Path(f"/proc/{conn.info.backend_pid}/cmdline").read_text():
            return None
        return int(text.split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def timed(conn: psycopg.Connection, statement: str, params: tuple | None = None) -> Timing:
    """CHECKPOINT, then run one statement in its own transaction (autocommit)."""
    conn.execute("CHECKPOINT")
    cpu0 = backend_cpu(conn)
    start = time.perf_counter()
    cur = conn.execute(statement, params)
    elapsed = time.perf_counter() - start
    cpu1 = backend_cpu(conn)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return Timing(elapsed, cpu, cur.rowcount)


def reaped_cpu(conn: psycopg.Connection) -> float | None:
    """CPU seconds of the server's exited processes so far (the postmaster's
    cutime + cstime: a backend's CPU is added there when it exits), when the
    server runs on this host; else None. pgbench's backends are counted this way."""
    try:
        stat = Path(f"/proc/{conn.info.backend_pid}/stat").read_text()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        fields = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()
        if "postgres" not in Path(f"/proc/{ppid}/cmdline").read_text():
            return None
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def checkpoint(conn: psycopg.Connection) -> None:
    conn.execute("CHECKPOINT")


def machine_lines(conn: psycopg.Connection, where: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    version = conn.execute("SELECT version()").fetchone()[0]
    settings = conn.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (list(SHOWN_SETTINGS),)
    ).fetchall()

    def show(name: str, setting: str, unit: str | None) -> str:
        if unit == "8kB":
            return f"{name}={int(setting) * 8 // 1024}MB"
        if unit == "kB":
            return f"{name}={int(setting) // 1024}MB" if int(setting) >= 1024 else f"{name}={setting}kB"
        if unit == "MB":
            return f"{name}={setting}MB"
        return f"{name}={setting}{unit or ''}"

    return [
        f"machine : {os.cpu_count()} cores ({cpu}), {mem} memory, {platform.system()} {platform.release()}",
        f"server  : {version.split(',')[0]} ({where})",
        "settings: " + ", ".join(show(*s) for s in settings),
        f"python  : {sys.version.split()[0]}, psycopg {psycopg.__version__}",
    ]


def source_state() -> str:
    """Which sidecar was measured: the git commit, local changes, and the
    hashes of the two files on the write path (read-only git commands)."""
    from importlib.metadata import version

    from sidecar import resources

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never touch the index

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                                  env=env).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    files = {f.name: f.sha256[:10] for f in resources.function_files() if f.name == "fn_capture.sql"}
    for name in ("capture", "capture_row"):
        files[f"{name}.sql"] = hashlib.sha256(resources.templates().get(name, "").encode()).hexdigest()[:10]
    return (f"rollback-sidecar {version('rollback-sidecar')}, git {head}"
            + (f" + {len(changed)} modified file(s)" if changed else " (clean)")
            + "; " + ", ".join(f"{k} {v}" for k, v in sorted(files.items())))


# -- the sidecar CLI, as an operator runs it -----------------------------------

def sidecar_command() -> list[str]:
    """The `sidecar` console script next to this interpreter, else the module through it."""
    script = Path(sys.executable).parent / "sidecar"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from sidecar.cli import main; main()"]


@dataclass
class CliRun:
    seconds: float
    returncode: int
    max_rss_mb: float
    output: str


def run_cli(args: list[str], timeout: float = 1800) -> CliRun:
    """Run the sidecar CLI as a child process: wall time, exit code and the
    child's own peak resident memory (os.wait4, not the cumulative RUSAGE_CHILDREN)."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([*sidecar_command(), *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    # ru_maxrss is in kilobytes on Linux.
    return CliRun(elapsed, proc.returncode, usage.ru_maxrss / 1024, text)


# The floor of any capture built on statement triggers: on untracked tables,
# triggers with the transition tables and the WHEN clause of sidecar's capture
# triggers, calling a PL/pgSQL function that returns at once. Untagged
# sessions pay for the transition tables alone; tagged ones for the call too.
_NOOP_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_noop_capture() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN NULL; END $$
"""
_NOOP_TRIGGERS = [
    ("insert", "AFTER INSERT ON {t} REFERENCING NEW TABLE AS n"),
    ("update", "AFTER UPDATE ON {t} REFERENCING OLD TABLE AS o NEW TABLE AS n"),
    ("delete", "AFTER DELETE ON {t} REFERENCING OLD TABLE AS o"),
]
_NOOP_WHEN = "FOR EACH STATEMENT WHEN (pg_catalog.current_setting('sidecar.run_id', true) <> '') "
# What a floor line built on them compares (its baseline note).
NOOP_NOTE = "untracked, with statement triggers shaped like sidecar's, calling a PL/pgSQL function that returns at once"


def noop_capture(conn: psycopg.Connection, tables: list[str], on: bool) -> None:
    """Add (on) or remove the no-op capture triggers of these tables."""
    if on:
        conn.execute(_NOOP_FUNCTION)
    for t in tables:
        for op, clause in _NOOP_TRIGGERS:
            trigger = sql.Identifier(f"bench_noop_{op}")
            if on:
                conn.execute(sql.SQL("CREATE TRIGGER {} " + clause + " " + _NOOP_WHEN
                                     + "EXECUTE FUNCTION bench_noop_capture()").format(trigger, t=sql.Identifier(t)))
            else:
                conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(trigger, sql.Identifier(t)))
    if not on:
        conn.execute("DROP FUNCTION bench_noop_capture()")


def log(message: str) -> None:
    """Progress, on stderr, so that stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
