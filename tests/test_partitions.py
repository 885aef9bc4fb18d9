"""Partitioned history (issue 25): partitions made ahead by capture and commands, a write never
fails for want of one, purge drops whole partitions and deletes row by row only at the edges."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from tests.fix_sidecar import snapshot, track, undo

WIDTH = 100


def small_partitions(sc) -> int:
    """Partitions of WIDTH statement ids from the next id on; returns that id."""
    hi = sc.execute("SELECT max(hi) FROM sidecar._partition_bounds('sidecar.statements')").fetchone()[0]
    sc.execute("SELECT setval('sidecar.stmt_seq', %s)", (hi - 1,))
    sc.execute("UPDATE sidecar.partitioning SET width = %s", (WIDTH,))
    sc.execute("SELECT sidecar._partitions_ahead()")
    return hi


def partitions(sc, table: str) -> dict[int, str]:
    """The range partitions of a history table by lower bound (the first, from MINVALUE, left out)."""
    return {lo: part for part, lo, _ in sc.execute(
        "SELECT part::text, lo, hi FROM sidecar._partition_bounds(%s::regclass) WHERE lo IS NOT NULL",
        (table,)).fetchall()}


def exists(sc, name: str) -> bool:
    return sc.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def in_default(sc, table: str) -> int:
    return sc.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier("sidecar", f"{table}_pdefault"))).fetchone()[0]


@pytest.fixture
def counters(sc):
    sc.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
    sc.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g")
    # Statement mode: its capture makes partitions when due. A row-mode session looks when it
    # first writes for a run (test_row_mode_runs_make_partitions_ahead_at_their_start).
    track(sc, "counters", capture_mode="statement")
    return sc


def bumps(count: int, id_: int = 1) -> list[str]:
    """COUNT statements, each its own transaction (run_bot): COUNT statement ids."""
    return [f"UPDATE counters SET n = n + 1 WHERE id = {id_}"] * count


def test_capture_makes_partitions_ahead_and_nothing_lands_in_the_default(counters, run_bot):
    first = small_partitions(counters)
    assert sorted(partitions(counters, "sidecar.counters_log_1"))[-2:] == [first, first + WIDTH]
    run_bot(*bumps(450))  # one run, 450 transactions: only its tagged writes make partitions
    last = counters.execute("SELECT last_value FROM sidecar.stmt_seq").fetchone()[0]
    assert last == first + 449
    for table in ("sidecar.statements", "sidecar.counters_log_1"):
        made = partitions(counters, table)
        # Every range the run wrote has its partition, and one more waits beyond the sequence
        # (capture makes them when only one is left; start_run and commands keep two).
        assert {first + k * WIDTH for k in range(6)} <= set(made)
        assert max(made) + WIDTH > last + WIDTH
    assert in_default(counters, "statements") == 0 and in_default(counters, "counters_log_1") == 0
    # The images of each statement are in its range's partition.
    per_statement = counters.execute("SELECT count(*) FROM sidecar.counters_log_1").fetchone()[0] // 450
    assert counters.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE _stmt >= %s AND _stmt < %s").format(
            sql.Identifier("sidecar", f"counters_log_1_p{first + 3 * WIDTH}")), (first + 3 * WIDTH, first + 4 * WIDTH)
    ).fetchone()[0] == per_statement * WIDTH


def test_row_mode_runs_make_partitions_ahead_at_their_start(sc, run_bot):
    sc.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
    sc.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g")
    track(sc, "counters", capture_mode="row")
    first = small_partitions(sc)
    for _ in range(5):
        run_bot(*bumps(90))
    # Each start_run looked ahead: the last one, at first + 359, made partitions up to first + 600.
    assert set(partitions(sc, "sidecar.statements")) >= {first + k * WIDTH for k in range(6)}
    assert in_default(sc, "statements") == 0 and in_default(sc, "counters_log_1") == 0


def test_a_write_never_fails_for_want_of_a_partition(counters, run_bot, cli):
    first = small_partitions(counters)
    before = snapshot(counters, "counters")
    # Nothing makes partitions (as if every attempt failed): the writes go to the DEFAULT partition.
    counters.execute("UPDATE sidecar.partitioning SET refill_at = 9223372036854775807")
    run_id = run_bot(*bumps(350), *bumps(5, id_=2))
    assert in_default(counters, "statements") > 0 and in_default(counters, "counters_log_1") > 0
    # The next command makes partitions again, clear of the ids the DEFAULT partition holds.
    assert cli("status").exit_code == 0
    last = counters.execute("SELECT last_value FROM sidecar.stmt_seq").fetchone()[0]
    assert max(partitions(counters, "sidecar.statements")) > last
    assert max(partitions(counters, "sidecar.counters_log_1")) > last
    assert first + 2 * WIDTH not in partitions(counters, "sidecar.statements")
    # History in the DEFAULT partition reads and undoes like any other.
    undo(counters, run_id)
    assert snapshot(counters, "counters") == before


def age(sc, run_id, days: int = 100) -> None:
    sc.execute("UPDATE sidecar.runs SET started_at = now() - make_interval(days => %s) WHERE run_id = %s",
               (days, run_id))


def test_purge_drops_whole_partitions_and_deletes_row_by_row_only_at_the_edges(counters, run_bot, cli):
    first = small_partitions(counters)
    old1 = run_bot(*bumps(120))           # ids first .. first+119: partition 0, part of 1
    old2 = run_bot(*bumps(150, id_=2))    # first+120 .. first+269: rest of 1, part of 2
    new = run_bot(*bumps(50, id_=3))      # first+270 .. first+319: rest of 2, part of 3
    age(counters, old1)
    age(counters, old2)
    parts = [f"{t}_p{first + k * WIDTH}" for t in ("sidecar.statements", "sidecar.counters_log_1") for k in (0, 1, 2)]
    assert all(exists(counters, p) for p in parts)

    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert "Purged 2 runs" in result.output and "history partitions dropped whole" in result.output
    assert f"{2 * 270} row images removed" in result.output
    # The two ranges only old runs wrote are gone, files and all: no row was deleted there.
    for k in (0, 1):
        assert not exists(counters, f"sidecar.statements_p{first + k * WIDTH}")
        assert not exists(counters, f"sidecar.counters_log_1_p{first + k * WIDTH}")
    # The range old2 shares with the new run stays; old2's rows there were deleted one by one.
    assert exists(counters, f"sidecar.statements_p{first + 2 * WIDTH}")
    edge = counters.execute(
        "SELECT run_id, count(*) FROM sidecar.statements GROUP BY run_id").fetchall()
    assert edge == [(new, 50)]
    assert counters.execute("SELECT count(*) FROM sidecar.counters_log_1").fetchone()[0] == 100
    deleted = counters.execute(
        "SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = %s::regclass",
        (f"sidecar.statements_p{first + 2 * WIDTH}",)).fetchone()[0]
    assert deleted in (0, 70)  # old2's 70 statements there (0: the statistics are not reported yet)
    for run_id in (old1, old2):
        assert counters.execute("SELECT purged_at IS NOT NULL FROM sidecar.runs WHERE run_id = %s",
                                (run_id,)).fetchone()[0]
    # The new run, at the edge, is whole and undoes.
    undo(counters, new)
    assert counters.execute("SELECT n FROM counters WHERE id = 3").fetchone()[0] == 0


def test_purge_keeps_a_partition_with_a_run_it_must_keep(counters, run_bot, make_conn, cli):
    first = small_partitions(counters)
    other = make_conn(application_name="slow-bot")
    slow = other.execute("SELECT sidecar.start_run('slow-bot')").fetchone()[0]
    other.execute("UPDATE counters SET n = 100 WHERE id = 9")  # still running, in partition 0
    old = run_bot(*bumps(250))  # to first + 250: partition 1 holds only its statements
    age(counters, old)
    age(counters, slow)
    run_bot(*bumps(60, id_=3))
    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    assert f"run {str(slow)[:8]} is still running" in result.output
    assert exists(counters, f"sidecar.statements_p{first}")       # kept for the running run
    assert not exists(counters, f"sidecar.statements_p{first + WIDTH}")  # only the old run
    assert counters.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (old,)).fetchone()[0] == 0
    assert counters.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (slow,)).fetchone()[0] == 1


def test_archive_purge_by_partition_restore_then_undo(counters, run_bot, cli, tmp_path):
    first = small_partitions(counters)
    before = snapshot(counters, "counters")
    old = run_bot(*bumps(130), "DELETE FROM counters WHERE id = 7")
    age(counters, old)
    run_bot(*bumps(80, id_=3))
    assert cli("archive", "--before", "90d", "--to", str(tmp_path)).exit_code == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = manifest["runs"]
    purged = cli("purge", "--before", "90d", "--yes")
    assert purged.exit_code == 0, purged.output
    assert not exists(counters, f"sidecar.statements_p{first}")
    restored = cli("archive", "restore", str(tmp_path / entry["file"]))
    assert restored.exit_code == 0, restored.output
    assert "131 statements, 261 row images" in restored.output
    undone = cli("undo", str(old), "--yes")
    assert undone.exit_code == 0, undone.output
    # Everything is back as before the old run; counter 3 keeps the later run's bumps.
    assert snapshot(counters, "counters") == [("(3,80)" if row == "(3,0)" else row) for row in before]


def test_a_run_across_partitions_reads_each_change_once(counters, run_bot):
    """Readers that find an image again by its ctid do so with its partition: a ctid alone names a
    row in every partition (show's per-action listing, the console's pages)."""
    from sidecar.capture import history
    from sidecar.console import changes as console_changes

    small_partitions(counters)
    # Each statement writes the same rows in the same order, so their images sit at the same ctids
    # in the two partitions the run spans.
    run_id = run_bot(*[f"UPDATE counters SET n = n + 1 WHERE id BETWEEN 1 AND 3 /* {i} */" for i in range(150)])
    listed = list(history.changes(counters, run_id, per_action=3))
    assert len(listed) == 150 * 3
    assert len({(c.stmt_id, c.key["id"]) for c in listed}) == 150 * 3
    page = console_changes.page(counters, run_id, offset=0, limit=1000)
    assert sorted((c.stmt_id, c.key["id"]) for c in page) == sorted((c.stmt_id, c.key["id"]) for c in listed)
    assert all(c.after["n"] == c.before["n"] + 1 for c in page)


def test_purge_keeps_images_a_later_undo_points_at(counters, run_bot, cli, monkeypatch):
    # A big undo points at the run's images instead of capturing its restore (docs/undo.md); these
    # runs are small, so "big" is lowered to 5 rows.
    import sidecar.undo.plan

    monkeypatch.setattr(sidecar.undo.plan, "ROW_LOCKS_MAX", 5)
    first = small_partitions(counters)
    old = run_bot("UPDATE counters SET n = n + 5 WHERE id <= 8")  # one statement, id first
    filler = run_bot(*bumps(150, id_=9))                           # first+1 .. first+150
    result = cli("undo", str(old), "--yes")
    assert result.exit_code == 0, result.output
    undo_run, images_of = counters.execute(
        "SELECT s.run_id, s.images_of FROM sidecar.runs r JOIN sidecar.statements s ON s.run_id = r.undone_by "
        "WHERE r.run_id = %s", (old,)).fetchone()
    assert images_of == first  # the undo, in a later range, reads the old run's images
    age(counters, old)
    age(counters, filler)

    result = cli("purge", "--before", "90d", "--yes")
    assert result.exit_code == 0, result.output
    # The first range holds only purgeable runs, but the undo reads its images: it stays.
    assert "an undo of a later range reads its images" in result.output
    assert exists(counters, f"sidecar.counters_log_1_p{first}")
    # ... so the undo can still be undone: the old run's writes come back.
    undo(counters, undo_run)
    assert counters.execute("SELECT sum(n) FROM counters WHERE id <= 8").fetchone()[0] == 40
