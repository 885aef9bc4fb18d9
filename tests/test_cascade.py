"""--cascade: a later run that wrote the same rows is undone first, in the same transaction."""

from __future__ import annotations

from tests.fix_sidecar import snapshot, track


def test_cascade_undoes_later_runs_newest_first(sc, run_bot, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text, owner text)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open', NULL), (2, 'open', NULL), (3, 'open', NULL)")
    track(sc, "tickets")
    before = snapshot(sc, "tickets")
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (1, 2)", automation="ticket-bot")
    second = run_bot("UPDATE tickets SET owner = 'crm' WHERE id = 1", automation="crm-sync")
    third = run_bot("UPDATE tickets SET owner = 'escalation' WHERE id = 1", automation="escalator")
    unrelated = run_bot("UPDATE tickets SET owner = 'other' WHERE id = 3", automation="other-bot")

    plain = cli("undo", str(first), "--preview")
    assert f"changed since by run {str(third)[:8]}" in plain.output

    preview = cli("undo", str(first), "--cascade", "--preview")
    assert preview.exit_code == 0, preview.output
    assert preview.output.index(f"Would undo run {third}") < preview.output.index(f"Would undo run {second}")
    assert "conflict:" not in preview.output and "0 conflicts" in preview.output
    assert str(unrelated) not in preview.output
    assert snapshot(sc, "tickets") != before  # a preview changes nothing

    done = cli("undo", str(first), "--cascade", "--yes", "--reason", "wrong bot config")
    assert done.exit_code == 0, done.output
    assert snapshot(sc, "tickets")[:2] == before[:2]
    assert sc.execute("SELECT owner FROM tickets WHERE id = 3").fetchone()[0] == "other"
    undone = {r[0] for r in sc.execute("SELECT run_id FROM sidecar.runs WHERE undone_by IS NOT NULL")}
    assert undone == {first, second, third}
    reasons = [r[0] for r in sc.execute("SELECT summary FROM sidecar.events WHERE kind = 'undo' ORDER BY event_id")]
    assert "cascade of the undo of run " + str(first)[:8] in reasons[0]


def test_cascade_is_for_whole_runs(sc, run_bot, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open')")
    track(sc, "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'x'")
    result = cli("undo", str(run_id), "--cascade", "--row", "tickets:1", "--yes")
    assert result.exit_code == 2 and "--cascade undoes whole runs" in result.output
