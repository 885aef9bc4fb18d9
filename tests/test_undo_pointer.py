"""An undo that mirrors one statement points at its images instead of capturing its restore.

The story: a bot rewrites a whole table in one statement; the operator undoes
it. The undo is recorded (a run, undo_of the bot's), shown, undoable in turn
and kept by retention, but its restore is not captured row by row: its
statement reads the bot's images with before and after swapped (docs/undo.md).
"""

import json

import pytest

import sidecar.undo.plan
from tests.fix_sidecar import snapshot, track, undo

MODES = ["statement", "row"]


@pytest.fixture(params=MODES)
def prices(request, sc, monkeypatch):
    # Points only where the undo locks the table (past ROW_LOCKS_MAX rows): these runs are small.
    monkeypatch.setattr(sidecar.undo.plan, "ROW_LOCKS_MAX", 10)
    sc.execute("CREATE TABLE prices (id int PRIMARY KEY, sku text NOT NULL, amount numeric NOT NULL)")
    sc.execute("INSERT INTO prices SELECT g, 'sku-' || g, g * 10 FROM generate_series(1, 50) g")
    track(sc, "prices", capture_mode=request.param)
    return sc


def _undo_statements(conn, run_id):
    return conn.execute(
        "SELECT s.op, s.images_of, s.images_swapped, o.run_id FROM sidecar.statements s "
        "LEFT JOIN sidecar.statements o ON o.stmt_id = s.images_of WHERE s.run_id = %s ORDER BY s.stmt_id",
        (run_id,)).fetchall()


def _own_images(conn, run_id):
    """History rows written under the run's own statements (a captured restore has them)."""
    log = conn.execute("SELECT log_table FROM sidecar.tracked WHERE relid = 'prices'::regclass").fetchone()[0]
    return conn.execute(
        f'SELECT count(*) FROM sidecar."{log}" l JOIN sidecar.statements s ON s.stmt_id = l._stmt '
        "WHERE s.run_id = %s", (run_id,)).fetchone()[0]


def _undo_run(conn, run_id):
    return conn.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0]


def test_undo_of_one_bulk_update_points_at_its_images_and_undoes_in_turn(prices, run_bot, cli):
    before = snapshot(prices, "prices", "id")
    run_id = run_bot("UPDATE prices SET amount = amount * 2")
    after = snapshot(prices, "prices", "id")
    stmt = prices.execute("SELECT stmt_id FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()[0]

    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    assert snapshot(prices, "prices", "id") == before
    undo_id = _undo_run(prices, run_id)
    assert _undo_statements(prices, undo_id) == [("U", stmt, True, run_id)]
    assert _own_images(prices, undo_id) == 0

    # show reads the bot's images the other way round: from its after to its before.
    shown = json.loads(cli("show", str(undo_id), "--json").output)
    changes = [c for a in shown["actions"] for c in a["changes"]]
    assert len(changes) == 50
    first = next(c for c in changes if c["key"] == {"id": 7})
    assert (first["op"], first["before"]["amount"], first["after"]["amount"]) == ("U", 140, 70)
    assert prices.execute("SELECT counts FROM sidecar.run_rows(%s, 1000)", (undo_id,)).fetchone()[0] == {
        "public.prices": 50}

    # The undo of the undo puts the bot's writes back, and points at the same images, not swapped.
    result = cli("undo", str(undo_id), "--yes")
    assert result.exit_code == 0, result.output
    assert snapshot(prices, "prices", "id") == after
    redo_id = _undo_run(prices, undo_id)
    assert _undo_statements(prices, redo_id) == [("U", stmt, False, run_id)]
    shown = json.loads(cli("show", str(redo_id), "--json").output)
    first = next(c for a in shown["actions"] for c in a["changes"] if c["key"] == {"id": 7})
    assert (first["before"]["amount"], first["after"]["amount"]) == (70, 140)

    # And once more: back to before the bot.
    assert cli("undo", str(redo_id), "--yes").exit_code == 0
    assert snapshot(prices, "prices", "id") == before


@pytest.mark.parametrize("write, op", [
    ("INSERT INTO prices SELECT g, 'new-' || g, 1 FROM generate_series(100, 120) g", "D"),
    ("DELETE FROM prices WHERE id > 30", "I"),
])
def test_undo_of_an_insert_or_a_delete_points_at_its_images(prices, run_bot, write, op):
    before = snapshot(prices, "prices", "id")
    run_id = run_bot(write)
    after = snapshot(prices, "prices", "id")
    first = undo(prices, run_id)
    assert snapshot(prices, "prices", "id") == before
    assert [s[0] for s in _undo_statements(prices, first.undo_run_id)] == [op]
    assert _own_images(prices, first.undo_run_id) == 0
    undo(prices, first.undo_run_id)
    assert snapshot(prices, "prices", "id") == after


def test_a_small_undo_locks_rows_and_is_captured(prices, run_bot, monkeypatch):
    monkeypatch.setattr(sidecar.undo.plan, "ROW_LOCKS_MAX", 10_000)
    before = snapshot(prices, "prices", "id")
    run_id = run_bot("UPDATE prices SET amount = amount * 2")
    first = undo(prices, run_id)
    assert snapshot(prices, "prices", "id") == before
    assert [s[1] for s in _undo_statements(prices, first.undo_run_id)] == [None]
    assert _own_images(prices, first.undo_run_id) == 100


def test_a_later_edit_is_kept_and_reported_and_the_undo_is_captured(prices, run_bot, cli):
    run_id = run_bot("UPDATE prices SET amount = amount * 2")
    prices.execute("UPDATE prices SET amount = 1 WHERE id = 7")  # a person's edit since

    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 3, result.output
    assert "id 7" in result.output or "7" in result.output
    assert prices.execute("SELECT amount FROM prices WHERE id = 7").fetchone()[0] == 1
    assert prices.execute("SELECT amount FROM prices WHERE id = 8").fetchone()[0] == 80
    # Not a mirror of the bot's statement: the restore was captured as before.
    undo_id = _undo_run(prices, run_id)
    assert [s[1] for s in _undo_statements(prices, undo_id)] == [None]
    assert _own_images(prices, undo_id) == 98


def test_purging_the_run_keeps_the_images_its_undo_points_at(prices, run_bot, cli):
    before = snapshot(prices, "prices", "id")
    run_id = run_bot("UPDATE prices SET amount = amount + 1")
    after = snapshot(prices, "prices", "id")
    assert cli("undo", str(run_id), "--yes").exit_code == 0
    undo_id = _undo_run(prices, run_id)

    assert prices.execute("SELECT sidecar._purge_run(%s)", (run_id,)).fetchone()[0] == 0
    shown = json.loads(cli("show", str(undo_id), "--json").output)
    assert sum(len(a["changes"]) for a in shown["actions"]) == 50
    assert cli("undo", str(undo_id), "--yes").exit_code == 0
    assert snapshot(prices, "prices", "id") == after
    redo_id = _undo_run(prices, undo_id)

    # Purged in turn, the undos take the images with them once nothing points at them.
    assert prices.execute("SELECT sidecar._purge_run(%s)", (undo_id,)).fetchone()[0] == 0
    log = prices.execute("SELECT log_table FROM sidecar.tracked WHERE relid = 'prices'::regclass").fetchone()[0]
    assert prices.execute(f'SELECT count(*) FROM sidecar."{log}"').fetchone()[0] == 100
    assert prices.execute("SELECT sidecar._purge_run(%s)", (redo_id,)).fetchone()[0] == 100
    assert prices.execute(f'SELECT count(*) FROM sidecar."{log}"').fetchone()[0] == 0
    assert before != after


def test_the_console_pages_through_an_undo_that_points_at_images(prices, run_bot):
    import sidecar.console.changes

    run_id = run_bot("UPDATE prices SET amount = amount * 3")
    first = undo(prices, run_id)
    total, more = sidecar.console.changes.count(prices, first.undo_run_id)
    assert (total, more) == (50, False)
    pages = [sidecar.console.changes.page(prices, first.undo_run_id, offset=o, limit=10) for o in range(0, 50, 10)]
    assert sorted(c.key["id"] for page in pages for c in page) == list(range(1, 51))
    assert all(c.op == "U" and c.before["amount"] == 3 * c.after["amount"] for page in pages for c in page)
    rows = sidecar.console.changes.actions(prices, first.undo_run_id)[0]
    assert sum(r.rows for r in rows) == 50


def test_an_archived_undo_carries_the_images_it_points_at(prices, run_bot, cli, tmp_path):
    import datetime

    import sidecar.ops.archive

    run_id = run_bot("UPDATE prices SET amount = amount * 2")
    after = snapshot(prices, "prices", "id")
    undo_id = undo(prices, run_id).undo_run_id
    before = snapshot(prices, "prices", "id")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    sidecar.ops.archive.archive(prices, later, tmp_path)
    # Both purged: the images the undo pointed at go with the undo.
    for run in (run_id, undo_id):
        prices.execute("SELECT sidecar._purge_run(%s)", (run,))
    assert _own_images(prices, undo_id) == 0

    sidecar.ops.archive.restore(prices, tmp_path / f"run-{undo_id}.jsonl.gz")

    # The file held the images as the undo's own: shown and undone with no other run's history.
    assert [s[1] for s in _undo_statements(prices, undo_id)] == [None]
    assert _own_images(prices, undo_id) == 100
    shown = json.loads(cli("show", str(undo_id), "--json").output)
    first = next(c for a in shown["actions"] for c in a["changes"] if c["key"] == {"id": 7})
    assert (first["before"]["amount"], first["after"]["amount"]) == (140, 70)
    assert cli("undo", str(undo_id), "--yes").exit_code == 0
    assert snapshot(prices, "prices", "id") == after != before
