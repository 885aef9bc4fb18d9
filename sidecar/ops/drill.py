"""The failure drill: the launch checklist, run against a scratch copy of one table.

"If your team cannot pause it, restore it, or explain it, do not let it write
to records that matter." ``run_drill(conn, "billing_notes")`` proves each of
those on a copy, never on the live rows, and times every step:

  roles    someone can pause, undo, rerun and read the logs (role grants)
  copy     a scratch copy in schema sidecar_drill_<random>: the table's
           columns, constraints and triggers (LIKE ... INCLUDING ALL, plus
           copies of its own triggers, self-references and the on/off state
           of its capture triggers), a sample of its rows, tracked like it
  capture  a write of the drill's automation to the copy is captured
  pause    a pause stops the next write of a session already writing (SC001)
  record   one record restored (undo of one row of a run)
  batch    a small batch restored (undo of a whole run)
  rerun    one failed item rerun without a duplicate (steps, a failure,
           sidecar.rerun.rerun, exactly N effects)
  trail    the event trail says what started the failed run, what it changed,
           what failed and what happens next

The drill's writes run as automation ``sidecar-drill``. Every transaction of
it checks pg_stat_xact_user_tables before it commits: if the copied triggers
wrote to any table outside the scratch schema, it rolls back and the check
fails. Afterwards the drill removes its runs, history and events
(sidecar._drill_cleanup) and drops the scratch schema, even when a check
failed, so ``sidecar runs`` never lists drill runs; the result stays as one
event of kind 'drill' (``sidecar inventory`` shows the last one per table).
The scratch copy itself is made, read and dropped by sidecar/drill_copy.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from ..capture import schema, settle, tracking
from ..errors import SidecarError, UsageError
from ..review import gate
from ..steps import rerun as rerun_mod
from ..steps import runs as runs_mod
from ..steps.runs import Run
from ..text.describe import plural
from ..undo import restore
from . import inventory, owners
from .drill_copy import SCHEMA_PREFIX, SIDECAR_TRIGGERS, ScratchCopy, remove_leftovers
from .drill_copy import CheckFailed as _CheckFailed

DRILL_AUTOMATION = inventory.DRILL_AUTOMATION
_DRILL_LOCK = 7_420_009
_DUTIES = ("pause", "undo", "rerun", "logs")

CHECKS = {
    "roles": "operators can pause, undo, rerun and read the logs",
    "copy": "scratch copy with the table's columns, constraints and triggers",
    "capture": "a drill write to the copy is captured",
    "pause": "pause stops fresh writes",
    "record": "one record restored",
    "batch": "a small batch restored",
    "rerun": "one failed item rerun without a duplicate",
    "trail": "event trail: what started it, changed, failed, happens next",
}


@dataclass
class Check:
    name: str
    title: str
    passed: bool
    seconds: float
    detail: str


@dataclass
class DrillReport:
    table: str
    automation: str | None
    scratch_schema: str
    sample_rows: int
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    cleanup: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def text(self) -> str:
        who = f" for automation {self.automation}" if self.automation else ""
        lines = [f"Failure drill on {self.table}{who}: scratch copy in schema {self.scratch_schema}, "
                 f"{plural(self.sample_rows, 'sample row')}, writes as automation {DRILL_AUTOMATION}", ""]
        lines.append(f"  {'check':<8} {'result':<6} {'time':>8}  what")
        for c in self.checks:
            lines.append(f"  {c.name:<8} {'pass' if c.passed else 'FAIL':<6} {c.seconds:>7.2f}s  {c.title}")
            lines.append(f"  {'':<8} {'':<6} {'':>8}  {c.detail}")
        lines.append("")
        ok = sum(c.passed for c in self.checks)
        lines.append(f"{ok} of {len(self.checks)} checks passed"
                     + ("." if self.passed else f"; failed: {', '.join(self.failed)}."))
        lines.extend(f"Note: {n}" for n in self.notes)
        if self.cleanup:
            lines.append(self.cleanup)
        return "\n".join(lines)


class _ItemFailure(Exception):
    """The drill's deliberate failure of one item."""


def run_drill(conn: psycopg.Connection, table: str, *, automation: str | None = None, sample_rows: int = 20,
              connect: Callable[[], psycopg.Connection] | None = None) -> DrillReport:
    """Run the launch checklist on a scratch copy of TABLE; see the module doc.

    conn must be autocommit and belong to the sidecar schema's owner (or a
    superuser); connect() opens the drill automation's own session (by default
    a second connection like conn).
    """
    if not conn.autocommit:
        raise SidecarError("the drill needs an autocommit connection")
    if schema.installed_version(conn) is None:
        raise SidecarError("sidecar is not installed in this database; run: sidecar install")
    name = tracking.regclass(conn, table)
    if name.startswith(("sidecar.", SCHEMA_PREFIX)):
        raise UsageError(f"{name} belongs to sidecar itself; drill a table of the application")
    if sample_rows < 3:
        raise UsageError("--sample must be at least 3 rows")
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (_DRILL_LOCK,)).fetchone()[0]:
        raise UsageError("another drill is running on this database; wait for it to finish")
    try:
        drill = _Drill(conn, name, automation, sample_rows, connect or _second_connection(conn))
        drill.notes.extend(remove_leftovers(conn))
        report = drill.run()
        try:
            conn.execute(
                "SELECT sidecar._log_event('drill', NULL, %s, %s)",
                (f"Drill on {name}: {sum(c.passed for c in report.checks)} of {len(report.checks)} checks passed"
                 + ("" if report.passed else f" (failed: {', '.join(report.failed)})"),
                 Jsonb({"table": name, "automation": automation, "passed": report.passed,
                        "checks": [{"name": c.name, "passed": c.passed, "seconds": round(c.seconds, 3),
                                    "detail": c.detail} for c in report.checks]})),
            )
        except psycopg.Error as exc:
            report.notes.append(f"the result was not recorded as an event: {exc.diag.message_primary}")
        return report
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_DRILL_LOCK,))


def _second_connection(conn: psycopg.Connection) -> Callable[[], psycopg.Connection]:
    params = {"password": conn.info.password} if conn.info.password else {}
    conninfo = make_conninfo(conn.info.dsn, **params)

    def connect() -> psycopg.Connection:
        return psycopg.connect(conninfo, autocommit=True, application_name=DRILL_AUTOMATION)

    return connect


class _Drill(ScratchCopy):
    """The checks, and the drill automation's writes to the scratch copy (made by ScratchCopy)."""

    def __init__(self, conn: psycopg.Connection, table: str, automation: str | None, sample_rows: int,
                 connect: Callable[[], psycopg.Connection]):
        super().__init__(conn, table, sample_rows)
        self.automation, self.connect = automation, connect
        self.bot: psycopg.Connection | None = None
        self.runs: dict[str, Any] = {}

    # -- the checklist --------------------------------------------------------
    def run(self) -> DrillReport:
        checks: list[Check] = [self._timed("roles", self.check_roles)]
        try:
            checks.append(self._timed("copy", self.check_copy))
            for name, fn in (("capture", self.check_capture), ("pause", self.check_pause),
                             ("record", self.check_record), ("batch", self.check_batch),
                             ("rerun", self.check_rerun), ("trail", self.check_trail)):
                if not self.copy or not self.bot:
                    checks.append(Check(name, CHECKS[name], False, 0.0, "not run: the scratch copy could not be made"))
                    continue
                checks.append(self._timed(name, fn))
        finally:
            cleanup = self._teardown()
        return DrillReport(self.table, self.automation, self.schema, len(self.rows) + len(self.items),
                           checks, self.notes, cleanup)

    def _timed(self, name: str, fn: Callable[[], str]) -> Check:
        start = time.perf_counter()
        try:
            detail, passed = fn(), True
        except (_CheckFailed, SidecarError) as exc:
            detail, passed = str(exc), False
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).removeprefix("sidecar: ")
            detail, passed = f"{message} ({exc.sqlstate})", False
        return Check(name, CHECKS[name], passed, time.perf_counter() - start, detail)

    def check_roles(self) -> str:
        # The launch checklist's duties; approving held writes is the review queue's (sidecar owners shows it).
        report = owners.owners(self.conn, automation=self.automation or "*", extra_tables=[self.table])
        roles = [r for r in report.roles if r.role in {owners.DUTIES[d][0] for d in _DUTIES}]
        problems = [f"role {r.role} is missing" for r in roles if not r.exists]
        problems += [f"role {r.role} lacks {r.needs}" for r in roles if r.exists and r.granted is False]
        duties = {d: duty for d, duty in report.automations[0].duties.items() if d in _DUTIES}
        problems += [f"nobody can {d}" for d, duty in duties.items() if duty.flag == "nobody"]
        if problems:
            raise _CheckFailed("; ".join(problems) + ": run sidecar install (as a role with CREATEROLE), "
                               "then grant the roles to the people on call; sidecar owners shows who is")
        summary = ", ".join(f"{d} {len(duty.holders)}" for d, duty in duties.items() if duty.flag != "not installed")
        only = [d for d, duty in duties.items() if duty.flag == "superusers only"]
        return (f"people per duty: {summary}"
                + (f"; only superusers can {', '.join(only)} (sidecar owners)" if only else ""))

    def check_copy(self) -> str:
        with self.conn.transaction():
            detail = self._make_copy()
        self.bot = self.connect()
        return detail

    def check_capture(self) -> str:
        """An update, a delete and an insert of the drill automation are each captured."""
        edited, gone = self.rows[0], self.rows[-1]
        with self._run("capture") as run:
            with run.action("drill:capture-change"), self._bot_tx():
                did = [self._damage(edited)]
            deleted = [edited] if did[0].startswith("deleted") else []
            if gone not in deleted:
                with run.action("drill:capture-delete"), self._bot_tx():
                    self._delete(gone)
                did.append(f"deleted {self._label(gone)}")
                deleted.append(gone)
            with run.action("drill:capture-insert"), self._bot_tx():
                for key in deleted:
                    self._put_back(key)
            did.append(f"put {' and '.join(map(self._label, deleted))} back")
        settle.keep_settled(self.conn)  # a row-mode copy's statements are made when read
        ops = dict(self.conn.execute(
            "SELECT op, count(*) FROM sidecar.statements WHERE run_id = %s AND tracked_id = %s GROUP BY op",
            (run.run_id, self.tracked_id),
        ).fetchall())
        wanted = {"U": "update", "D": "delete", "I": "insert"}
        if not did[0].startswith("edited"):
            del wanted["U"]
            self.notes.append(f"no column of {self.table} could be changed freely, so the drill deletes rows "
                              "instead of editing them")
        missing = [what for op, what in wanted.items() if not ops.get(op)]
        if missing:
            raise _CheckFailed(f"the drill's {' and '.join(missing)} "
                               f"{'was' if len(missing) == 1 else 'were'} not captured: {self._capture_problem()}")
        return f"{'; '.join(did)}: each captured, as run {str(run.run_id)[:8]}"

    def check_pause(self) -> str:
        key = self.rows[-1]
        with self._run("pause") as run:
            with self._bot_tx():
                self._touch(self.rows[0])  # the run is writing: its session is open
            before = self._row(key)
            start = time.perf_counter()
            gate.pause(self.conn, automation=DRILL_AUTOMATION, reason="failure drill: does a pause stop fresh writes?")
            try:
                try:
                    with self._bot_tx():
                        self._touch(key)
                except psycopg.Error as exc:
                    if exc.sqlstate != "SC001":
                        raise
                    refused_after = time.perf_counter() - start
                else:
                    raise _CheckFailed(f"a write went through while {DRILL_AUTOMATION} was paused: "
                                       f"{self._capture_problem()}")
            finally:
                gate.resume(self.conn, automation=DRILL_AUTOMATION)
            if self._row(key) != before:
                raise _CheckFailed("the paused write was refused, yet the row changed")
            with self._bot_tx():
                self._touch(key)
            self.runs["pause"] = run.run_id
        return (f"the open session's next write was refused (SC001) {refused_after * 1000:.0f} ms after the pause; "
                "nothing landed; writes went on after resume")

    def _damage_rows(self, check: str, n: int) -> tuple[Run, list[tuple[str, ...]], dict[tuple[str, ...], str | None]]:
        """One run of the drill automation changing up to n sample rows, one action each: (run, keys, rows before)."""
        keys = self._present(self.rows)[:n]
        if not keys:
            raise _CheckFailed("no sample row is left to change")
        before = {k: self._row(k) for k in keys}
        with self._run(check) as run:
            for i, k in enumerate(keys, 1):
                with run.action(f"drill:{check}-{i}"), self._bot_tx():
                    self._damage(k)
        return run, keys, before

    def check_record(self) -> str:
        run, keys, before = self._damage_rows("record", 2)
        try:
            result = restore.undo(self.conn, restore.Scope(run.run_id, rows=[(self.copy, dict(zip(self.pk, keys[0])))]),
                                  reason="failure drill: one record")
        except UsageError as exc:
            raise _CheckFailed(f"the undo had nothing to restore ({exc}): {self._capture_problem()}") from None
        if self._row(keys[0]) != before[keys[0]]:
            raise _CheckFailed(f"undo of one row left {self._label(keys[0])} unlike before the run")
        if len(keys) > 1 and self._row(keys[1]) == before[keys[1]]:
            raise _CheckFailed(f"undo of one row also restored {self._label(keys[1])}, which it was not asked to")
        return (f"{self._label(keys[0])} restored by undo {str(result.undo_run_id)[:8]}"
                + (f"; {self._label(keys[1])}, changed by the same run, left as it was" if len(keys) > 1 else ""))

    def check_batch(self) -> str:
        run, keys, before = self._damage_rows("batch", 5)
        self.runs["batch"] = run.run_id
        result = restore.undo(self.conn, restore.Scope(run.run_id), reason="failure drill: a small batch")
        wrong = [self._label(k) for k in keys if self._row(k) != before[k]]
        if wrong:
            raise _CheckFailed(f"after the undo, {', '.join(wrong)} still differ from before the run"
                               + ("" if result.restored else f": nothing was captured; {self._capture_problem()}"))
        if result.conflict_count:
            raise _CheckFailed(f"the undo skipped {plural(result.conflict_count, 'conflicting row')}")
        return f"{plural(len(keys), 'row')} changed by one run, all restored by one undo ({result.restored} restored)"

    def check_rerun(self) -> str:
        if len(self.items) < 2:
            raise _CheckFailed(f"needs at least 3 rows in the table to copy; it has {len(self.rows) + len(self.items)}")
        fail_at = 2
        try:
            with self._run("rerun") as run:
                self._work(run, fail_at=fail_at)
        except _ItemFailure:
            pass
        self.runs["failed"] = run.run_id
        if self._items_present() != [1] + [0] * (len(self.items) - 1):
            raise _CheckFailed("the failed run did not stop at the failing item with the items before it done")
        report = rerun_mod.rerun(self.conn, str(run.run_id), reason="failure drill")
        self.runs["rerun"] = report.rerun_id
        expected = [f"drill:item-{i}" for i in range(fail_at, len(self.items) + 1)]
        if report.redo != expected:
            raise _CheckFailed(f"the rerun meant to redo {report.redo or 'nothing'}, not {expected}")
        with Run(self.bot, DRILL_AUTOMATION, run_id=report.rerun_id) as again:
            self._work(again)  # the whole loop again: done steps are skipped
        counts = self._items_present()
        if counts != [1] * len(self.items):
            raise _CheckFailed(f"after the rerun the items exist {counts} times, not exactly once each")
        done_by = dict(self.conn.execute(
            "SELECT key, run_id FROM sidecar.steps WHERE lineage = %s", (run.run_id,)).fetchall())
        if done_by.get("drill:item-1") != run.run_id:
            raise _CheckFailed("item 1 was redone by the rerun")
        redone = f"item {fail_at}" if fail_at == len(self.items) else f"items {fail_at}-{len(self.items)}"
        return (f"item {fail_at} of {len(self.items)} failed; the rerun redid {redone} and skipped item 1 "
                f"(done before): {len(self.items)} items, each exactly once")

    def check_trail(self) -> str:
        failed = self.runs.get("failed")
        if not failed:
            raise _CheckFailed("no failed run to explain (the rerun check did not get that far)")
        missing, facts = [], []
        info = runs_mod.get(self.conn, failed)  # the run, with the rows it changed per table
        if info.meta.get("drill") == self.schema:
            facts.append(f"started: {info.automation} by {info.started_by} ({info.meta.get('check')} check)")
        else:
            missing.append("what started it (run and its meta)")
        changed = info.rows.get(self.copy)
        if changed:
            facts.append(f"changed: {plural(changed, 'row')}")
        else:
            missing.append(f"what it changed (no captured change: {self._capture_problem()})")
        step_error = self.conn.execute(
            "SELECT key FROM sidecar.step_failures WHERE run_id = %s ORDER BY failed_at LIMIT 1", (failed,)
        ).fetchone()
        if info.status == "failed" and info.error and step_error:
            facts.append(f"failed: step {step_error[0]}")
        else:
            missing.append("what failed (run status, error and failed step)")
        nxt = self.conn.execute(
            "SELECT e.summary FROM sidecar.events e JOIN sidecar.runs r ON r.rerun_of = e.run_id "
            "WHERE e.kind = 'rerun' AND e.run_id = %s ORDER BY e.event_id LIMIT 1", (failed,)
        ).fetchone()
        if nxt:
            facts.append(f"next: {nxt[0]}")
        else:
            missing.append("what happens next (a rerun event naming the steps to redo)")
        if missing:
            raise _CheckFailed("the trail does not say " + "; ".join(missing))
        return "; ".join(facts)

    # -- the drill automation's writes ------------------------------------------
    @contextmanager
    def _run(self, check: str) -> Iterator[Run]:
        meta = {"drill": self.schema, "table": self.table, "check": check}
        if self.automation:
            meta["for"] = self.automation
        with Run(self.bot, DRILL_AUTOMATION, meta=meta) as run:
            yield run

    @contextmanager
    def _bot_tx(self) -> Iterator[None]:
        """One transaction of the drill automation; rolled back if it wrote outside the scratch schema."""
        with self.bot.transaction():
            yield
            self._refuse_live_writes()

    def _refuse_live_writes(self) -> None:
        """Before the drill automation commits: did this transaction write any table outside the scratch schema?"""
        wrote = self.bot.execute(
            "SELECT format('%%I.%%I', schemaname, relname) FROM pg_stat_xact_user_tables "
            "WHERE schemaname <> ALL(%s) AND schemaname NOT LIKE 'pg\\_temp%%' "
            "AND n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1",
            ([self.schema, "sidecar"],),
        ).fetchall()
        if wrote:
            raise _CheckFailed(
                f"the copy's triggers wrote to {', '.join(r[0] for r in wrote)} outside the scratch schema; "
                "the drill rolled that back. Drill a table whose triggers write only to itself, "
                "or a copy of the database")

    def _damage(self, key: tuple[str, ...]) -> str:
        """Change one row of the copy as an automation would: edit a column, else delete the row."""
        for column, category, length in list(self.editable):
            if category == "S":
                first, second = "changed by the drill", "changed again by the drill"
                if length:
                    first, second = first[:length], second[:length]
                    first, second = (first, second) if first != second else ("x", "y")
                value = sql.SQL("CASE WHEN t.{0} IS NOT DISTINCT FROM {1} THEN {2} ELSE {1} END").format(
                    sql.Identifier(column), sql.Literal(first), sql.Literal(second))
            else:
                value = sql.SQL({"N": "coalesce(t.{0}, 0) + 1", "D": "coalesce(t.{0}, now()) + interval '1 day'",
                                 "B": "NOT coalesce(t.{0}, false)"}[category]).format(sql.Identifier(column))
            try:
                with self.bot.transaction():
                    n = self.bot.execute(sql.SQL("UPDATE {c} AS t SET {col} = {value} WHERE {where}").format(
                        c=self.copy_ident, col=sql.Identifier(column), value=value, where=self._where()),
                        key).rowcount
                if n:
                    return f"edited {column} of {self._label(key)}"
            except psycopg.Error as exc:
                if (exc.sqlstate or "").startswith("SC") or isinstance(exc, psycopg.OperationalError):
                    raise
            self.editable.remove((column, category, length))  # refused by a check or trigger: not again
        self._delete(key)
        return f"deleted {self._label(key)}"

    def _touch(self, key: tuple[str, ...]) -> None:
        """A captured write that leaves the row there: an edit, or a delete and the row put back."""
        if self._damage(key).startswith("deleted"):
            self._put_back(key)

    def _delete(self, key: tuple[str, ...]) -> None:
        self.bot.execute(sql.SQL("DELETE FROM {} AS t WHERE {}").format(self.copy_ident, self._where()), key)

    def _put_back(self, key: tuple[str, ...]) -> None:
        """Insert a sample row (as copied) into the copy."""
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        self.bot.execute(sql.SQL("INSERT INTO {c} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {stash} AS t "
                                 "WHERE {where}").format(c=self.copy_ident, cols=cols, stash=self.stash_ident,
                                                         where=self._where()), key)

    def _work(self, run: Run, fail_at: int | None = None) -> None:
        """The rerun check's automation: create each item in its own step; fail at item fail_at."""
        keys = [f"drill:item-{i}" for i in range(1, len(self.items) + 1)]
        run.plan(keys)
        for i, (key, item) in enumerate(zip(keys, self.items), 1):
            with run.step(key) as step:
                if step.skip:
                    continue
                self._put_back(item)
                self._refuse_live_writes()
                if i == fail_at:
                    raise _ItemFailure(f"item {i} failed on purpose (failure drill)")

    def _capture_problem(self) -> str:
        states = {t: self.live_sidecar.get(t) for t in SIDECAR_TRIGGERS[:3]}
        if not any(states.values()):
            return f"{self.table} is not tracked; run: sidecar track {self.table}"
        off = [t for t, s in states.items() if s in (None, "D")]
        if off:
            return (f"on {self.table}, trigger {', '.join(off)} is "
                    + ("disabled" if all(states[t] == "D" for t in off) else "missing or disabled")
                    + f"; run: sidecar track {self.table}")
        return "the capture triggers are in place, yet nothing was recorded"

    # -- afterwards -------------------------------------------------------------------
    def _teardown(self) -> str:
        if self.bot is not None and not self.bot.closed:
            self.bot.close()
        return self._drop()
