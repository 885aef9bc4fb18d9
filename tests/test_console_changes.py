"""The run page's changes and per-action counts (sidecar/console/changes.py), read by statement id
lists (issue 25) and, past STATEMENTS_LISTED statements, by looking each image's statement up."""

from __future__ import annotations

import pytest

import sidecar.console.changes as changes
from tests.fix_sidecar import track


@pytest.mark.parametrize("listed", [changes.STATEMENTS_LISTED, 0])
def test_changes_and_action_counts_of_inserts_updates_and_deletes(sc, run_bot, monkeypatch, listed):
    monkeypatch.setattr(changes, "STATEMENTS_LISTED", listed)
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 5) g")
    sc.execute("INSERT INTO notes VALUES (1, 'a'), (2, 'b')")
    track(sc, "tickets", "notes")
    other = run_bot("UPDATE tickets SET status = 'other' WHERE id = 5", automation="other-bot")
    run = run_bot(
        "UPDATE tickets SET status = 'done' WHERE id IN (1, 2)",
        "DELETE FROM tickets WHERE id = 3",
        "INSERT INTO notes VALUES (3, 'c'), (4, 'd'), (5, 'e')",
        "DELETE FROM notes WHERE id IN (1, 2)",
    )
    assert other != run

    rows, total, more = changes.actions(sc, run)
    assert [r.rows for r in rows] == [2, 1, 3, 2] and (total, more) == (4, False)
    assert changes.count(sc, run) == (8, False)
    shown = changes.page(sc, run, limit=50)
    assert [(c.table, c.op, c.key["id"]) for c in shown] == [
        ("public.tickets", "U", 1), ("public.tickets", "U", 2), ("public.tickets", "D", 3),
        ("public.notes", "I", 3), ("public.notes", "I", 4), ("public.notes", "I", 5),
        ("public.notes", "D", 1), ("public.notes", "D", 2)]
    assert shown[0].before["status"] == "open" and shown[0].after["status"] == "done"
    assert shown[2].before["status"] == "open" and shown[2].after is None
    assert [c.key["id"] for c in changes.page(sc, run, offset=3, limit=3)] == [3, 4, 5]

    deletes = changes.action_id_of(sc, run, rows[1].key)
    assert changes.count(sc, run, deletes) == (1, False)
    assert [(c.op, c.key["id"]) for c in changes.page(sc, run, action_id=deletes)] == [("D", 3)]
