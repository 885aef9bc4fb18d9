"""Instructions per small transaction: what capture costs, counted rather than timed.

`python -m bench.instructions [--emaj PATH] [--tx 100]` runs pgbench's TPC-B transaction (its five
statements, one transaction each) in a single-user backend under valgrind's callgrind, once with a
few transactions and once with --tx more, for each leg: the four tables untracked, tracked in
statement mode and in row mode (a tagged session and an untagged one), and in a started E-Maj
group (with --emaj). The difference of the two counts over the extra transactions is the
instructions one transaction costs, warm caches and all; unlike a time it does not move with the
load of a shared machine, so two designs a few percent apart can be told apart in one run (the
W2 lines of bench.run stay the verdict: instructions are not cycles). Needs valgrind.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import psycopg
from psycopg import conninfo

from bench import emaj
from bench.oltp import TABLES, OltpBench, find_pgbench
from bench.run import CLUSTER_SETTINGS, _bench_database
from sidecar.capture.schema import install
from sidecar.cluster import ThrowawayCluster

_COLLECTED = re.compile(r"Collected : (\d+)")
LEGS = ("untracked", "tagged, statement mode", "tagged, row mode", "untagged, statement mode",
        "untagged, row mode")


def _script(path: Path, n: int, run_id: str | None, rnd: random.Random) -> None:
    lines = [f"SET sidecar.run_id = '{run_id}';"] if run_id else []
    for _ in range(n):
        a, t, b, d = rnd.randint(1, 100_000), rnd.randint(1, 10), 1, rnd.randint(-5000, 5000)
        lines.append(f"BEGIN; UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a}; "
                     f"SELECT abalance FROM pgbench_accounts WHERE aid = {a}; "
                     f"UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t}; "
                     f"UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b}; "
                     f"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                     f"VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP); COMMIT;")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)


def _count(cluster: ThrowawayCluster, dbname: str, script: Path) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           str(cluster.bindir / "postgres"), "--single", "-D", str(cluster.datadir), dbname]
    if cluster.os_user:
        cmd = ["runuser", "-u", cluster.os_user, "--", *cmd]
    with script.open() as stdin:
        done = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, cwd=tempfile.gettempdir())
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or not found or "ERROR" in done.stdout:
        raise RuntimeError(f"the single-user backend failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return int(found.group(1))


def _prepare(conn: psycopg.Connection, leg: str) -> str | None:
    """Track the tables as the leg wants them; the run id to tag the session with, if any."""
    mode = "row" if "row mode" in leg else "statement"
    for table in TABLES:
        if leg in ("untracked", "E-Maj"):
            if conn.execute("SELECT active FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone():
                conn.execute("SELECT sidecar.untrack(%s::regclass)", (table,))
        else:
            conn.execute("SELECT sidecar.track(%s::regclass, 'tagged', NULL, NULL, %s)", (table, mode))
    if leg == "E-Maj":
        emaj.start(conn, list(TABLES))
    if leg.startswith("tagged"):
        return str(conn.execute("SELECT sidecar.start_run('bench-instructions')").fetchone()[0])
    return None


def measure(emaj_script: Path | None, bindir: Path | None, tx: int) -> dict[str, float]:
    legs = list(LEGS) + (["E-Maj"] if emaj_script else [])
    rnd, few = random.Random(7), 20
    result: dict[str, float] = {}
    with ThrowawayCluster(bindir=bindir, fsync=True, settings=CLUSTER_SETTINGS) as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        dsn = _bench_database(cluster.dsn)
        dbname = conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            install(conn)
            if emaj_script:
                emaj.install(dsn, emaj_script, emaj.find_psql(cluster.bindir, None))
            OltpBench(conn, dsn, find_pgbench(cluster.bindir), scale=1, clients=1, seconds=1, repeat=1,
                      measure_reads=False).setup()
        os.chmod(tmp, 0o755)
        for leg in legs:
            with psycopg.connect(dsn, autocommit=True) as conn:
                run_id = _prepare(conn, leg)
            cluster.stop_server(crash=False)
            counts = []
            for n in (few, few + tx):
                script = Path(tmp) / f"tx{n}.sql"
                _script(script, n, run_id, rnd)
                counts.append(_count(cluster, dbname, script))
            cluster.start_again()
            with psycopg.connect(dsn, autocommit=True) as conn:
                if leg == "E-Maj":
                    emaj.stop(conn)
                if run_id:
                    conn.execute("SELECT sidecar.finish_run('succeeded', NULL, %s)", (run_id,))
            result[leg] = (counts[1] - counts[0]) / tx
            click.echo(f"  {leg:<26} {result[leg] / 1000:8.0f} k instructions per transaction", err=True)
    return result


@click.command()
@click.option("--emaj", "emaj_script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="E-Maj's psql install script (sql/emaj-devel.sql of github:dalibo/emaj; not shipped).")
@click.option("--bindir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PostgreSQL server binaries for the throwaway cluster.")
@click.option("--tx", default=100, show_default=True, help="Transactions counted per leg (beyond 20 of warm-up).")
def main(emaj_script: Path | None, bindir: Path | None, tx: int) -> None:
    """Instructions per TPC-B transaction for each capture design, and over untracked."""
    if not shutil.which("valgrind"):
        click.echo("bench.instructions: valgrind is not installed; install it (apt-get install valgrind)", err=True)
        sys.exit(1)
    if tx < 10:
        click.echo("bench.instructions: --tx must be at least 10", err=True)
        sys.exit(1)
    try:
        result = measure(emaj_script, bindir, tx)
    except (psycopg.Error, RuntimeError, OSError) as exc:
        click.echo(f"bench.instructions: {exc}", err=True)
        sys.exit(1)
    base = result["untracked"]
    click.echo("| leg | instructions per TPC-B transaction | over untracked |")
    click.echo("|---|---|---|")
    for leg, value in result.items():
        click.echo(f"| {leg} | {value / 1000:.0f} k | {(value - base) / 1000:+.0f} k |")


if __name__ == "__main__":
    main()
