"""Upgrade: installing a newer sidecar over an older one keeps history and tracked tables working."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sidecar
import sidecar.capture.schema
from sidecar.capture import partitioning
from tests.fix_sidecar import snapshot, undo

V0_1 = Path(__file__).parent / "upgrade" / "v0_1"


def install_v0_1(conn):
    """What `sidecar install` of the first release left in a database."""
    with conn.transaction():
        conn.execute((V0_1 / "001_schema.sql").read_text())
        conn.execute("INSERT INTO sidecar.migrations (version, name) VALUES (1, '001_schema.sql')")
        for name in ("fn_capture.sql", "fn_gate.sql", "fn_runs.sql"):
            text = (V0_1 / name).read_text()
            conn.execute(text)
            conn.execute("INSERT INTO sidecar.definitions (file, sha256) VALUES (%s, %s)",
                         (name, hashlib.sha256(text.encode()).hexdigest()))
        conn.execute("INSERT INTO sidecar.templates (name, body) VALUES ('capture', %s)",
                     ((V0_1 / "capture.sql").read_text(),))


def _old_install_with_a_run(conn, make_conn):
    """sidecar 0.1 tracking tickets, and a finished run of a bot on it: (tickets before the run,
    the bot's open session, the run id)."""
    install_v0_1(conn)
    conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    conn.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 3) g")
    conn.execute("SELECT sidecar.track('tickets')")
    before = snapshot(conn, "tickets")
    bot = make_conn()
    old_run = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id <= 2")
    bot.execute("SELECT sidecar.finish_run()")
    return before, bot, old_run


def test_upgrade_keeps_history_and_undo_works(conn, make_conn):
    before, bot, old_run = _old_install_with_a_run(conn, make_conn)

    report = sidecar.capture.schema.install(conn)
    assert report.migrations and "001_schema.sql" not in report.migrations
    assert sidecar.capture.schema.installed_version(conn) >= 3
    assert not sidecar.capture.schema.install(conn).changed
    # History is partitioned by statement id now (migration 025): the old tables, not rewritten,
    # are the first partitions, holding the history from before the upgrade.
    assert report.partitioned == ["sidecar.statements", "sidecar.tickets_log_1"]
    for parent, first in (("statements", "statements_p0"), ("tickets_log_1", "tickets_log_1_p0")):
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass",
                            (f"sidecar.{parent}",)).fetchone()[0] == "p"
        assert conn.execute(f"SELECT count(*) FROM sidecar.{first}").fetchone()[0] > 0
    # History's BRIN index summarizes each block range once it is full, and its ranges are summarized.
    index = "sidecar.tickets_log_1_stmt_p0"
    assert conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (index,)).fetchone()[0] == [
        "autosummarize=on"]
    assert conn.execute("SELECT brin_summarize_new_values(%s::regclass)", (index,)).fetchone()[0] == 0

    # History captured before the upgrade undoes with the new code.
    undo(conn, old_run)
    assert snapshot(conn, "tickets") == before
    # Capture keeps working after the upgrade, in an already-open session too.
    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 3")
    assert conn.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (run.run_id,)).fetchone()[0] == 1
    undo(conn, run.run_id)
    assert snapshot(conn, "tickets") == before


def test_upgrade_that_cannot_lock_history_says_what_to_run(conn, make_conn, monkeypatch):
    """A writer holding history's lock through the conversion: the upgrade leaves the table as it
    was (capture goes on), and its warning holds the SQL that finishes the job by hand."""
    before, bot, old_run = _old_install_with_a_run(conn, make_conn)

    # Once install's own transaction is done, a long transaction of another automation writes
    # history and does not commit before the conversion wants its instant of lock.
    slow = make_conn(autocommit=False)
    convert = partitioning.convert_history

    def convert_while_a_writer_holds_history(c):
        slow.execute("SELECT sidecar.start_run('slow-bot')")
        slow.execute("UPDATE tickets SET status = 'slow' WHERE id = 3")
        return convert(c)

    monkeypatch.setattr(partitioning, "convert_history", convert_while_a_writer_holds_history)
    report = sidecar.capture.schema.install(conn)
    assert report.partitioned == []
    (statements_warning, log_warning) = [w for w in report.warnings if "not partitioned yet" in w]
    assert "sidecar.statements" in statements_warning and "sidecar.tickets_log_1" in log_warning
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'sidecar.statements'::regclass").fetchone() == ("r",)
    # Nothing is left half-done: no bound that would refuse writes.
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE '%p0_bound'").fetchone() == (0,)
    slow.commit()

    # The DBA runs the printed statements, one transaction each (autocommit here).
    for warning in (statements_warning, log_warning):
        for statement in warning.splitlines()[1:]:
            conn.execute(statement.strip())
    assert conn.execute("SELECT count(*) FROM sidecar._history_tables() WHERE NOT partitioned").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM sidecar.tickets_log_1_p0").fetchone()[0] == 6
    undo(conn, old_run)
    assert snapshot(conn, "tickets")[:2] == before[:2]
