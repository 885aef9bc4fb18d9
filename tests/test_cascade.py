"""--cascade: a later run that wrote the same rows is undone first, in the same transaction."""

from __future__ import annotations

from sidecar.undo import cascade
from sidecar.undo.cascade import dependents
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


def _tickets(sc, n: int = 3) -> None:
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text, owner text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open', NULL FROM generate_series(1, %s) g", (n,))
    track(sc, "tickets")


def test_later_writers_are_found_through_a_persons_edit_a_same_value_write_and_a_reinsert(sc, bot, run_bot):
    """Issue 25: only rows not now as the run left it are searched; each is followed back from its
    newest writer. A row rewritten with the same values, deleted by the run and put back, or
    changed by a person in between, still leads to the later runs that wrote it."""
    _tickets(sc, 5)
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (1, 2)", "DELETE FROM tickets WHERE id = 3")
    # Row 1 gets the values it has (a bulk UPDATE keeps such rows in history).
    same = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (1, 4)", automation="same-values")
    sc.execute("UPDATE tickets SET owner = 'a person' WHERE id = 2")  # untagged: no run
    after_person = run_bot("UPDATE tickets SET status = 'escalated' WHERE id = 2", automation="escalator")
    back = run_bot("INSERT INTO tickets VALUES (3, 'reopened', NULL)", automation="reopener")
    untouched = run_bot("UPDATE tickets SET owner = 'x' WHERE id = 5", automation="other-bot")
    found = set(dependents(sc, first))
    if sc.execute("SELECT capture_mode FROM sidecar.tracked").fetchone()[0] == "statement":
        assert found == {same, after_person, back}
    else:
        # Row mode keeps no image of a row an UPDATE left as it was (the row triggers' WHEN
        # OLD *<> NEW): history holds no write of row 1 by the same-values run, so row 1 (its xmin
        # new) is searched back to the run like a row only a person changed, and that run is not
        # named through it (it changed row 4 alone, which the first run never wrote).
        assert found == {after_person, back}
        assert sc.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (same,)).fetchone()[0] == 1
    assert untouched not in found


def test_a_later_run_in_the_runs_own_transaction_is_found(sc, bot):
    """Its write leaves the row with the run's transaction id (xmin): the row's values tell it."""
    _tickets(sc)
    with bot.transaction():
        first = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
        bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 1")
        bot.execute("SELECT sidecar.finish_run()")
        second = bot.execute("SELECT sidecar.start_run('crm-sync')").fetchone()[0]
        bot.execute("UPDATE tickets SET owner = 'crm' WHERE id = 1")
        bot.execute("SELECT sidecar.finish_run()")
    assert dependents(sc, first) == [second]


def test_the_search_stops_at_the_writer_that_found_the_row_as_the_run_left_it(sc, run_bot, monkeypatch):
    """Issue 25: history between the run and its later writer is not read; one window of the newest
    statement ids is."""
    _tickets(sc, 200)
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 1")
    run_bot(*[f"UPDATE tickets SET owner = 'o{i}' WHERE id = {i}" for i in range(2, 200)], automation="busy-bot")
    later = run_bot("UPDATE tickets SET owner = 'crm' WHERE id = 1", automation="crm-sync")
    monkeypatch.setattr(cascade, "FIRST_WINDOW", 4)
    windows = []
    real = cascade._read_window
    monkeypatch.setattr(cascade, "_read_window", lambda *a: windows.append(a[-2:]) or real(*a))
    assert dependents(sc, first) == [later]
    assert len(windows) == 1


def test_a_run_that_wrote_a_row_between_two_writes_of_the_run_is_found(sc, bot, make_conn):
    """The row is as the run left it (its last write is the run's), so it is not searched: the other
    run's write among the run's own statements names it."""
    _tickets(sc)
    other_conn = make_conn()
    first = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 1")
    between = other_conn.execute("SELECT sidecar.start_run('crm-sync')").fetchone()[0]
    other_conn.execute("UPDATE tickets SET owner = 'crm' WHERE id = 1")
    other_conn.execute("SELECT sidecar.finish_run()")
    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
    bot.execute("SELECT sidecar.finish_run()")
    assert dependents(sc, first) == [between]
