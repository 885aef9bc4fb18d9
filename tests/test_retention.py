"""Retention: old history goes only when an operator asks, and never what is still needed."""

from __future__ import annotations

from psycopg import sql

from tests.fix_sidecar import track, undo


def make_runs(sc, run_bot):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 5) g")
    track(sc, "tickets")
    old = run_bot("UPDATE tickets SET status = 'old bot' WHERE id <= 2")
    sc.execute("UPDATE sidecar.runs SET started_at = now() - interval '100 days' WHERE run_id = %s", (old,))
    new = run_bot("UPDATE tickets SET status = 'new bot' WHERE id = 3")
    return old, new


def history_rows(sc):
    log = sc.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    return sc.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("sidecar", log))).fetchone()[0]


def test_purge_removes_only_old_history_and_keeps_the_story(sc, run_bot, cli):
    old, new = make_runs(sc, run_bot)
    assert history_rows(sc) == 6
    refused = cli("purge", "--before", "90d")
    assert refused.exit_code == 2 and "add --yes" in refused.output
    assert history_rows(sc) == 6

    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert "Purged 1 run" in result.output and "4 row images removed" in result.output
    assert history_rows(sc) == 2
    # The run and its event trail stay, marked purged; the newer run is untouched.
    assert sc.execute("SELECT purged_at IS NOT NULL FROM sidecar.runs WHERE run_id = %s", (old,)).fetchone()[0]
    assert sc.execute("SELECT count(*) FROM sidecar.events WHERE kind = 'purge'").fetchone()[0] == 1
    # A purged run can no longer be undone, and says why.
    out = cli("undo", str(old), "--yes")
    assert out.exit_code == 2 and "was purged" in out.output
    assert sc.execute("SELECT status FROM tickets WHERE id = 1").fetchone()[0] == "old bot"
    # The newer run still undoes.
    undo(sc, new)
    assert sc.execute("SELECT status FROM tickets WHERE id = 3").fetchone()[0] == "open"


def test_purge_keeps_runs_still_running_or_being_undone(sc, run_bot, make_conn, cli):
    old, _ = make_runs(sc, run_bot)
    # An undo of the old run in progress holds its lock.
    other = make_conn(autocommit=False)
    other.execute("SELECT pg_advisory_xact_lock(hashtext('sidecar.undo'), hashtext(%s))", (str(old),))
    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert "kept run " + str(old)[:8] in result.output
    assert history_rows(sc) == 6
    other.rollback()
    running = make_conn()
    run_id = running.execute("SELECT sidecar.start_run('slow-bot')").fetchone()[0]
    sc.execute("UPDATE sidecar.runs SET started_at = now() - interval '100 days' WHERE run_id = %s", (run_id,))
    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert "still running" in result.output
    assert history_rows(sc) == 2


def test_purge_keeps_a_run_whose_held_changes_still_wait(sc, run_bot, cli):
    """A held change is applied under its run when approved: the run's history must stay until
    nobody waits on it any more."""
    sc.execute("CREATE TABLE refunds (id int PRIMARY KEY, amount int)")
    track(sc, "refunds")
    result = cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--hold", "--reason", "refund over limit")
    assert result.exit_code == 0, result.output
    old, _ = make_runs(sc, run_bot)
    held_run = run_bot("UPDATE tickets SET status = 'held bot' WHERE id = 4",
                       "INSERT INTO refunds VALUES (1, 900)")
    sc.execute("UPDATE sidecar.runs SET started_at = now() - interval '100 days' WHERE run_id = %s", (held_run,))
    assert sc.execute("SELECT count(*) FROM sidecar.pending WHERE status = 'pending'").fetchone()[0] == 1

    result = cli("purge", "--before", "90d", "--yes")

    assert result.exit_code == 0, result.output
    assert f"kept run {str(held_run)[:8]}: held items wait for review" in result.output
    assert "Purged 1 run" in result.output
    assert sc.execute("SELECT purged_at IS NULL FROM sidecar.runs WHERE run_id = %s", (held_run,)).fetchone()[0]
    assert sc.execute("SELECT purged_at IS NOT NULL FROM sidecar.runs WHERE run_id = %s", (old,)).fetchone()[0]
    # Once decided, the run is purged like any other.
    pending_id = sc.execute("SELECT pending_id FROM sidecar.pending").fetchone()[0]
    assert cli("reject", str(pending_id), "--reason", "too much").exit_code == 0
    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert sc.execute("SELECT purged_at IS NOT NULL FROM sidecar.runs WHERE run_id = %s", (held_run,)).fetchone()[0]
