"""Several writers, undos and pauses on the same rows at once, for a bounded time.

Checks, from the database's own records afterwards:
- every committed tagged write has its capture (no change lost);
- no undo overwrote a row written after it planned: the before-image an undo
  captured for each row it restored is exactly what the undone run left there;
- errors the writers and operators meet are the handled kinds (pause refusals,
  deadlocks between the writers themselves, undo refusals said in words), nothing else:
  every error is collected and checked, none is swallowed;
- two undos of runs that changed the same rows, started at the same instant, again and
  again: each either restores or refuses in words, and neither overwrites the other.

It prints its figures (writers, seconds, captured rows checked, undos, pauses, lost
captures, rows overwritten): `python -m pytest tests/test_soak.py` shows them.
"""

from __future__ import annotations

import random
import re
import threading
import time

import psycopg
import pytest
from psycopg import sql

import sidecar
import sidecar.review.gate
import sidecar.undo.restore
from sidecar.errors import SidecarError
from tests.fix_sidecar import track

ROWS = 40
SECONDS = 6
HANDLED = {"SC001", "40P01", "40001", "55P03"}  # paused, deadlock, serialization, lock timeout
# What an undo may answer, in words, when another undo or a writer got there first.
REFUSALS = re.compile(r"was already undone by run|undo gave up waiting|rows of the run traded values"
                      r"|is being undone|changed since")


@pytest.fixture
def board(sc):
    sc.execute("CREATE TABLE board (id int PRIMARY KEY, val int NOT NULL, who text)")
    sc.execute("INSERT INTO board SELECT g, 0, 'seed' FROM generate_series(1, %s) g", (ROWS,))
    track(sc, "board")
    return sc


def test_soak_writers_undo_and_pause(board, make_conn, capsys):
    stop = time.monotonic() + SECONDS
    committed: list[tuple[int, str]] = []  # (txid, run id) of committed tagged writes
    unexpected: list[BaseException] = []
    refused: list[str] = []  # undo refusals said in words, each checked below
    counts = {"pauses": 0, "undos": 0, "raced pairs": 0}
    lock = threading.Lock()

    def undo_one(conn, run_id: str) -> None:
        try:
            scope = sidecar.undo.restore.make_scope(conn, run_id)
            sidecar.undo.restore.undo(conn, scope, lock_timeout="2s")
            with lock:
                counts["undos"] += 1
        except SidecarError as exc:
            with lock:
                refused.append(str(exc))
        except psycopg.Error as exc:
            if exc.sqlstate not in HANDLED:
                unexpected.append(exc)

    def writer(name: str, tagged: bool, seed: int):
        rnd = random.Random(seed)
        conn = make_conn(application_name=name)
        while time.monotonic() < stop:
            try:
                if tagged:
                    with sidecar.Run(conn, name) as run:
                        for _ in range(rnd.randint(1, 4)):
                            with conn.transaction():
                                ids = sorted(rnd.sample(range(1, ROWS + 1), rnd.randint(1, 3)))
                                for i in ids:
                                    conn.execute("UPDATE board SET val = val + 1, who = %s WHERE id = %s", (name, i))
                                txid = conn.execute("SELECT txid_current()").fetchone()[0]
                            with lock:
                                committed.append((txid, str(run.run_id)))
                else:
                    with conn.transaction():
                        conn.execute("UPDATE board SET val = val - 1, who = 'person' WHERE id = %s",
                                     (rnd.randint(1, ROWS),))
            except psycopg.Error as exc:
                if exc.sqlstate not in HANDLED:
                    unexpected.append(exc)
                if conn.closed:
                    conn = make_conn(application_name=name)
            time.sleep(rnd.random() / 50)

    def operator(seed: int):
        rnd = random.Random(seed)
        conn = make_conn(application_name="operator")
        while time.monotonic() < stop:
            try:
                if rnd.random() < 0.3:
                    sidecar.review.gate.pause(conn, automation="bot-a", reason="soak")
                    with lock:
                        counts["pauses"] += 1
                    time.sleep(0.05)
                    sidecar.review.gate.resume(conn, automation="bot-a")
                run = conn.execute(
                    "SELECT run_id FROM sidecar.runs WHERE status = 'succeeded' AND undo_of IS NULL "
                    "AND undone_by IS NULL ORDER BY random() LIMIT 1").fetchone()
            except psycopg.Error as exc:
                if exc.sqlstate not in HANDLED:
                    unexpected.append(exc)
                run = None
            if run:
                undo_one(conn, str(run[0]))
            time.sleep(rnd.random() / 20)

    def racer(seed: int):
        """Two undos of two runs that changed the same row, started at the same instant."""
        rnd = random.Random(seed)
        pick = make_conn(application_name="racer")
        pair = [make_conn(application_name=f"racer-{i}") for i in (1, 2)]
        while time.monotonic() < stop:
            runs = pick.execute(sql.SQL(
                """SELECT a.run_id::text, b.run_id::text FROM sidecar.runs a, sidecar.runs b
                    WHERE a.run_id < b.run_id AND a.automation <> b.automation
                      AND a.status = 'succeeded' AND b.status = 'succeeded'
                      AND a.undo_of IS NULL AND b.undo_of IS NULL AND a.undone_by IS NULL AND b.undone_by IS NULL
                      AND EXISTS (SELECT FROM {log} x JOIN sidecar.statements sx ON sx.stmt_id = x._stmt
                                  JOIN {log} y ON y.id = x.id
                                  JOIN sidecar.statements sy ON sy.stmt_id = y._stmt
                                  WHERE sx.run_id = a.run_id AND sy.run_id = b.run_id)
                    ORDER BY random() LIMIT 1""").format(log=sql.Identifier("sidecar", _log(pick)))).fetchone()
            if runs:
                start = threading.Barrier(2)

                def go(conn, run_id):
                    start.wait()
                    undo_one(conn, run_id)

                both = [threading.Thread(target=go, args=(c, r)) for c, r in zip(pair, runs)]
                for t in both:
                    t.start()
                for t in both:
                    t.join()
                with lock:
                    counts["raced pairs"] += 1
            time.sleep(rnd.random() / 10)

    threads = [threading.Thread(target=writer, args=("bot-a", True, 1)),
               threading.Thread(target=writer, args=("bot-b", True, 2)),
               threading.Thread(target=writer, args=("person", False, 3)),
               threading.Thread(target=operator, args=(4,)),
               threading.Thread(target=racer, args=(5,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a thread hung: an unhandled wait"
    assert not unexpected, unexpected[:3]
    assert [r for r in refused if not REFUSALS.search(r)] == []
    assert len(committed) > 10, "the soak did too little to prove anything"
    assert counts["raced pairs"] > 0, "no two undos of overlapping runs raced"

    # Every committed tagged write was captured, under its run.
    captured = set(board.execute("SELECT txid, run_id::text FROM sidecar.statements").fetchall())
    missing = [c for c in committed if c not in captured]
    checked_rows = board.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier("sidecar", _log(board)))).fetchone()[0]

    # No undo overwrote a row written after it planned.
    log = board.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    undos = board.execute("SELECT run_id, undo_of FROM sidecar.runs WHERE undo_of IS NOT NULL").fetchall()
    overwritten_total = []
    for undo_run, original in undos:
        overwritten = board.execute(
            sql.SQL(
                """
                WITH seen AS (   -- what the undo found in each row it restored
                    SELECT l.id, l.val, l.who FROM {log} l JOIN sidecar.statements s ON s.stmt_id = l._stmt
                    WHERE s.run_id = %(undo)s AND l._kind = 'O'
                ), left_by_run AS (   -- what the undone run left there
                    SELECT DISTINCT ON (l.id) l.id, l.val, l.who FROM {log} l
                    JOIN sidecar.statements s ON s.stmt_id = l._stmt
                    WHERE s.run_id = %(run)s ORDER BY l.id, l._stmt DESC, l._kind
                )
                SELECT seen.id FROM seen JOIN left_by_run r USING (id)
                WHERE (seen.val, seen.who) IS DISTINCT FROM (r.val, r.who)
                """
            ).format(log=sql.Identifier("sidecar", log)),
            {"undo": undo_run, "run": original},
        ).fetchall()
        overwritten_total += [(undo_run, r[0]) for r in overwritten]
    with capsys.disabled():
        print(f"\nsoak: 3 writers and 2 operators for {SECONDS} s: {len(committed)} committed tagged transactions checked for their capture "
              f"({checked_rows} row images), {len(undos)} undos ({counts['raced pairs']} pairs "
              f"raced, {len(refused)} refused in words), {counts['pauses']} pauses, lost captures: {len(missing)}, "
              f"rows overwritten by an undo that were changed since: {len(overwritten_total)}")
    assert not missing, missing[:5]
    assert undos, "the operator undid nothing"
    assert not overwritten_total, f"undos overwrote rows changed after they planned: {overwritten_total[:5]}"


def _log(conn) -> str:
    """The history table of board (sidecar's own name for it)."""
    return conn.execute("SELECT log_table FROM sidecar.tracked WHERE relid = 'board'::regclass").fetchone()[0]
