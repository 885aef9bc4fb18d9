"""W2 OLTP: pgbench's built-in TPC-B-like script at scale 10, 2 clients.

pgbench_history gets a primary key (hid bigserial) in every leg, the
baseline included, since sidecar tracks only tables with one. Legs:
  untracked  no sidecar trigger on the four tables (the baseline)
  untagged   the four tables tracked, sessions without sidecar.run_id
  tagged     tracked, every session tagged with one run id
             (PGOPTIONS='-c sidecar.run_id=<uuid>': no extra round trip)
  gate       tagged, while another automation is paused (W4 on OLTP)
  floor-untagged, floor-tagged
             untracked, with harness.noop_capture's triggers; sessions
             without, then with sidecar.run_id: what any capture built on
             statement triggers costs before it writes anything
After each tagged leg (W3): `sidecar show` and `sidecar undo --yes` of its
run, whole CLI, against the leg's duration: an agent's run is many small
transactions interleaved with other writes, not one bulk statement.
Before each leg: pgbench_history emptied, VACUUM ANALYZE (sidecar's tables
analyzed too when tracked), CHECKPOINT; then
`pgbench -n` (no vacuum of its own) for a fixed duration.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import conninfo

from sidecar.cluster import find_bindirs

from . import emaj
from .harness import (
    NOOP_NOTE,
    Line,
    Samples,
    checkpoint,
    log,
    noop_capture,
    reaped_cpu,
    run_cli,
    seconds,
)
from .sidebyside import oltp_lines, ratio_or_none

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
AUTOMATION = "bench-oltp"
OTHER_AUTOMATION = "bench-other"
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def find_pgbench(bindir: Path | None) -> str:
    """pgbench from the cluster's binaries, else from any that sidecar.cluster finds (pg_config,
    Debian's, the embedded wheel's, which ships one), else from PATH."""
    candidates = [bindir / "pgbench"] if bindir else []
    candidates += [found / "pgbench" for found in find_bindirs()]
    for c in candidates:
        if c.is_file():
            return str(c)
    found = shutil.which("pgbench")
    if found:
        return found
    raise SystemExit("bench: pgbench not found; install the PostgreSQL client tools, or leave W2 out with --only W1,W3,W4,W5")


@dataclass
class OltpBench:
    conn: psycopg.Connection
    dsn: str
    pgbench: str
    scale: int
    clients: int
    seconds: int
    repeat: int
    samples: Samples = field(default_factory=Samples)
    cpu: Samples = field(default_factory=Samples)   # server CPU seconds per transaction
    notes: list[str] = field(default_factory=list)
    measure_reads: bool = True                       # W3: show and undo of each tagged run
    reads: Samples = field(default_factory=Samples)  # seconds, and the leg's seconds as "base"
    run_tx: list[int] = field(default_factory=list)
    with_emaj: bool = False                          # --emaj: a leg with the tables in an E-Maj group
    row_mode: bool = True                            # legs with the tables tracked in capture mode row

    def _env(self, run_id: str | None) -> tuple[dict[str, str], list[str]]:
        """pgbench's environment and connection arguments (a password goes in PGPASSWORD, never argv)."""
        params = conninfo.conninfo_to_dict(self.dsn)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        password = params.pop("password", None)
        if password:
            env["PGPASSWORD"] = password
        env["PGOPTIONS"] = f"-c sidecar.run_id={run_id}" if run_id else ""
        return env, [conninfo.make_conninfo("", **params)]

    def _pgbench(self, args: list[str], run_id: str | None = None, timeout: float = 900) -> str:
        env, target = self._env(run_id)
        proc = subprocess.run([self.pgbench, *args, *target], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{proc.stderr.strip()[-1500:]}")
        return proc.stdout + proc.stderr

    def setup(self) -> None:
        log(f"W2 setup: pgbench -i -s {self.scale}")
        self._pgbench(["-i", "-s", str(self.scale), "-q"])
        self.conn.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        for t in TABLES:
            self.conn.execute(f"ALTER TABLE {t} SET (autovacuum_enabled = false)")

    def _set_tracked(self, tracked: bool, capture_mode: str = "statement") -> None:
        c = self.conn
        for t in TABLES:
            row = c.execute("SELECT active, capture_mode FROM sidecar.tracked WHERE relid = %s::regclass",
                            (t,)).fetchone()
            if tracked and not (row and row[0] and row[1] == capture_mode):
                c.execute("SELECT sidecar.track(%s::regclass, 'tagged', NULL, NULL, %s)", (t, capture_mode))
            elif not tracked and row and row[0]:
                c.execute("SELECT sidecar.untrack(%s::regclass)", (t,))

    def leg(self, mode: str) -> None:
        c = self.conn
        floor = mode.startswith("floor-")
        tracked = mode in ("untagged", "tagged", "gate", "tagged-row", "untagged-row")
        self._set_tracked(tracked, "row" if mode.endswith("-row") else "statement")
        if floor:
            noop_capture(c, list(TABLES), True)
        if mode == "emaj":
            emaj.start(c, list(TABLES))
        c.execute("TRUNCATE pgbench_history")
        c.execute("VACUUM ANALYZE " + ", ".join(TABLES))
        if tracked:
            # As autovacuum keeps them on a live database: every new run is
            # then newer than the statistics, which is what readers meet.
            logs = [r[0] for r in c.execute(
                "SELECT format('sidecar.%%I', log_table) FROM sidecar.tracked WHERE active AND relid = ANY(%s::regclass[])",
                (list(TABLES),))]
            c.execute("ANALYZE sidecar.statements, sidecar.actions, sidecar.runs" + "".join(", " + t for t in logs))
        run_id = None
        if mode in ("tagged", "gate", "tagged-row"):
            run_id = str(c.execute("SELECT sidecar.start_run(%s, jsonb_build_object('leg', %s::text))",
                                   (AUTOMATION, mode)).fetchone()[0])
        if mode == "gate":
            c.execute("SELECT sidecar.pause(%s, %s)", (OTHER_AUTOMATION, "bench: gate check with a pause row present"))
        # floor-tagged: a run id no run has, which only the WHEN clause reads.
        tag = str(uuid.uuid4()) if mode == "floor-tagged" else run_id
        checkpoint(c)
        cpu0 = reaped_cpu(c)
        try:
            out = self._pgbench(["-n", "-c", str(self.clients), "-j", str(self.clients), "-T", str(self.seconds)],
                                run_id=tag)
        finally:
            if floor:
                noop_capture(c, list(TABLES), False)
            if mode == "emaj":
                emaj.stop(c)
            if mode == "gate":
                c.execute("SELECT sidecar.resume(%s)", (OTHER_AUTOMATION,))
            if run_id is not None:
                c.execute("SELECT sidecar.finish_run('succeeded', NULL, %s)", (run_id,))
        m, done = _TPS.search(out), _DONE.search(out)
        if not m or not done:
            raise RuntimeError(f"cannot read tps from pgbench output:\n{out[-1500:]}")
        tps = float(m.group(1))
        time.sleep(0.5)  # the postmaster reaps pgbench's backends
        cpu1 = reaped_cpu(c)
        per_tx = (cpu1 - cpu0) / int(done.group(1)) if cpu0 is not None and cpu1 is not None else float("nan")
        self.cpu.add(mode, per_tx)
        if run_id is not None:
            # Row mode leaves the statement rows to the first reader (sidecar._settle()): made here,
            # outside the timed leg, and timed on their own (the cost capture no longer pays).
            started = time.perf_counter()
            settled = c.execute("SELECT sidecar._settle()").fetchone()[0]
            if settled:
                log(f"  W2 {mode}: {settled} statement rows settled by the first reader in "
                    f"{seconds(time.perf_counter() - started)}")
            captured = c.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()[0]
            if captured == 0:
                self.notes.append(f"W2 {mode}: pgbench's writes were not captured (is sidecar.run_id reaching it?)")
        self.samples.add(mode, tps)
        log(f"  W2 {mode:<9} {tps:9.1f} tps, {per_tx * 1e6:6.0f} us server CPU per transaction")
        if mode == "tagged" and self.measure_reads:
            self._read_and_undo(run_id, int(done.group(1)))

    def _read_and_undo(self, run_id: str, transactions: int) -> None:
        """W3: `sidecar show` and `sidecar undo` of the run pgbench just wrote."""
        self.run_tx.append(transactions)
        self.reads.add("base", float(self.seconds))
        for what, args in (("show", ["show", run_id, "--actions", "0"]), ("undo", ["undo", run_id, "--yes"])):
            res = run_cli([*args, "--dsn", self.dsn], timeout=max(600, 30 * self.seconds))
            if res.returncode != 0:
                self.notes.append(f"W3 {what} of the pgbench run exited {res.returncode}: {res.output.strip()[-300:]}")
            self.reads.add(what, res.seconds if res.returncode == 0 else float("nan"))
            log(f"  W3 {what} of the pgbench run ({transactions} transactions) {seconds(res.seconds):>8}")

    def run(self) -> None:
        self.setup()
        legs = ["untracked", "untagged", "tagged", "gate", "floor-untagged", "floor-tagged"]
        if self.row_mode:
            legs += ["tagged-row", "untagged-row"]
        if self.with_emaj:
            legs.append("emaj")
        for r in range(self.repeat):
            order = legs[:]
            random.Random(100 + r).shuffle(order)
            log(f"W2 repeat {r + 1}/{self.repeat}")
            for mode in order:
                self.leg(mode)
        self._set_tracked(False)

    def _cpu(self, leg: str, base: str) -> float | None:
        """Server CPU per transaction, leg against base (higher is costlier)."""
        return self.cpu.ratio(leg, base)[0] if self.cpu.has(leg) and self.cpu.has(base) else None

    def _cpu_note(self, leg: str) -> str:
        return f", {self.cpu.median(leg) * 1e6:.0f} us CPU/tx" if self.cpu.has(leg) else ""

    def lines(self, with_w3: bool, with_w4: bool) -> list[Line]:
        s = self.samples
        base = f"untracked {s.median('untracked'):.0f} tps"
        what = f"pgbench TPC-B s={self.scale}, {self.clients} clients, {self.seconds}s"
        out = [
            Line("W2", f"{what}: TPS tagged", *s.ratio("tagged", "untracked"), unit="%", op=">=", target=0.85,
                 baseline=base + self._cpu_note("untracked") + "; tagged" + self._cpu_note("tagged"),
                 cpu=self._cpu("tagged", "untracked"), vs_emaj=ratio_or_none(s, "tagged", "emaj")),
            Line("W2", f"{what}: TPS untagged", *s.ratio("untagged", "untracked"), unit="%", op=">=", target=0.97,
                 baseline=base + "; untagged" + self._cpu_note("untagged"), cpu=self._cpu("untagged", "untracked")),
        ]
        out += oltp_lines(s, self.cpu, what)
        for mode, name in (("floor-untagged", "TPS untagged, no-op triggers (floor)"),
                           ("floor-tagged", "TPS tagged, no-op triggers (floor)")):
            if s.has(mode):
                out.append(Line("W2", f"{what}: {name}", *s.ratio(mode, "untracked"), unit="%", baseline=NOOP_NOTE + self._cpu_note(mode),
                                cpu=self._cpu(mode, "untracked")))
        if with_w3 and self.run_tx:
            r = self.reads
            runs = f"{self.seconds} s of tagged pgbench, about {sorted(self.run_tx)[len(self.run_tx) // 2]:,} transactions"
            for what, name in (("show", "`sidecar show --actions 0` of a tagged pgbench run (whole CLI)"),
                               ("undo", "undo of a tagged pgbench run (whole CLI)")):
                if not r.has(what):
                    out.append(Line("W3", name, None, note=f"{what} failed; see notes"))
                    continue
                out.append(Line("W3", name, *r.ratio(what, "base"),
                                baseline=f"{runs}; {what} {seconds(r.median(what))}"))
        if with_w4:
            # "<= 5% over capture alone" as throughput: at least 1/1.05 of the tagged TPS.
            out.append(Line("W4", "gate on (other automation paused), pgbench TPS vs tagged",
                            *s.ratio("gate", "tagged"), unit="%", op=">=", target=1 / 1.05,
                            baseline=f"tagged {s.median('tagged'):.0f} tps", cpu=self._cpu("gate", "tagged")))
        return out
