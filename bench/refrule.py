"""W6: hold rules that read beyond the row (issue 20), on a tagged bulk UPDATE.

A ticket table of 200,000 rows whose customer_id refers to a customers table
of 10,000 rows. Each leg loads the tables afresh, tracks them, adds its rule
(through sidecar.review.rules.add_rule, the CLI's path) and times one tagged
`UPDATE` of every ticket, inside sidecar.start_run, against the same UPDATE
with no rule (same repeat, legs back to back, rotating order):

- ref: `REF(customer_id).tier = 'enterprise'`, no customer is enterprise, so
  every row is checked (one index lookup of its customer) and none is held;
- context: `CONTEXT.confidence < 0.5`, the run's action says 0.9: every row
  reads the action's context (one index lookup) and none is held;
- plain: `NEW.amount < 0`, a rule on the row alone (the trigger's WHEN clause
  filters it without calling the rule function), for scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

import sidecar.review.rules

from .harness import Line, Samples, log, seconds, timed

TABLE = "bench_w6_tickets"
CUSTOMERS = "bench_w6_customers"
AUTOMATION = "bench-rules"
RULES = {
    "ref": "REF(customer_id).tier = 'enterprise'",
    "context": "CONTEXT.confidence < 0.5",
    "plain": "NEW.amount < 0",
}
NAMES = {
    "ref": "foreign-key rule REF(customer_id).tier, none held",
    "context": "context rule CONTEXT.confidence < 0.5, none held",
    "plain": "row rule NEW.amount < 0 (for scale), none held",
}


@dataclass
class RefRuleBench:
    conn: psycopg.Connection
    rows: int
    repeat: int
    customers: int = 10_000
    samples: Samples = field(default_factory=Samples)
    cpu: Samples = field(default_factory=Samples)
    notes: list[str] = field(default_factory=list)

    def _drop(self) -> None:
        c = self.conn
        for table in (TABLE, CUSTOMERS):
            row = c.execute("SELECT log_table, active FROM sidecar.tracked WHERE relid = to_regclass(%s)",
                            (table,)).fetchone()
            if row is not None:
                if row[1]:
                    c.execute("UPDATE sidecar.rules SET active = false WHERE tracked_id = "
                              "(SELECT tracked_id FROM sidecar.tracked WHERE relid = to_regclass(%s))", (table,))
                    c.execute("SELECT sidecar.untrack(%s::regclass)", (table,))
                c.execute(sql.SQL("TRUNCATE sidecar.{}").format(sql.Identifier(row[0])))
        c.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(sql.Identifier(TABLE), sql.Identifier(CUSTOMERS)))

    def _prepare(self, mode: str) -> None:
        c = self.conn
        self._drop()
        c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text NOT NULL, tier text NOT NULL)").format(
            sql.Identifier(CUSTOMERS)))
        c.execute(sql.SQL("INSERT INTO {} SELECT i, 'customer ' || i, CASE WHEN i % 10 = 0 THEN 'vip' ELSE 'free' END "
                          "FROM generate_series(1, %s) i").format(sql.Identifier(CUSTOMERS)), (self.customers,))
        c.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES {}, "
                          "amount numeric(12, 2) NOT NULL, note text) WITH (autovacuum_enabled = false)").format(
            sql.Identifier(TABLE), sql.Identifier(CUSTOMERS)))
        c.execute(sql.SQL("INSERT INTO {} SELECT i, 1 + i % %s, round(i * 1.37, 2), 'note ' || md5(i::text) "
                          "FROM generate_series(1, %s) i").format(sql.Identifier(TABLE)), (self.customers, self.rows))
        c.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}, {}").format(sql.Identifier(TABLE), sql.Identifier(CUSTOMERS)))
        c.execute("SELECT sidecar.track(%s::regclass)", (TABLE,))
        if mode in RULES:
            sidecar.review.rules.add_rule(c, TABLE, when=RULES[mode], reason=f"bench: {mode} rule matching no row")

    def leg(self, mode: str) -> None:
        c = self.conn
        self._prepare(mode)
        c.execute("SELECT sidecar.start_run(%s)", (AUTOMATION,))
        c.execute("SET sidecar.action = 'bench:update'")
        c.execute("SELECT sidecar.set_context(why => 'bench', confidence => 0.9)")
        try:
            t = timed(c, sql.SQL("UPDATE {} SET amount = amount + 1").format(sql.Identifier(TABLE)).as_string(None))
        finally:
            c.execute("SELECT sidecar.finish_run()")
        held = c.execute("SELECT count(*) FROM sidecar.pending").fetchone()[0]
        if held:
            self.notes.append(f"W6 {mode}: {held} rows held, expected none")
            c.execute("DELETE FROM sidecar.pending")
        self.samples.add(mode, t.wall)
        self.cpu.add(mode, t.cpu if t.cpu is not None else float("nan"))
        log(f"  W6 {mode:<8} {seconds(t.wall):>8}  ({t.rows} rows)")

    def run(self) -> None:
        legs = ["none", "ref", "context", "plain"]
        log("W6 warm-up")
        self.leg("none")
        self.samples, self.cpu = Samples(), Samples()
        for r in range(self.repeat):
            log(f"W6 repeat {r + 1}/{self.repeat}")
            for mode in legs[r % len(legs):] + legs[: r % len(legs)]:
                self.leg(mode)
        self._drop()

    def lines(self) -> list[Line]:
        s = self.samples
        k = f"{self.rows // 1000}k" if self.rows % 1000 == 0 else str(self.rows)
        base = f"tagged UPDATE {k}, no rule {seconds(s.median('none'))}"
        out = []
        for mode in ("ref", "context", "plain"):
            cpu = self.cpu.ratio(mode, "none")[0] if self.cpu.has(mode) and self.cpu.has("none") else None
            out.append(Line("W6", f"{NAMES[mode]}, tagged UPDATE {k}", *s.ratio(mode, "none"), baseline=base, cpu=cpu))
        return out
