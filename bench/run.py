#!/usr/bin/env python3
"""sidecar's benchmark suite: what capture, the gate and undo cost (issue 4).

From the repository root, with sidecar installed (pip install -e '.[test]'):

    python -m bench.run              # full run: 8-11 minutes on 2 cores
    python -m bench.run --quick      # smoke test with small sizes: under a minute
    python bench/run.py --dsn postgresql://me@db/postgres   # on an existing server

It starts its own throwaway PostgreSQL (fsync on, shared_buffers 256MB,
autovacuum off, max_wal_size 4GB) unless
--dsn names a server, where it creates and later drops a database
`sidecar_bench`. Every result is a ratio against a baseline measured in the
same run (interleaved repeats, medians, min-max spread of per-repeat ratios),
with its target and PASS/FAIL. bench/README.md explains each line.
Progress goes to stderr, the report to stdout. Exit 0 when the suite ran
(FAIL lines included; --strict exits 1 on any FAIL), 1 when it could not run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import click
import psycopg
from psycopg import conninfo, sql

import sidecar.capture.schema
from bench import emaj
from bench.bulk import BulkBench, Sizes
from bench.harness import (
    Line,
    load_average,
    log,
    machine_lines,
    render_table,
    source_state,
)
from bench.oltp import OltpBench, find_pgbench
from bench.refrule import RefRuleBench
from bench.scale import QUICK_SCALE, ScaleBench, ScaleSizes
from sidecar.cluster import ThrowawayCluster

BENCH_DB = "sidecar_bench"
CLUSTER_SETTINGS = {
    "shared_buffers": "256MB",
    # Room for the 1M-row UPDATE and its history between the CHECKPOINTs the
    # suite runs itself: no checkpoint starts in the middle of a timed write.
    "max_wal_size": "4GB",
    # No background vacuum between or inside legs: the suite vacuums what a
    # leg needs itself, and a worker's CPU would blur W2's CPU per transaction.
    "autovacuum": False,
}
QUICK = Sizes(rows=20_000, insert_rows=20_000, delete_rows=10_000, big_rows=100_000)
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")


def _bench_database(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return conninfo.make_conninfo(admin_dsn, dbname=BENCH_DB)


def _drop_database(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))


def run_suite(admin_dsn: str, where: str, *, bindir: Path | None, sizes: Sizes, repeat: int, workloads: set[str],
              big: bool, oltp_scale: int, oltp_seconds: int, oltp_repeat: int, quick: bool, markdown: bool,
              emaj_script: Path | None = None, scale: ScaleSizes = ScaleSizes()) -> list[Line]:
    dsn = _bench_database(admin_dsn)
    started = time.monotonic()
    lines: list[Line] = []
    notes: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="sidecar-bench") as conn:
            sidecar.capture.schema.install(conn)
            header = machine_lines(conn, where)
            header.append(f"sidecar : {source_state()}")
            if emaj_script:
                pgbench = find_pgbench(bindir) if "W2" in workloads else None
                version = emaj.install(dsn, emaj_script, emaj.find_psql(bindir, pgbench))
                header.append(f"E-Maj   : {version}, installed from {emaj_script} in the same database")
            header.append(f"load    : {load_average()} at start (other work on the machine skews wall times)")
            header.append(f"run     : {time.strftime('%Y-%m-%d %H:%M %Z')}, repeats {repeat} (W2: {oltp_repeat}), "
                          f"workloads {','.join(sorted(workloads))}" + (", QUICK (smoke test sizes)" if quick else ""))
            for h in header:
                log(h)
            if workloads & {"W1", "W3", "W4", "W5"}:
                bulk = BulkBench(conn, dsn, sizes, repeat, measure_undo="W3" in workloads,
                                 with_emaj=emaj_script is not None)
                phase = time.monotonic()
                bulk.run()
                notes.append(f"W1/W3/W4/W5 took {(time.monotonic() - phase) / 60:.1f} min")
                if big and "W3" in workloads:
                    phase = time.monotonic()
                    bulk.run_big()
                    notes.append(f"the {sizes.big_rows}-row undo part (--big) took {(time.monotonic() - phase) / 60:.1f} min")
                lines += bulk.lines(with_w3="W3" in workloads, with_w4="W4" in workloads, with_w5="W5" in workloads)
                notes += bulk.notes
            if "W2" in workloads:
                oltp = OltpBench(conn, dsn, find_pgbench(bindir), scale=oltp_scale, clients=2,
                                 seconds=oltp_seconds, repeat=oltp_repeat, measure_reads="W3" in workloads,
                                 with_emaj=emaj_script is not None)
                phase = time.monotonic()
                oltp.run()
                notes.append(f"W2 took {(time.monotonic() - phase) / 60:.1f} min")
                lines += oltp.lines(with_w3="W3" in workloads, with_w4="W4" in workloads)
                notes += oltp.notes
            if "W6" in workloads:
                rules = RefRuleBench(conn, sizes.rows, repeat)
                phase = time.monotonic()
                rules.run()
                notes.append(f"W6 took {(time.monotonic() - phase) / 60:.1f} min")
                lines += rules.lines()
                notes += rules.notes
            if "W7" in workloads:
                grown = ScaleBench(admin_dsn, dsn, conn, scale, min(repeat, 3))
                phase = time.monotonic()
                grown.run()
                notes.append(f"W7 took {(time.monotonic() - phase) / 60:.1f} min")
                lines += grown.lines()
                notes += grown.notes
    finally:
        _drop_database(admin_dsn)
    order = {w: i for i, w in enumerate(WORKLOADS)}
    lines.sort(key=lambda line: order[line.workload])  # stable: keeps each workload's own order
    print("\n".join(header))
    print()
    print(render_table(lines, markdown=markdown))
    for n in notes:
        print(f"note: {n}")
    if quick:
        print("note: --quick uses small sizes and 1 repeat: a smoke test, not a result to compare with the targets")
    print(f"\nsuite time: {(time.monotonic() - started) / 60:.1f} min; load average at the end {load_average()}")
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", help="An existing server (any database on it): the suite creates and drops "
                            f"database {BENCH_DB} there. Default: a throwaway cluster of its own.")
@click.option("--bindir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PostgreSQL server binaries for the throwaway cluster (and its pgbench), e.g. another "
                   "major version. Default: the first that sidecar.cluster finds.")
@click.option("--repeat", default=5, show_default=True, help="Interleaved repeats of each W1/W3/W4 leg.")
@click.option("--quick", is_flag=True, help="Small sizes, 1 repeat, short pgbench: a smoke test in under a minute.")
@click.option("--big/--no-big", default=True, show_default=True,
              help="W3: undo of a 1,000,000-row UPDATE run, with the CLI's peak memory (about 1 minute).")
@click.option("--oltp-seconds", default=20, show_default=True, help="W2: duration of each pgbench leg.")
@click.option("--oltp-repeat", default=3, show_default=True, help="W2: interleaved repeats of each pgbench leg.")
@click.option("--only", "only", default=",".join(WORKLOADS[:-1]), show_default=True,
              help="Workloads to run, e.g. W1,W3 (W3, W4 and W5 reuse W1's tables and run its legs). "
                   "W7, the scale benchmark, runs only when named: --only W7.")
@click.option("--emaj", "emaj_script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="E-Maj's psql install script (sql/emaj-devel.sql of github:dalibo/emaj; not shipped): "
                   "adds E-Maj legs to W1, W2 and W3, interleaved, and a column vs E-Maj.")
@click.option("--history-rows", default=ScaleSizes().history_rows, show_default=True, metavar="ROWS",
              help="W7: row images of history grown in bulk (the scale benchmark; about 1 GB per 10 million).")
@click.option("--markdown", is_flag=True, help="Print the result table as Markdown (for bench/README.md).")
@click.option("--strict", is_flag=True, help="Exit 1 when a line FAILs.")
def main(dsn, bindir, repeat, quick, big, oltp_seconds, oltp_repeat, only, emaj_script, history_rows, markdown,
         strict):
    """Measure capture, gate and undo costs as ratios against baselines of the same run."""
    workloads = {w.strip().upper() for w in only.split(",") if w.strip()}
    unknown = workloads - set(WORKLOADS)
    if unknown:
        raise click.UsageError(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if dsn and bindir:
        raise click.UsageError("--bindir is for the throwaway cluster; leave it out with --dsn")
    sizes, oltp_scale = Sizes(), 10
    scale = ScaleSizes(history_rows=history_rows)
    if quick:
        sizes, repeat, oltp_scale, oltp_seconds, oltp_repeat, big = QUICK, 1, 1, 3, 1, False
        scale = QUICK_SCALE
    if history_rows < 1000:
        raise click.UsageError("--history-rows must be at least 1000")
    kwargs = dict(sizes=sizes, scale=scale, repeat=repeat, workloads=workloads, big=big, oltp_scale=oltp_scale,
                  oltp_seconds=oltp_seconds, oltp_repeat=oltp_repeat, quick=quick, markdown=markdown,
                  emaj_script=emaj_script)
    try:
        if dsn:
            lines = run_suite(dsn, "--dsn", bindir=None, **kwargs)
        else:
            with ThrowawayCluster(bindir=bindir, fsync=True, settings=CLUSTER_SETTINGS) as cluster:
                lines = run_suite(cluster.dsn, f"throwaway cluster from {cluster.bindir}", bindir=cluster.bindir,
                                  **kwargs)
    except (psycopg.Error, RuntimeError, OSError) as exc:
        click.echo(f"bench: {exc}", err=True)
        sys.exit(1)
    if strict and any(line.verdict == "FAIL" for line in lines):
        sys.exit(1)


if __name__ == "__main__":
    main()
