"""Several writers, undos and pauses on the same rows at once, for a bounded time.

Checks, from the database's own records afterwards:
- every committed tagged write has its capture (no change lost);
- no undo overwrote a row written after it planned: the before-image an undo
  captured for each row it restored is exactly what the undone run left there;
- errors the writers and operators meet are the handled kinds (pause refusals,
  deadlocks between the writers themselves, undo refusals), nothing else.
"""

from __future__ import annotations

import random
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
REFUSALS = ("undo gave up waiting 2s for a lock held by another session; nothing was changed",)


@pytest.fixture
def board(sc):
    sc.execute("CREATE TABLE board (id int PRIMARY KEY, val int NOT NULL, who text)")
    sc.execute("INSERT INTO board SELECT g, 0, 'seed' FROM generate_series(1, %s) g", (ROWS,))
    track(sc, "board")
    return sc


def test_soak_writers_undo_and_pause(board, make_conn):
    stop = time.monotonic() + SECONDS
    committed: list[tuple[int, str]] = []  # (txid, run id) of committed tagged writes
    unexpected: list[BaseException] = []
    refusals: list[str] = []
    lock = threading.Lock()

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
                    time.sleep(0.05)
                    sidecar.review.gate.resume(conn, automation="bot-a")
                run = conn.execute(
                    "SELECT run_id FROM sidecar.runs WHERE status = 'succeeded' AND undo_of IS NULL "
                    "AND undone_by IS NULL ORDER BY random() LIMIT 1").fetchone()
                if run:
                    scope = sidecar.undo.restore.make_scope(conn, str(run[0]))
                    sidecar.undo.restore.undo(conn, scope, lock_timeout="2s")
            except SidecarError as exc:
                # A refusal said in words is handled when it is one the operator can meet here:
                # the undo's lock wait given up. Any other is a bug the soak found.
                if not str(exc).startswith(REFUSALS):
                    unexpected.append(exc)
                refusals.append(str(exc))
            except psycopg.Error as exc:
                if exc.sqlstate not in HANDLED:
                    unexpected.append(exc)
            time.sleep(rnd.random() / 20)

    threads = [threading.Thread(target=writer, args=("bot-a", True, 1)),
               threading.Thread(target=writer, args=("bot-b", True, 2)),
               threading.Thread(target=writer, args=("person", False, 3)),
               threading.Thread(target=operator, args=(4,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a thread hung: an unhandled wait"
    assert not unexpected, unexpected[:3]
    assert len(committed) > 10, "the soak did too little to prove anything"

    # Every committed tagged write was captured, under its run.
    captured = set(board.execute("SELECT txid, run_id::text FROM sidecar.statements").fetchall())
    missing = [c for c in committed if c not in captured]
    assert not missing, missing[:5]

    # No undo overwrote a row written after it planned.
    log = board.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    undos = board.execute("SELECT run_id, undo_of FROM sidecar.runs WHERE undo_of IS NOT NULL").fetchall()
    assert undos, "the operator undid nothing"
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
        assert not overwritten, f"undo {undo_run} overwrote rows changed after it planned: {overwritten}"
