"""Archive, purge, restore, undo: old history leaves the database and comes back readable and undoable."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.fix_sidecar import snapshot, track


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL, data jsonb, raw bytea, "
               "due tstzrange)")
    sc.execute("INSERT INTO tickets SELECT g, 'open', jsonb_build_object('n', g), '\\x00ff', "
               "tstzrange('2026-01-01', '2026-02-01') FROM generate_series(1, 5) g")
    track(sc, "tickets")
    return sc


def test_archive_purge_restore_then_undo_round_trips(tickets, run_bot, cli, tmp_path):
    before = snapshot(tickets, "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'closed', data = data || '{\"bot\": true}', raw = '\\x01' "
                     "WHERE id <= 3", "DELETE FROM tickets WHERE id = 5",
                     "INSERT INTO tickets VALUES (6, 'new', '[1, 2]', NULL, 'empty')")
    shown_before = cli("show", str(run_id))
    assert shown_before.exit_code == 0

    archived = cli("archive", "--before", "0m", "--to", str(tmp_path))
    assert archived.exit_code == 0, archived.output
    assert "Archived 1 run (8 row images)" in archived.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = manifest["runs"]
    assert entry["run_id"] == str(run_id) and entry["rows"]["table:public.tickets"] == 8 and len(entry["sha256"]) == 64

    purged = cli("purge", "--before", "0m", "--yes")
    assert purged.exit_code == 0, purged.output
    assert tickets.execute("SELECT count(*) FROM sidecar.statements").fetchone() == (0,)
    assert "purged" in cli("show", str(run_id)).output

    restored = cli("archive", "restore", str(tmp_path / entry["file"]))
    assert restored.exit_code == 0, restored.output
    assert f"Restored run {run_id}: 3 statements, 8 row images" in restored.output
    shown_after = cli("show", str(run_id)).output
    assert shown_after.startswith(shown_before.output.rstrip("\n"))
    assert "history restored from the archive file" in shown_after

    undone = cli("undo", str(run_id), "--yes")
    assert undone.exit_code == 0, undone.output
    assert snapshot(tickets, "tickets") == before


def test_the_models_context_comes_back_with_the_images(tickets, bot, cli, tmp_path):
    import sidecar

    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("close:1", why="the customer confirmed", read=["email: all good now"], confidence=0.8):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
    context = "SELECT context->>'why' FROM sidecar.actions WHERE run_id = %s"
    assert cli("archive", "--before", "0m", "--to", str(tmp_path)).exit_code == 0
    assert cli("purge", "--before", "0m", "--yes").exit_code == 0
    assert tickets.execute(context, (run.run_id,)).fetchone() == (None,)
    assert cli("archive", "restore", str(tmp_path / f"run-{run.run_id}.jsonl.gz")).exit_code == 0
    assert tickets.execute(context, (run.run_id,)).fetchone() == ("the customer confirmed",)


def test_archive_changes_nothing_and_skips_running_runs(tickets, bot, run_bot, cli, tmp_path):
    run_bot("UPDATE tickets SET status = 'closed' WHERE id = 1")
    bot.execute("SELECT sidecar.start_run('slow-bot')")
    bot.execute("UPDATE tickets SET status = 'pending' WHERE id = 2")
    counts = tickets.execute("SELECT (SELECT count(*) FROM sidecar.statements), (SELECT count(*) FROM sidecar.runs "
                             "WHERE purged_at IS NULL)").fetchone()
    result = cli("archive", "--before", "0m", "--to", str(tmp_path / "a"), "--json")
    assert result.exit_code == 0, result.output
    assert [r["automation"] for r in json.loads(result.output)["archive"]["runs"]] == ["ticket-bot"]
    assert tickets.execute("SELECT (SELECT count(*) FROM sidecar.statements), (SELECT count(*) FROM sidecar.runs "
                           "WHERE purged_at IS NULL)").fetchone() == counts


def test_a_changed_or_cut_file_is_refused_and_nothing_is_restored(tickets, run_bot, cli, tmp_path):
    run_id = run_bot("UPDATE tickets SET status = 'closed' WHERE id = 1")
    assert cli("archive", "--before", "0m", "--to", str(tmp_path)).exit_code == 0
    file = tmp_path / f"run-{run_id}.jsonl.gz"
    assert cli("purge", "--before", "0m", "--yes").exit_code == 0

    original = file.read_bytes()
    lines = gzip.decompress(original).decode().splitlines()
    file.write_bytes(gzip.compress(("\n".join(lines[:-2] + lines[-1:]) + "\n").encode()))
    tampered = cli("archive", "restore", str(file))
    assert tampered.exit_code == 1 and "does not match the checksum in its manifest" in tampered.output
    (tmp_path / "manifest.json").unlink()
    cut = cli("archive", "restore", str(file))
    assert cut.exit_code == 2 and "cut short" in cut.output
    assert tickets.execute("SELECT count(*) FROM sidecar.statements").fetchone() == (0,)

    file.write_bytes(original)
    assert cli("archive", "restore", str(file)).exit_code == 0
    again = cli("archive", "restore", str(file))
    assert again.exit_code == 2 and "still has its history here" in again.output


def test_bad_arguments_are_one_line(sc, cli, tmp_path):
    missing = cli("archive", "--to", str(tmp_path))
    assert missing.exit_code == 2 and "needs --before WHEN and --to DIR" in missing.output
    not_there = cli("archive", "restore", str(tmp_path / "nope.jsonl.gz"))
    assert not_there.exit_code == 2 and "no archive file" in not_there.output
    (tmp_path / "f").write_text("x")
    on_file = cli("archive", "--before", "1d", "--to", str(tmp_path / "f"))
    assert on_file.exit_code == 2 and "is a file; name a directory" in on_file.output
