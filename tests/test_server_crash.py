"""The server killed (`pg_ctl stop -m immediate`: every backend dies, no checkpoint) at an
exact moment of each of sidecar's writes, then started again on the same data directory.

The moment is chosen by a lock the test holds: the operation under test waits on it (an
advisory lock taken by a trigger on the table it writes, or a row lock on sidecar's own
tables), the test sees it waiting in pg_locks, and kills the server then. After the restart
each test checks the whole state (rows, history, runs, queue, events) and that running the
same command again finishes the job.

Each test has a cluster of its own, of the session's major (`pg_bindir`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sidecar.cluster import ThrowawayCluster
from tests.test_upgrade import install_v0_1

STALL_LOCK = 4242  # the advisory lock a stall trigger waits on while the test holds it

STALL_FUNCTION = f"""
CREATE FUNCTION test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({STALL_LOCK});  -- waits while the test holds the lock
    RETURN coalesce(NEW, OLD);
END $$"""


@pytest.fixture
def cluster(pg_bindir):
    # Commits wait for their WAL: what was committed must survive the kill.
    with ThrowawayCluster(bindir=pg_bindir, settings={"synchronous_commit": "on"}) as c:
        yield c


@pytest.fixture
def admin(cluster):
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(STALL_FUNCTION)
        yield conn


def sidecar(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `sidecar` command against the cluster, as an operator would."""
    return subprocess.run([_sidecar_command(), *args, "--dsn", cluster.dsn],
                          capture_output=True, text=True, timeout=timeout)


def sidecar_in_background(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([_sidecar_command(), *args, "--dsn", cluster.dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sidecar_command() -> str:
    beside = Path(sys.executable).parent / "sidecar"
    found = str(beside) if beside.exists() else shutil.which("sidecar")
    assert found, "the sidecar command is not installed (pip install -e .)"
    return found


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class Stall:
    """Hold the stall lock (and optionally row locks) until the server is killed."""

    def __init__(self, cluster):
        self.conn = psycopg.connect(cluster.dsn, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (STALL_LOCK,))

    def wait_for_waiter(self, what: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
        """Wait until another backend waits on a lock (ours): the moment has come."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.conn.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)").fetchone()[0]:
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{what} ended before the stall point: {proc.communicate()}")
            time.sleep(0.05)
        raise AssertionError(f"{what} never reached the stall point")

    def close(self) -> None:
        self.conn.close()


def kill_and_restart(cluster) -> None:
    cluster.stop_server(crash=True)
    cluster.start_again()


def connect(cluster, **kwargs) -> psycopg.Connection:
    return psycopg.connect(cluster.dsn, autocommit=True, **kwargs)


def history(conn, table: str, run_id) -> list[tuple]:
    """(kind, row) of every image the run's statements captured for `table`, by kind and id."""
    log = conn.execute("SELECT log_table FROM sidecar.tracked WHERE relid = %s::regclass", (table,)).fetchone()[0]
    return conn.execute(sql.SQL(
        "SELECT l._kind::text, to_jsonb(l) - '_stmt' - '_kind' - '_head' FROM {} l "
        "JOIN sidecar.statements s ON s.stmt_id = l._stmt WHERE s.run_id = %s ORDER BY 1, l.id").format(
        sql.Identifier("sidecar", log)), (run_id,)).fetchall()


def rows(conn, table: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))).fetchall()


def events(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT kind FROM sidecar.events ORDER BY event_id")]


def run_state(conn, run_id) -> tuple:
    return conn.execute("SELECT status, undone_by IS NOT NULL, purged_at IS NOT NULL FROM sidecar.runs "
                        "WHERE run_id = %s", (run_id,)).fetchone()


def no_traceback(proc: subprocess.Popen) -> str:
    """The killed command's output: it failed with a message, not a Python traceback."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert "Traceback" not in err, err
    assert err.strip(), "the command said nothing about losing the server"
    return err


# -- a tagged bulk write --------------------------------------------------------------------


def test_killed_in_a_bulk_write_history_and_table_agree(cluster, admin):
    """200,000 rows: ten committed transactions of 10,000, then one of 100,000 killed after its
    capture ran (a trigger after sidecar's own waits), before it commits."""
    admin.execute("CREATE TABLE big (id int PRIMARY KEY, val int NOT NULL)")
    ok(sidecar(cluster, "install"))
    ok(sidecar(cluster, "track", "big"))
    admin.execute("CREATE TRIGGER zz_stall AFTER INSERT ON big FOR EACH STATEMENT "
                  "WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION test_stall()")
    stall = Stall(cluster)
    bot = connect(cluster, application_name="loader-bot")
    run_id = bot.execute("SELECT sidecar.start_run('loader-bot')").fetchone()[0]
    admin.execute("ALTER TABLE big DISABLE TRIGGER zz_stall")
    for batch in range(10):
        bot.execute("INSERT INTO big SELECT g, g FROM generate_series(%s::int, %s::int) g",
                    (batch * 10_000 + 1, (batch + 1) * 10_000))
    admin.execute("ALTER TABLE big ENABLE TRIGGER zz_stall")
    events_before = events(admin)
    failed: list[BaseException] = []

    def last_batch():
        try:
            bot.execute("INSERT INTO big SELECT g, g FROM generate_series(100001, 200000) g")
        except psycopg.Error as exc:
            failed.append(exc)

    writer = threading.Thread(target=last_batch)
    writer.start()
    stall.wait_for_waiter("the 100,000-row insert")
    kill_and_restart(cluster)
    writer.join(timeout=60)
    assert failed and isinstance(failed[0], psycopg.OperationalError), failed

    with connect(cluster) as conn:
        assert conn.execute("SELECT count(*), min(id), max(id) FROM big").fetchone() == (100_000, 1, 100_000)
        captured = history(conn, "big", run_id)
        assert len(captured) == 100_000
        assert captured == [("N", {"id": i, "val": i}) for i in range(1, 100_001)]  # each written row, as written
        assert conn.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s",
                            (run_id,)).fetchone()[0] == 10
        assert run_state(conn, run_id)[0] == "running"  # its session is gone: shown as abandoned
        assert "abandoned" in ok(sidecar(cluster, "runs"))
        assert events(conn) == events_before
    conn = connect(cluster)
    conn.execute("DROP TRIGGER zz_stall ON big")
    ok(sidecar(cluster, "undo", str(run_id), "--yes"))
    assert rows(conn, "big") == []
    conn.close()


# -- an undo of a large run ------------------------------------------------------------------


def test_killed_in_an_undo_nothing_of_it_shows_and_the_same_command_finishes_it(cluster, admin):
    admin.execute("CREATE TABLE big (id int PRIMARY KEY, val int NOT NULL)")
    admin.execute("INSERT INTO big SELECT g, 0 FROM generate_series(1, 100000) g")
    ok(sidecar(cluster, "install"))
    ok(sidecar(cluster, "track", "big"))
    bot = connect(cluster, application_name="pricing-bot")
    run_id = str(bot.execute("SELECT sidecar.start_run('pricing-bot')").fetchone()[0])
    bot.execute("UPDATE big SET val = val + 1")
    bot.execute("SELECT sidecar.finish_run()")
    bot.close()
    after_run = rows(admin, "big")
    captured = history(admin, "big", run_id)
    events_before = events(admin)
    # The undo writes val back from 1 to 0; it waits at row 50,000, halfway through its UPDATE.
    # (An undo disables the table's own triggers but not sidecar's: hence the name.)
    admin.execute("CREATE TRIGGER sidecar_test_stall BEFORE UPDATE ON big FOR EACH ROW "
                  "WHEN (OLD.id = 50000 AND NEW.val < OLD.val) EXECUTE FUNCTION test_stall()")
    stall = Stall(cluster)
    undo = sidecar_in_background(cluster, "undo", run_id, "--yes")
    stall.wait_for_waiter("the undo", undo)
    kill_and_restart(cluster)
    no_traceback(undo)

    with connect(cluster) as conn:
        assert rows(conn, "big") == after_run
        assert history(conn, "big", run_id) == captured
        assert run_state(conn, run_id) == ("succeeded", False, False)
        assert conn.execute("SELECT count(*) FROM sidecar.runs WHERE undo_of IS NOT NULL").fetchone()[0] == 0
        assert events(conn) == events_before
        conn.execute("DROP TRIGGER sidecar_test_stall ON big")

    ok(sidecar(cluster, "undo", run_id, "--yes"))

    with connect(cluster) as conn:
        assert conn.execute("SELECT count(*), sum(val) FROM big").fetchone() == (100_000, 0)
        assert run_state(conn, run_id) == ("succeeded", True, False)
        assert events(conn) == events_before + ["undo"]


# -- approving a held change -----------------------------------------------------------------


def test_killed_in_an_approval_the_change_waits_in_the_queue(cluster, admin):
    admin.execute("CREATE TABLE invoices (id int PRIMARY KEY, refund int NOT NULL DEFAULT 0)")
    admin.execute("INSERT INTO invoices SELECT g FROM generate_series(1, 5) g")
    ok(sidecar(cluster, "install"))
    ok(sidecar(cluster, "track", "invoices"))
    ok(sidecar(cluster, "rule", "add", "invoices", "--when", "NEW.refund > 500", "--reason", "refund over limit"))
    bot = connect(cluster, application_name="billing-bot")
    run_id = bot.execute("SELECT sidecar.start_run('billing-bot')").fetchone()[0]
    bot.execute("UPDATE invoices SET refund = 900 WHERE id = 3")
    bot.execute("SELECT sidecar.finish_run()")
    bot.close()
    pending_id, = admin.execute("SELECT pending_id FROM sidecar.pending WHERE status = 'pending'").fetchone()
    before = rows(admin, "invoices")
    events_before = events(admin)
    admin.execute("CREATE TRIGGER zz_stall BEFORE UPDATE ON invoices FOR EACH ROW EXECUTE FUNCTION test_stall()")
    stall = Stall(cluster)
    approve = sidecar_in_background(cluster, "approve", str(pending_id))
    stall.wait_for_waiter("the approval", approve)
    kill_and_restart(cluster)
    no_traceback(approve)

    with connect(cluster) as conn:
        assert rows(conn, "invoices") == before
        assert conn.execute("SELECT status, decided_by, applied_txid FROM sidecar.pending").fetchall() == [
            ("pending", None, None)]
        assert events(conn) == events_before
        assert history(conn, "invoices", run_id) == []  # held, not written: nothing captured
        conn.execute("DROP TRIGGER zz_stall ON invoices")

    ok(sidecar(cluster, "approve", str(pending_id)))

    with connect(cluster) as conn:
        assert rows(conn, "invoices") == [(1, 0), (2, 0), (3, 900), (4, 0), (5, 0)]
        assert conn.execute("SELECT status FROM sidecar.pending").fetchall() == [("approved",)]
        assert events(conn) == events_before + ["approve"]


# -- a purge ---------------------------------------------------------------------------------


def test_killed_in_a_purge_each_run_is_purged_whole_or_not_at_all(cluster, admin):
    admin.execute("CREATE TABLE notes (id int PRIMARY KEY, val int NOT NULL)")
    ok(sidecar(cluster, "install"))
    ok(sidecar(cluster, "track", "notes"))
    bot = connect(cluster, application_name="note-bot")
    runs = []
    for i in range(3):
        runs.append(bot.execute("SELECT sidecar.start_run('note-bot')").fetchone()[0])
        bot.execute("INSERT INTO notes SELECT g, %s FROM generate_series(%s::int, %s::int) g", (i, i * 1000 + 1, i * 1000 + 1000))
        bot.execute("SELECT sidecar.finish_run()")
    bot.close()
    table = rows(admin, "notes")
    kept = {r: history(admin, "notes", r) for r in runs}
    events_before = events(admin)
    # The purge of the second run waits to mark it purged, after deleting its history.
    stall = Stall(cluster)
    stall.conn.execute("BEGIN")
    stall.conn.execute("SELECT FROM sidecar.runs WHERE run_id = %s FOR UPDATE", (runs[1],))
    purge = sidecar_in_background(cluster, "purge", "--before", "2999-01-01", "--yes")
    stall.wait_for_waiter("the purge", purge)
    kill_and_restart(cluster)
    no_traceback(purge)

    with connect(cluster) as conn:
        assert rows(conn, "notes") == table
        assert run_state(conn, runs[0]) == ("succeeded", False, True)
        assert history(conn, "notes", runs[0]) == []
        for run in runs[1:]:
            assert run_state(conn, run) == ("succeeded", False, False)
            assert history(conn, "notes", run) == kept[run]
        assert events(conn) == events_before

    again = ok(sidecar(cluster, "purge", "--before", "2999-01-01", "--yes"))
    assert again.startswith("Purged 2 runs started before 2999-01-01 00:00: 2,000 row images removed"), again
    with connect(cluster) as conn:
        assert [run_state(conn, r) for r in runs] == [("succeeded", False, True)] * 3
        assert conn.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 0
        assert rows(conn, "notes") == table
        assert events(conn) == events_before + ["purge"]


# -- an upgrade ------------------------------------------------------------------------------


def test_killed_in_an_upgrade_the_old_schema_stays_whole_and_install_finishes(cluster, admin):
    install_v0_1(admin)
    admin.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    admin.execute("INSERT INTO tickets VALUES (1, 'open'), (2, 'open')")
    admin.execute("SELECT sidecar.track('tickets')")
    bot = connect(cluster, application_name="ticket-bot")
    old_run = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
    bot.execute("SELECT sidecar.finish_run()")
    bot.close()
    migrations = admin.execute("SELECT version FROM sidecar.migrations ORDER BY 1").fetchall()
    events_before = events(admin)
    # The upgrade alters sidecar.runs: it waits there for the test's lock on the table.
    stall = Stall(cluster)
    stall.conn.execute("BEGIN")
    stall.conn.execute("LOCK TABLE sidecar.runs IN ACCESS SHARE MODE")
    install = sidecar_in_background(cluster, "install")
    stall.wait_for_waiter("the upgrade", install)
    kill_and_restart(cluster)
    no_traceback(install)

    with connect(cluster) as conn:
        assert conn.execute("SELECT version FROM sidecar.migrations ORDER BY 1").fetchall() == migrations
        assert rows(conn, "tickets") == [(1, "closed"), (2, "open")]
        assert conn.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (old_run,)).fetchone()[0] == 1

    ok(sidecar(cluster, "install"))

    with connect(cluster) as conn:
        assert len(conn.execute("SELECT version FROM sidecar.migrations").fetchall()) > len(migrations)
        ok(sidecar(cluster, "undo", str(old_run), "--yes"))
        assert rows(conn, "tickets") == [(1, "open"), (2, "open")]
        assert events(conn) == events_before + ["undo"]


# -- the console -----------------------------------------------------------------------------


def test_the_console_says_the_database_is_down_and_works_again_after_restart(cluster, admin):
    import re
    import socket

    requests = pytest.importorskip("requests")
    admin.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    admin.execute("INSERT INTO tickets VALUES (1, 'open')")
    ok(sidecar(cluster, "install"))
    ok(sidecar(cluster, "track", "tickets"))
    bot = connect(cluster, application_name="ticket-bot")
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    bot.execute("UPDATE tickets SET status = 'closed'")
    bot.execute("SELECT sidecar.finish_run()")
    bot.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    # The test cluster trusts local connections: no password to check.
    serve = sidecar_in_background(cluster, "serve", "--port", str(port), "--allow-unchecked-passwords")
    try:
        browser = requests.Session()
        for _ in range(200):
            try:
                page = browser.get(f"{base}/signin", timeout=5)
                break
            except requests.ConnectionError:
                assert serve.poll() is None, serve.communicate()
                time.sleep(0.1)
        csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
        signed_in = browser.post(f"{base}/signin", data={"user": "postgres", "password": "x", "csrftoken": csrf},
                                 timeout=10)
        assert signed_in.status_code == 200 and "ticket-bot" in signed_in.text, signed_in.text

        cluster.stop_server(crash=True)
        down = browser.get(f"{base}/automations", timeout=30)
        assert down.status_code == 503, down.text
        assert "The database cannot be reached right now" in down.text
        assert "Traceback" not in down.text and "psycopg" not in down.text

        cluster.start_again()
        back = browser.get(f"{base}/automations", timeout=30)  # the same session, no new sign-in
        assert back.status_code == 200 and "ticket-bot" in back.text, back.text
        assert serve.poll() is None, "sidecar serve stopped"
    finally:
        serve.terminate()
        serve.communicate(timeout=30)
