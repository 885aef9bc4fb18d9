"""W1 bulk writes, W3 undo, W4 gate and W5 history size, on one bulk table.

Every timed write runs on a freshly loaded table (created, loaded, VACUUM
FREEZE ANALYZE, tracked or not, CHECKPOINT), so each leg starts from the same
physical state. A repeat runs, for each operation in turn, all of that
operation's legs back to back in a rotating order, so a leg and its baseline
are seconds apart; the undo of a tagged write (W3) is timed right after it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from . import emaj
from .harness import (
    NOOP_NOTE,
    Line,
    Samples,
    checkpoint,
    log,
    noop_capture,
    run_cli,
    seconds,
    timed,
)
from .sidebyside import bulk_lines, ratio_or_none

TABLE = "bench_w1"
BIG_TABLE = "bench_big"
BIG_PLAIN = "bench_big_plain"
IMAGES = "bench_images"  # a bare history table: the floor legs write the images into it
AUTOMATION = "bench-bulk"
OTHER_AUTOMATION = "bench-other"  # paused during the gate leg; never writes

# bigint key, text, numeric, text, timestamptz
CREATE = """
CREATE TABLE {t} (
    id      bigint PRIMARY KEY,
    label   text NOT NULL,
    amount  numeric(12, 2) NOT NULL,
    note    text,
    at      timestamptz NOT NULL
) WITH (autovacuum_enabled = false)
"""
ROWS = """
SELECT i, md5(i::text), round(i * 1.37, 2), 'note ' || md5((i * 7)::text),
       timestamptz '2024-01-01 00:00+00' + i * interval '1 second'
FROM generate_series({first}::bigint, {last}::bigint) AS i
"""


@dataclass(frozen=True)
class Sizes:
    rows: int = 200_000
    insert_rows: int = 200_000
    delete_rows: int = 100_000
    big_rows: int = 1_000_000


def _statement(op: str, table: str, sizes: Sizes) -> str:
    t = sql.Identifier(table).as_string(None)
    if op == "update":
        return f"UPDATE {t} SET amount = amount + 1, at = at + interval '1 day'"
    if op == "insert":
        return f"INSERT INTO {t} " + ROWS.format(first=sizes.rows + 1, last=sizes.rows + sizes.insert_rows)
    if op == "delete":
        return f"DELETE FROM {t} WHERE id <= {sizes.delete_rows}"
    raise ValueError(op)


# The floor of capture on this machine: the rows a tagged write adds to
# history, copied by a plain INSERT ... SELECT (no trigger, no statement row)
# from a temporary table that holds them (as the write's transition table
# does) into a table shaped like a history table, with its BRIN index. Any
# capture that keeps one typed row per image pays at least this.
IMAGES_TABLE = """
CREATE TABLE {i} (_stmt bigint NOT NULL, _kind "char" NOT NULL, id bigint, label text,
                  amount numeric(12, 2), note text, at timestamptz) WITH (autovacuum_enabled = false);
CREATE INDEX ON {i} USING brin (_stmt) WITH (autosummarize = on)
"""
IMAGE_ROWS = "bench_image_rows"

# The other layout's floor: an UPDATE's before- and after-image side by side
# in one row, so half as many rows. A statement trigger gets them in two
# transition tables, which say nothing of which old row became which new one:
# capture would have to pair them by key (a row whose key changed stays two
# rows). So: the two sets of images in temporary tables, paired by a FULL JOIN
# on the key, written by a plain INSERT into a table shaped for them.
PAIRED_TABLE = """
CREATE TABLE {i} (_stmt bigint NOT NULL, _kind "char" NOT NULL, id bigint, label text,
                  amount numeric(12, 2), note text, at timestamptz, new_id bigint, new_label text,
                  new_amount numeric(12, 2), new_note text, new_at timestamptz) WITH (autovacuum_enabled = false);
CREATE INDEX ON {i} USING brin (_stmt) WITH (autosummarize = on)
"""
OLD_ROWS, NEW_ROWS = "bench_old_rows", "bench_new_rows"
PAIRED_WRITE = """
INSERT INTO {i}
SELECT 1, CASE WHEN o.id IS NULL THEN 'N' WHEN n.id IS NULL THEN 'O' ELSE 'U' END,
       o.id, o.label, o.amount, o.note, o.at, n.id, n.label, n.amount, n.note, n.at
FROM {old} o FULL JOIN {new} n ON n.id = o.id
"""


def _images(op: str, table: str, sizes: Sizes) -> str:
    """The images a tagged `op` writes (UPDATE: before, then after), as a query."""
    t = sql.Identifier(table).as_string(None)
    if op == "update":
        return (f"SELECT 1::bigint, 'O'::\"char\", * FROM {t} UNION ALL "
                f"SELECT 1, 'N', id, label, amount + 1, note, at + interval '1 day' FROM {t}")
    if op == "insert":
        return "SELECT 1::bigint, 'N'::\"char\", * FROM (" + ROWS.format(
            first=sizes.rows + 1, last=sizes.rows + sizes.insert_rows) + ") AS r (id, label, amount, note, at)"
    if op == "delete":
        return f"SELECT 1::bigint, 'O'::\"char\", * FROM {t} WHERE id <= {sizes.delete_rows}"
    raise ValueError(op)


# The modes a write runs in. untracked: the table has no sidecar trigger.
# untagged: tracked, no sidecar.run_id. tagged: inside sidecar.start_run.
# gate: tagged, while another automation is paused (the gate has a row to
# read, nothing relevant to stop). hold: tagged, with a hold rule on the table
# that matches no row (only when the rules feature exists). ruled: the same
# table and rule, written without sidecar.run_id (a person or an app).
# images: not the write itself but the floor, a plain copy of the rows a
# tagged write would add to history (the table untracked). paired: the same,
# for an UPDATE, in the layout of PAIRED_TABLE. noop: untracked, with
# harness.noop_capture's triggers, untagged: the floor of untagged writes.
@dataclass
class BulkBench:
    conn: psycopg.Connection
    dsn: str
    sizes: Sizes
    repeat: int
    measure_undo: bool = True
    samples: Samples = field(default_factory=Samples)
    cpu: Samples = field(default_factory=Samples)
    undo_samples: Samples = field(default_factory=Samples)
    notes: list[str] = field(default_factory=list)
    history: dict[str, float] = field(default_factory=dict)
    rules_note: str = ""
    big: dict[str, float] = field(default_factory=dict)
    with_emaj: bool = False  # --emaj: E-Maj's legs (bench/emaj.py)
    row_mode: bool = True    # sidecar's legs in capture mode row too

    # -- the table -----------------------------------------------------------
    def _drop(self, table: str) -> None:
        c = self.conn
        row = c.execute(
            "SELECT t.log_table, t.active FROM sidecar.tracked t WHERE t.relid = to_regclass(%s)", (table,)
        ).fetchone()
        if row is not None:
            if row[1]:
                c.execute("SELECT sidecar.untrack(%s::regclass)", (table,))
            # Keep the catalog rows (runs refer to them); drop the bytes.
            c.execute(sql.SQL("TRUNCATE sidecar.{}").format(sql.Identifier(row[0])))
        c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))

    def _drop_images(self) -> None:
        for name in (IMAGES, IMAGE_ROWS, OLD_ROWS, NEW_ROWS):
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))

    def prepare(self, table: str, rows: int, tracked: bool, capture_mode: str = "statement") -> str | None:
        """A freshly loaded table; returns its history table when tracked."""
        c = self.conn
        self._drop(table)
        c.execute(sql.SQL(CREATE).format(t=sql.Identifier(table)))
        c.execute(sql.SQL("INSERT INTO {} ").format(sql.Identifier(table)) + sql.SQL(ROWS.format(first=1, last=rows)))
        c.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(table)))
        if not tracked:
            return None
        c.execute("SELECT sidecar.track(%s::regclass, 'tagged', NULL, NULL, %s)", (table, capture_mode))
        log_table = c.execute("SELECT log_table FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone()[0]
        # History is partitioned (migration 025): storage parameters go on each partition.
        parent = sql.Identifier("sidecar", log_table).as_string(c)
        for (part,) in c.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND (c.oid = %(t)s::regclass "
                "OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %(t)s::regclass))",
                {"t": parent}).fetchall():
            c.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(sql.Identifier("sidecar", part)))
        return log_table

    def _start_run(self, leg: str) -> uuid.UUID:
        return self.conn.execute("SELECT sidecar.start_run(%s, jsonb_build_object('leg', %s::text))",
                                 (AUTOMATION, leg)).fetchone()[0]

    def _finish_run(self) -> None:
        self.conn.execute("SELECT sidecar.finish_run()")

    # -- rules (issue 5), when they exist ------------------------------------
    def rules_available(self) -> bool:
        found = self.conn.execute(
            "SELECT EXISTS (SELECT FROM pg_proc WHERE proname = 'add_rule' AND pronamespace = 'sidecar'::regnamespace)"
        ).fetchone()[0]
        if not found:
            self.rules_note = "no rules feature in this sidecar yet (no sidecar.add_rule)"
        return found

    def _add_hold_rule(self, table: str) -> bool:
        try:
            self.conn.execute("SELECT sidecar.add_rule(%s::regclass, %s, %s)",
                              (table, "NEW.amount < 0", "bench: a hold rule that matches no row"))
        except psycopg.Error as exc:
            self.rules_note = f"sidecar.add_rule failed: {exc.diag.message_primary or exc}"[:160]
            return False
        return True

    # -- one leg -----------------------------------------------------------
    def leg(self, op: str, mode: str) -> None:
        c = self.conn
        sidecar_tracked = mode not in ("untracked", "images", "paired", "noop", "emaj", "emaj-logged")
        log_table = self.prepare(TABLE, self.sizes.rows, tracked=sidecar_tracked,
                                 capture_mode="row" if mode.endswith("-row") else "statement")
        table_bytes = c.execute("SELECT pg_total_relation_size(%s::regclass)", (TABLE,)).fetchone()[0]
        if mode in ("hold", "ruled") and not self._add_hold_rule(TABLE):
            self.samples.add(f"{op}/{mode}", float("nan"))
            self.cpu.add(f"{op}/{mode}", float("nan"))
            return
        if mode == "images":
            self._drop_images()
            c.execute(sql.SQL(IMAGES_TABLE).format(i=sql.Identifier(IMAGES)))
            c.execute(sql.SQL("CREATE TEMP TABLE {} AS ").format(sql.Identifier(IMAGE_ROWS))
                      + sql.SQL(_images(op, TABLE, self.sizes)))
        if mode == "paired":
            self._drop_images()
            c.execute(sql.SQL(PAIRED_TABLE).format(i=sql.Identifier(IMAGES)))
            for name, query in ((OLD_ROWS, "SELECT * FROM {t}"),
                                (NEW_ROWS, "SELECT id, label, amount + 1 AS amount, note, at + interval '1 day' AS at FROM {t}")):
                c.execute(sql.SQL("CREATE TEMP TABLE {} AS ").format(sql.Identifier(name))
                          + sql.SQL(query).format(t=sql.Identifier(TABLE)))
                c.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))
        if mode == "noop":
            noop_capture(c, [TABLE], True)
        if mode.startswith("emaj"):
            emaj.start(c, [TABLE])
        run_id = None
        if mode in ("tagged", "gate", "hold", "tagged-row"):
            run_id = self._start_run(f"{op}/{mode}")
        if mode == "gate":
            c.execute("SELECT sidecar.pause(%s, %s)", (OTHER_AUTOMATION, "bench: gate check with a pause row present"))
        try:
            if mode == "images":
                statement = sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                    sql.Identifier(IMAGES), sql.Identifier(IMAGE_ROWS)).as_string(None)
            elif mode == "paired":
                statement = sql.SQL(PAIRED_WRITE).format(
                    i=sql.Identifier(IMAGES), old=sql.Identifier(OLD_ROWS), new=sql.Identifier(NEW_ROWS)).as_string(None)
            else:
                statement = _statement(op, TABLE, self.sizes)
            t = timed(c, statement)
            if mode.startswith("emaj") and self.measure_undo:
                rollback = timed(c, emaj.rollback_sql(logged=mode == "emaj-logged"))
                self.undo_samples.add(f"{op}/{mode}", rollback.wall)
                log(f"  W3 {mode} rollback {op:<6} {seconds(rollback.wall):>8}")
                self._check_restored(f"{op} ({mode} rollback)")
        finally:
            if mode.startswith("emaj"):
                emaj.stop(c)
            if mode == "noop":
                noop_capture(c, [TABLE], False)
            if mode == "gate":
                c.execute("SELECT sidecar.resume(%s)", (OTHER_AUTOMATION,))
            if run_id is not None:
                self._finish_run()
        self.samples.add(f"{op}/{mode}", t.wall)
        self.cpu.add(f"{op}/{mode}", t.cpu if t.cpu is not None else float("nan"))
        log(f"  W1 {op:<6} {mode:<9} {seconds(t.wall):>8}  ({t.rows} rows)")
        if op == "update" and mode == "tagged" and log_table:
            self._measure_history(log_table, table_bytes, t.rows)
        if mode in ("tagged", "tagged-row") and self.measure_undo:
            self._undo(op if mode == "tagged" else f"{op}/row", run_id)

    def _measure_history(self, log_table: str, table_bytes: int, changed_rows: int) -> None:
        """W5: history bytes (the history table, and this table's share of
        sidecar.statements) per changed row, against the table's bytes per row
        as loaded (heap, TOAST and indexes: pg_total_relation_size)."""
        c = self.conn
        log_bytes, images = c.execute(
            sql.SQL("SELECT pg_total_relation_size(%s::regclass), (SELECT count(*) FROM sidecar.{})").format(
                sql.Identifier(log_table)),
            (f"sidecar.{sql.Identifier(log_table).as_string(None)}",),
        ).fetchone()
        share = c.execute(
            "SELECT pg_total_relation_size('sidecar.statements') * "
            "(SELECT count(*) FROM sidecar.statements s JOIN sidecar.tracked t USING (tracked_id) "
            " WHERE t.log_table = %s)::numeric / greatest((SELECT count(*) FROM sidecar.statements), 1)",
            (log_table,),
        ).fetchone()[0]
        history_per_row = (log_bytes + float(share)) / max(changed_rows, 1)
        table_per_row = table_bytes / self.sizes.rows
        self.history = {"ratio": history_per_row / table_per_row, "history_per_row": history_per_row,
                        "table_per_row": table_per_row, "images": images, "changed": changed_rows}

    def _undo(self, op: str, run_id: uuid.UUID) -> None:
        checkpoint(self.conn)
        res = run_cli(["undo", str(run_id), "--yes", "--dsn", self.dsn])
        if res.returncode != 0:
            self.notes.append(f"undo of the {op} run exited {res.returncode}: {res.output.strip()[-300:]}")
            log(f"  W3 undo {op} FAILED (exit {res.returncode})")
            self.undo_samples.add(op, float("nan"))
            return
        self.undo_samples.add(op, res.seconds)
        log(f"  W3 undo {op:<6}        {seconds(res.seconds):>8}  (peak {res.max_rss_mb:.0f} MB)")
        self._check_restored(op)

    def _check_restored(self, op: str) -> None:
        """The undo really put the table back (a bench that times a no-op proves nothing)."""
        wrong = self.conn.execute(
            sql.SQL("SELECT count(*) <> %s OR count(*) FILTER (WHERE amount <> round(id * 1.37, 2) "
                    "OR at <> timestamptz '2024-01-01 00:00+00' + id * interval '1 second') > 0 FROM {}").format(
                sql.Identifier(TABLE)),
            (self.sizes.rows,),
        ).fetchone()[0]
        if wrong:
            self.notes.append(f"undo of the {op} run did not restore {TABLE} to its loaded state")

    # -- the whole workload ------------------------------------------------
    def run(self) -> None:
        modes = {op: ["untracked", "untagged", "tagged"] for op in ("update", "insert", "delete")}
        modes["update"].append("gate")
        for op in ("update", "insert", "delete"):
            modes[op].append("images")
        for op in ("update", "delete"):
            modes[op].append("noop")
        modes["update"].append("paired")
        if self.rules_available():
            modes["update"] += ["hold", "ruled"]
        for op in modes:
            if self.row_mode:
                modes[op] += ["tagged-row", "untagged-row"]
            if self.with_emaj:
                modes[op] += ["emaj", "emaj-logged"]
        ops = list(modes)
        # Warm-up, not recorded: caches, WAL segments, the CLI's first start.
        log("W1 warm-up")
        for mode in ("untracked", "tagged"):
            self.prepare(TABLE, self.sizes.rows, tracked=mode == "tagged")
            timed(self.conn, _statement("update", TABLE, self.sizes))
        for r in range(self.repeat):
            log(f"W1/W3/W4/W5 repeat {r + 1}/{self.repeat}")
            for op in ops[r % len(ops):] + ops[: r % len(ops)]:
                legs = modes[op]
                for mode in legs[r % len(legs):] + legs[: r % len(legs)]:
                    self.leg(op, mode)
        self._drop(TABLE)
        self._drop_images()

    def run_big(self) -> None:
        """W3's big undo: a tagged UPDATE of every row of a big table, undone by
        the CLI, with the CLI's peak memory; timed against an untracked UPDATE."""
        n = self.sizes.big_rows
        log(f"W3 big: {n} rows")
        self.prepare(BIG_PLAIN, n, tracked=False)
        plain = timed(self.conn, _statement("update", BIG_PLAIN, self.sizes)).wall
        self._drop(BIG_PLAIN)
        self.prepare(BIG_TABLE, n, tracked=True)
        run_id = self._start_run("big/update")
        t = timed(self.conn, _statement("update", BIG_TABLE, self.sizes))
        tagged, count = t.wall, t.rows
        self._finish_run()
        checkpoint(self.conn)
        res = run_cli(["undo", str(run_id), "--yes", "--dsn", self.dsn])
        log(f"  W3 big: untracked UPDATE {seconds(plain)}, tagged {seconds(tagged)}, undo {seconds(res.seconds)}, "
            f"peak {res.max_rss_mb:.0f} MB, exit {res.returncode}")
        if res.returncode != 0:
            self.notes.append(f"undo of the {n}-row run exited {res.returncode}: {res.output.strip()[-300:]}")
        self.big = {"rows": count, "plain": plain, "tagged": tagged, "undo": res.seconds,
                    "rss": res.max_rss_mb, "ok": res.returncode == 0}
        self._drop(BIG_TABLE)

    # -- the report ----------------------------------------------------------
    def _cpu(self, leg: str, base: str) -> float | None:
        return self.cpu.ratio(leg, base)[0] if self.cpu.has(leg) and self.cpu.has(base) else None

    def lines(self, with_w3: bool, with_w4: bool, with_w5: bool) -> list[Line]:
        s, z = self.samples, self.sizes
        out: list[Line] = []
        k = lambda n: f"{n // 1000}k" if n % 1000 == 0 else str(n)  # noqa: E731
        sizes = {"update": k(z.rows), "insert": k(z.insert_rows), "delete": k(z.delete_rows)}
        for op in ("update", "insert", "delete"):
            base = f"untracked {op.upper()} {seconds(s.median(f'{op}/untracked'))}"
            out.append(Line("W1", f"tagged {op.upper()} {sizes[op]} vs untracked", *s.ratio(f"{op}/tagged", f"{op}/untracked"),
                            baseline=base, cpu=self._cpu(f"{op}/tagged", f"{op}/untracked"),
                            vs_emaj=ratio_or_none(s, f"{op}/tagged", f"{op}/emaj")))
        for op in ("update", "insert", "delete"):
            if not s.has(f"{op}/images"):
                continue
            # Per repeat: the write and the bare write of its images, against the write; the
            # target of a tagged bulk write is its floor of the same repeat (issue 22).
            floor = [w + i for w, i in zip(s.values[f"{op}/untracked"], s.values[f"{op}/images"])]
            both = Samples({"floor": floor, "base": s.values[f"{op}/untracked"], "tagged": s.values[f"{op}/tagged"]})
            out.append(Line("W1", f"floor: untracked {op.upper()} + a bare write of its images", *both.ratio("floor", "base"),
                            baseline=f"its images copied by a plain INSERT into a history-shaped table "
                                     f"{seconds(s.median(f'{op}/images'))}; no trigger"))
            out.append(Line("W1", f"tagged {op.upper()} {sizes[op]} vs its floor", *both.ratio("tagged", "floor"),
                            op="<=", target=1.10, baseline=f"the floor line above, {seconds(both.median('floor'))}"))
            if s.has(f"{op}/paired"):
                paired = Samples({"floor": [w + i for w, i in zip(s.values[f"{op}/untracked"], s.values[f"{op}/paired"])],
                                  "base": s.values[f"{op}/untracked"]})
                out.append(Line("W1", f"floor: untracked {op.upper()} + its images paired by key, one row each",
                                *paired.ratio("floor", "base"),
                                baseline=f"before- and after-images joined on the key and written side by side "
                                         f"{seconds(s.median(f'{op}/paired'))}; no trigger"))
        for op in ("update", "insert", "delete"):
            base = f"untracked {op.upper()} {seconds(s.median(f'{op}/untracked'))}"
            out.append(Line("W1", f"untagged {op.upper()} {sizes[op]}, tracked table", *s.ratio(f"{op}/untagged", f"{op}/untracked"),
                            op="<=", target=1.10, baseline=base, cpu=self._cpu(f"{op}/untagged", f"{op}/untracked")))
        for op in ("update", "delete"):
            if s.has(f"{op}/noop"):
                out.append(Line("W1", f"floor: untagged {op.upper()}, no-op triggers", *s.ratio(f"{op}/noop", f"{op}/untracked"),
                                baseline=NOOP_NOTE, cpu=self._cpu(f"{op}/noop", f"{op}/untracked")))
        out += bulk_lines(s, self.cpu, self.undo_samples, sizes, with_w3)
        if with_w3:
            u = self.undo_samples
            for op, target in (("update", 2.5), ("insert", None), ("delete", None)):
                base = f"untracked {op.upper()} {seconds(s.median(f'{op}/untracked'))}"
                name = f"undo of the tagged {op.upper()} (whole CLI)"
                if not u.has(op):
                    out.append(Line("W3", name, None, note="undo failed; see notes"))
                    continue
                both = Samples({"undo": u.values[op], "base": s.values[f"{op}/untracked"],
                                "tagged": s.values[f"{op}/tagged"]})  # the write that made the run
                out.append(Line("W3", name, *both.ratio("undo", "base"), op="<=" if target else None, target=target,
                                baseline=base + f"; undo {seconds(u.median(op))}, "
                                                f"{both.ratio('undo', 'tagged')[0]:.2f}x the tagged write"))
            if self.big:
                b = self.big
                rows = k(b["rows"])
                out.append(Line("W3", f"undo of {rows}-row UPDATE: CLI peak memory", b["rss"] if b["ok"] else None,
                                unit="MB", op="<", target=200.0, baseline="ru_maxrss of the sidecar process"))
                out.append(Line("W3", f"undo of {rows}-row UPDATE vs untracked UPDATE", b["undo"] / b["plain"] if b["ok"] else None,
                                baseline=f"untracked UPDATE {seconds(b['plain'])}; undo {seconds(b['undo'])}; "
                                         f"tagged UPDATE {b['tagged'] / b['plain']:.2f}x; 1 sample"))
        if with_w4:
            base = f"tagged UPDATE {seconds(s.median('update/tagged'))}"
            out.append(Line("W4", f"gate on (other automation paused), UPDATE {sizes['update']}",
                            *s.ratio("update/gate", "update/tagged"), op="<=", target=1.05, baseline=base,
                            cpu=self._cpu("update/gate", "update/tagged")))
            if s.has("update/hold"):
                out.append(Line("W4", "one hold rule on the table, UPDATE", *s.ratio("update/hold", "update/tagged"),
                                baseline=base, cpu=self._cpu("update/hold", "update/tagged")))
            else:
                out.append(Line("W4", "one hold rule on the table, UPDATE", None, note=self.rules_note))
            if s.has("update/ruled"):
                out.append(Line("W4", "one hold rule on the table, untagged UPDATE vs untracked",
                                *s.ratio("update/ruled", "update/untracked"),
                                baseline=f"untracked UPDATE {seconds(s.median('update/untracked'))}",
                                cpu=self._cpu("update/ruled", "update/untracked")))
        if with_w5 and self.history:
            h = self.history
            out.append(Line("W5", f"history bytes per changed row, UPDATE {sizes['update']}", h["ratio"], op="<=", target=2.5,
                            baseline=f"history {h['history_per_row']:.0f} B/row ({h['images']} images) vs table "
                                     f"{h['table_per_row']:.0f} B/row as loaded"))
        return out
