"""W7: history that grows for years (issue 25). Every command against a big
history, next to the same command on a fresh install with the same runs.

Two databases on the same server, the same three tracked tables in each
(`bench_w7_a/b/c`, `table_rows` rows each), and the same real runs, written
through capture by the same code:

- E ("early"): two steps of 5,000 rows each, a tagged UPDATE of keys 1-10,000
  of `bench_w7_a`, dated 400 days back (its runs, actions and statements);
- then, in the big database only, history grown in bulk (`grow`): runs,
  actions, statements and row images written straight into sidecar's tables
  with `INSERT ... SELECT` over `generate_series`, never by replaying writes;
  U statements of `rows_per_stmt` rows (a before- and an after-image each)
  over the three tables, keys above 30,000, dated over the last year;
- C: a tagged UPDATE of 10 of E's rows (E's undo has conflicts to attribute,
  its --cascade a later run to find);
- L ("last"): the same two steps on keys 10,001-20,000, written now.

Then, per repeat, each command on the fresh database and on the big one back
to back (the order rotating): the whole CLI for `runs`, `show`, `undo
--preview`, `undo --cascade --preview`, `rerun`, `inventory`, `status`; the
console's run page through Starlette's test client; a tagged UPDATE of 10,000
rows of `bench_w7_b`. Last, `undo --yes` of E and of L, once each. A line is
the median of big / fresh over repeats; target <= 1.5x.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import conninfo, sql

import sidecar.capture.schema

from .harness import Line, Samples, log, run_cli, seconds, timed

FRESH_DB = "sidecar_bench_fresh"
TABLES = ("bench_w7_a", "bench_w7_b", "bench_w7_c")
RESERVED_KEYS = 30_000  # keys 1..30,000 are E's, L's and the tagged write's: bulk history stays above


@dataclass(frozen=True)
class ScaleSizes:
    history_rows: int = 50_000_000   # row images grown in bulk
    table_rows: int = 1_000_000      # rows of each tracked table
    stmts_per_run: int = 100
    rows_per_stmt: int = 50           # an UPDATE: two images per row

    @property
    def runs(self) -> int:
        return max(1, self.history_rows // (self.stmts_per_run * self.rows_per_stmt * 2))


QUICK_SCALE = ScaleSizes(history_rows=400_000, table_rows=40_000, stmts_per_run=20, rows_per_stmt=10)

COMMANDS = (
    ("runs", "sidecar runs"),
    ("show_e", "sidecar show RUN, run written early"),
    ("show_l", "sidecar show RUN, run written last"),
    ("preview_e", "sidecar undo RUN --preview, run written early"),
    ("preview_l", "sidecar undo RUN --preview, run written last"),
    ("cascade_e", "sidecar undo RUN --cascade --preview, run written early"),
    ("rerun_e", "sidecar rerun RUN, run written early"),
    ("inventory", "sidecar inventory"),
    ("status", "sidecar status"),
    ("page_e", "console run page, run written early"),
    ("write", "tagged UPDATE 10k rows"),
)
UNDOS = (("undo_e", "sidecar undo RUN --yes, run written early"),
         ("undo_l", "sidecar undo RUN --yes, run written last"))


def _database(admin_dsn: str, name: str, *, drop_only: bool = False) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not drop_only:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_dsn, dbname=name)


@dataclass
class Side:
    """One database: the fresh install or the big history."""

    name: str
    dsn: str
    conn: psycopg.Connection
    early: uuid.UUID | None = None
    last: uuid.UUID | None = None
    browser: object = None


def _load(c: psycopg.Connection, rows: int) -> None:
    for t in TABLES:
        c.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, n int NOT NULL, note text, at timestamptz)")
                  .format(sql.Identifier(t)))
        c.execute(sql.SQL("INSERT INTO {} SELECT i, i %% 1000, 'row ' || i, now() FROM generate_series(1, %s) i")
                  .format(sql.Identifier(t)), (rows,))
        c.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(t)))
        c.execute("SELECT sidecar.track(%s::regclass)", (t,))


def _stepped_run(c: psycopg.Connection, automation: str, lo: int) -> uuid.UUID:
    """A run of two steps, 5,000 rows each, keys lo..lo+9,999 of bench_w7_a."""
    run_id = c.execute("SELECT sidecar.start_run(%s)", (automation,)).fetchone()[0]
    for part in range(2):
        a, b = lo + part * 5000, lo + part * 5000 + 4999
        with c.transaction():
            c.execute("SELECT sidecar.begin_step(%s)", (f"update:{a}-{b}",))
            c.execute("UPDATE bench_w7_a SET n = n + 1, note = note || '+' WHERE id BETWEEN %s AND %s", (a, b))
            c.execute("SELECT sidecar.end_step()")
    c.execute("SELECT sidecar.finish_run()")
    return run_id


def _backdate(c: psycopg.Connection, run_id: uuid.UUID, age: str) -> None:
    """Date a run (its actions and statements) `age` back, as if written then."""
    c.execute("UPDATE sidecar.runs SET started_at = started_at - %s::interval, "
              "finished_at = finished_at - %s::interval WHERE run_id = %s", (age, age, run_id))
    c.execute("UPDATE sidecar.actions SET started_at = started_at - %s::interval WHERE run_id = %s", (age, run_id))
    c.execute("UPDATE sidecar.statements SET at = at - %s::interval WHERE run_id = %s", (age, run_id))


def grow(c: psycopg.Connection, sizes: ScaleSizes, progress=log) -> int:
    """Grow history in bulk: sizes.runs finished runs of sizes.stmts_per_run UPDATE statements
    of sizes.rows_per_stmt rows, spread over the tracked tables and the last year. Returns images written."""
    tracked = c.execute("SELECT tracked_id, log_table FROM sidecar.tracked WHERE relid = ANY(%s::regclass[]) "
                        "ORDER BY tracked_id", (list(TABLES),)).fetchall()
    cols = []
    for tid, _ in tracked:
        cols.append([r[0] for r in c.execute(
            "SELECT log_column FROM sidecar.columns WHERE tracked_id = %s AND NOT retired ORDER BY attnum",
            (tid,))])
    spr, rps, runs = sizes.stmts_per_run, sizes.rows_per_stmt, sizes.runs
    total_stmts = runs * spr
    base = c.execute("SELECT nextval('sidecar.stmt_seq')").fetchone()[0]
    c.execute("SELECT setval('sidecar.stmt_seq', %s)", (base + total_stmts,))
    span = sizes.table_rows - RESERVED_KEYS
    ntab = len(tracked)
    ids = [t[0] for t in tracked]
    chunk = max(1, 2_000_000 // (spr * rps * 2))  # about 2M images per transaction
    images = 0
    started = time.monotonic()
    # Run r starts at year_start + r * step, its statement s at that + s ms.
    params = {"base": base, "spr": spr, "rps": rps, "runs": runs, "span": span, "lo_key": RESERVED_KEYS + 1,
              "ntab": ntab, "ids": ids}
    for r0 in range(0, runs, chunk):
        r1 = min(runs, r0 + chunk)
        p = {**params, "r0": r0, "r1": r1}
        with c.transaction():
            c.execute(
                "INSERT INTO sidecar.runs (run_id, automation, status, started_at, finished_at, lineage) "
                "SELECT md5('w7 run ' || r)::uuid, 'bulk-bot-' || (r %% 20), 'succeeded', t, t + interval '1 minute', "
                "md5('w7 run ' || r)::uuid FROM generate_series(%(r0)s::bigint, %(r1)s::bigint - 1) r "
                "CROSS JOIN LATERAL (SELECT now() - interval '365 days' + r * (interval '364 days' / %(runs)s::bigint) AS t) x",
                p)
            c.execute("INSERT INTO sidecar.actions (run_id, key, started_at) "
                      "SELECT run_id, 'tx:1', started_at FROM sidecar.runs "
                      "WHERE run_id IN (SELECT md5('w7 run ' || r)::uuid FROM generate_series(%(r0)s::bigint, %(r1)s::bigint - 1) r)", p)
            c.execute(
                "INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at) "
                "SELECT %(base)s::bigint + k, (%(ids)s::int[])[1 + k %% %(ntab)s::bigint], 'U', a.run_id, a.action_id, "
                "1000000 + k, current_user, a.started_at + (k %% %(spr)s::bigint) * interval '1 ms' "
                "FROM generate_series(%(r0)s::bigint, %(r1)s::bigint - 1) r "
                "JOIN sidecar.actions a ON a.run_id = md5('w7 run ' || r)::uuid AND a.key = 'tx:1' "
                "CROSS JOIN LATERAL generate_series(r * %(spr)s::bigint, r * %(spr)s::bigint + %(spr)s::bigint - 1) k ORDER BY k", p)
            for t, (tid, log_table) in enumerate(tracked):
                # The images of this table's statements, in statement order: k with k % ntab = t.
                target = sql.SQL(", ").join(sql.Identifier(x) for x in ["_stmt", "_kind", *cols[t]])
                n = c.execute(sql.SQL(
                    "INSERT INTO sidecar.{log} ({target}) "
                    "SELECT %(base)s::bigint + k, kind, key, (key %% 1000)::int + (kind = 'N')::int, 'row ' || key, "
                    "now() - interval '1 day' "
                    "FROM generate_series(%(r0)s::bigint * %(spr)s::bigint + ((%(t)s::bigint - (%(r0)s::bigint * %(spr)s::bigint) %% %(ntab)s::bigint) + %(ntab)s::bigint) "
                    "%% %(ntab)s::bigint, %(r1)s::bigint * %(spr)s::bigint - 1, %(ntab)s::bigint) k "
                    "CROSS JOIN LATERAL generate_series(0, %(rps)s::bigint - 1) j "
                    "CROSS JOIN LATERAL (SELECT %(lo_key)s::bigint + (k * %(rps)s::bigint + j) %% %(span)s::bigint AS key) kk "
                    "CROSS JOIN (VALUES ('O'::\"char\"), ('N'::\"char\")) v(kind)"
                ).format(log=sql.Identifier(log_table), target=target), {**p, "t": t}).rowcount
                images += n
        done = time.monotonic() - started
        progress(f"  W7 grow: {r1}/{runs} runs, {images:,} images, {done:.0f} s")
    return images


@dataclass
class ScaleBench:
    admin_dsn: str
    dsn: str                      # the suite's database: the big history
    conn: psycopg.Connection
    sizes: ScaleSizes
    repeat: int
    samples: Samples = field(default_factory=Samples)
    notes: list[str] = field(default_factory=list)
    sides: list[Side] = field(default_factory=list)
    images: int = 0

    def _prepare(self) -> None:
        fresh_dsn = _database(self.admin_dsn, FRESH_DB)
        fresh = Side("fresh", fresh_dsn, psycopg.connect(fresh_dsn, autocommit=True))
        sidecar.capture.schema.install(fresh.conn)
        big = Side("big", self.dsn, self.conn)
        self.sides = [fresh, big]
        for side in self.sides:
            c = side.conn
            _load(c, self.sizes.table_rows)
            side.early = _stepped_run(c, "scale-early", 1)
            _backdate(c, side.early, "400 days")
            if side is big:
                phase = time.monotonic()
                log(f"W7 grow {self.sizes.history_rows:,} images in {self.sizes.runs:,} runs")
                self.images = grow(c, self.sizes)
                self.notes.append(f"W7 grew {self.images:,} images, {self.sizes.runs * self.sizes.stmts_per_run:,} "
                                  f"statements, {self.sizes.runs:,} runs in {(time.monotonic() - phase) / 60:.1f} min")
            run_c = c.execute("SELECT sidecar.start_run('scale-later')").fetchone()[0]
            c.execute("UPDATE bench_w7_a SET n = n + 7 WHERE id BETWEEN 1 AND 10")
            c.execute("SELECT sidecar.finish_run()")
            assert run_c
            side.last = _stepped_run(c, "scale-last", 10_001)
            # What autovacuum keeps on a live database: statistics, summarized block ranges.
            phase = time.monotonic()
            c.execute("VACUUM ANALYZE")
            if side is big:
                self.notes.append(f"W7 VACUUM ANALYZE of the big database took {(time.monotonic() - phase) / 60:.1f} min")
        for side in self.sides:
            side.browser = self._browser(side)

    def _browser(self, side: Side):
        try:
            from starlette.testclient import TestClient

            from sidecar.console.app import create_app
        except ImportError:
            return None
        client = TestClient(create_app(side.dsn, require_password_check=False), follow_redirects=False)
        client.__enter__()
        page = client.get("/signin")
        import re

        token = re.search(r'name="csrftoken" value="([^"]+)"', page.text)
        user = side.conn.info.user
        # The throwaway cluster trusts local connections: any password signs in.
        res = client.post("/signin", data={"user": user, "password": "bench", "csrftoken": token.group(1) if token else ""})
        if res.status_code != 303:
            self.notes.append(f"W7 console sign-in on {side.name}: HTTP {res.status_code}")
        return client

    def _time(self, side: Side, leg: str) -> float:
        d, e, last = side.dsn, str(side.early), str(side.last)
        cli = {
            "runs": ["runs"], "show_e": ["show", e], "show_l": ["show", last],
            "preview_e": ["undo", e, "--preview"], "preview_l": ["undo", last, "--preview"],
            "cascade_e": ["undo", e, "--cascade", "--preview"], "rerun_e": ["rerun", e],
            "inventory": ["inventory"], "status": ["status"],
            "undo_e": ["undo", e, "--yes"], "undo_l": ["undo", last, "--yes"],
        }
        if leg in cli:
            res = run_cli([*cli[leg], "--dsn", d])
            if res.returncode not in (0, 3):
                self.notes.append(f"W7 {leg} on {side.name} exited {res.returncode}: {res.output.strip()[-300:]}")
                return float("nan")
            return res.seconds
        if leg == "page_e":
            if side.browser is None:
                return float("nan")
            start = time.perf_counter()
            r = side.browser.get(f"/runs/{side.early}")
            elapsed = time.perf_counter() - start
            if r.status_code != 200:
                self.notes.append(f"W7 run page on {side.name}: HTTP {r.status_code}")
                return float("nan")
            return elapsed
        c = side.conn
        c.execute("SELECT sidecar.start_run('scale-writer')")
        try:
            t = timed(c, "UPDATE bench_w7_b SET n = n + 1 WHERE id BETWEEN 20001 AND 30000")
        finally:
            c.execute("SELECT sidecar.finish_run()")
        return t.wall

    def _pair(self, leg: str, r: int) -> None:
        order = self.sides if r % 2 == 0 else self.sides[::-1]
        got = {}
        for side in order:
            got[side.name] = self._time(side, leg)
            self.samples.add(f"{leg}:{side.name}", got[side.name])
        log(f"  W7 {leg:<10} fresh {seconds(got['fresh']):>8}  big {seconds(got['big']):>8}")

    def run(self) -> None:
        self._prepare()
        try:
            for r in range(self.repeat):
                log(f"W7 repeat {r + 1}/{self.repeat}")
                legs = [k for k, _ in COMMANDS]
                for leg in legs[r % len(legs):] + legs[: r % len(legs)]:
                    self._pair(leg, r)
            for leg, _ in UNDOS:
                self._pair(leg, 0)
        finally:
            for side in self.sides:
                if side.browser is not None:
                    side.browser.__exit__(None, None, None)
            fresh = self.sides[0] if self.sides else None
            if fresh is not None:
                fresh.conn.close()
            _database(self.admin_dsn, FRESH_DB, drop_only=True)

    def lines(self) -> list[Line]:
        s = self.samples
        out = []
        for leg, name in COMMANDS + UNDOS:
            big, fresh = f"{leg}:big", f"{leg}:fresh"
            if not (s.has(big) and s.has(fresh)):
                out.append(Line("W7", name, None, note="not measured"))
                continue
            out.append(Line("W7", name, *s.ratio(big, fresh), op="<=", target=1.5,
                            baseline=f"fresh install {seconds(s.median(fresh))}",
                            note=f"{self.images:,} images; big {seconds(s.median(big))}, "
                                 f"{(s.median(big) - s.median(fresh)) * 1000:+.0f} ms"))
        return out
