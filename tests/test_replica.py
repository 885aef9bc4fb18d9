"""A streaming replica holds history with the data; after a failover, undo works on the new primary (issue 25)."""

from __future__ import annotations

import time

import psycopg
import pytest

import sidecar.capture.schema
import sidecar.capture.tracking
from sidecar.cluster import ThrowawayCluster, _free_port
from tests.fix_sidecar import snapshot, undo


@pytest.fixture
def primary(pg_bindir):
    with ThrowawayCluster(bindir=pg_bindir, settings={"synchronous_commit": "on"}) as cluster:
        yield cluster


def _counts(conn, run_id, log_table):
    stmts = conn.execute("SELECT count(*), max(stmt_id) FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()
    images = conn.execute(f'SELECT count(*) FROM sidecar."{log_table}"').fetchone()[0]
    return stmts[0], stmts[1], images


def _copy_for_standby(primary, replica_dir):
    """Make a standby's data directory: with pg_basebackup where the server's binaries have it; else (the
    npm builds ship only initdb, pg_ctl and postgres) from a copy of the cleanly stopped primary, which is
    consistent at its shutdown checkpoint and streams the rest like any standby."""
    basebackup = primary.bindir / "pg_basebackup"
    if basebackup.exists():
        backup = primary._run([str(basebackup), "-h", "127.0.0.1", "-p", str(primary.port),
                               "-U", "postgres", "-D", str(replica_dir), "-R", "-X", "stream"], timeout=300)
        assert backup.returncode == 0, backup.stdout
        return
    primary.stop_server(crash=False)
    copied = primary._run(["cp", "-a", str(primary.datadir), str(replica_dir)])
    assert copied.returncode == 0, copied.stdout
    primary.start_again()
    (replica_dir / "standby.signal").touch()
    with open(replica_dir / "postgresql.auto.conf", "a") as conf:
        conf.write(f"\nprimary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres'\n")


def test_replica_has_history_and_undo_works_after_promotion(primary):
    dsn = primary.dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        sidecar.capture.schema.install(admin)
        admin.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        admin.execute("INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 50) g")
        sidecar.capture.tracking.track(admin, "ledger")
        before = snapshot(admin, "ledger")
        log_table = admin.execute("SELECT log_table FROM sidecar.tracked WHERE relid = 'ledger'::regclass").fetchone()[0]

    replica_dir = primary.datadir.parent / "replica"
    _copy_for_standby(primary, replica_dir)
    port = _free_port()
    with open(replica_dir / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {port}\nhot_standby = on\n")
    pg_ctl = str(primary.bindir / "pg_ctl")
    started = primary._run([pg_ctl, "-D", str(replica_dir), "-l", str(replica_dir.parent / "replica.log"),
                            "-w", "-t", "60", "start"], timeout=90)
    assert started.returncode == 0, started.stdout
    replica_dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        # The automation writes on the primary after the copy: its history reaches the replica by streaming.
        with psycopg.connect(dsn, autocommit=True) as bot:
            bot.execute("SELECT sidecar.start_run('ledger-bot')")
            run_id = bot.execute("SELECT current_setting('sidecar.run_id')::uuid").fetchone()[0]
            for i in range(1, 21):
                with bot.transaction():
                    bot.execute("UPDATE ledger SET amount = amount + %s WHERE id = %s", (i, i))
            bot.execute("DELETE FROM ledger WHERE id = 50")
            bot.execute("SELECT sidecar.finish_run()")
            on_primary = _counts(bot, run_id, log_table)
            lsn = bot.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            after = snapshot(bot, "ledger")
        assert on_primary[0] == 21

        with psycopg.connect(replica_dsn, autocommit=True) as standby:
            deadline = time.monotonic() + 60
            while standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] is not True:
                assert time.monotonic() < deadline, "the replica did not replay the primary's WAL in 60 s"
                time.sleep(0.2)
            assert standby.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            assert _counts(standby, run_id, log_table) == on_primary
            assert snapshot(standby, "ledger") == after

        # Failover: the primary goes away, the replica is promoted.
        primary.stop_server(crash=True)
        promoted = primary._run([pg_ctl, "-D", str(replica_dir), "-w", "-t", "60", "promote"], timeout=90)
        assert promoted.returncode == 0, promoted.stdout
        with psycopg.connect(replica_dsn, autocommit=True) as admin:
            assert not admin.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            undo(admin, run_id)
            assert snapshot(admin, "ledger") == before
            # New captures on the new primary never reuse a statement id of the old one.
            admin.execute("SELECT sidecar.start_run('after-failover')")
            admin.execute("UPDATE ledger SET amount = -1 WHERE id = 1")
            new_run = admin.execute("SELECT current_setting('sidecar.run_id')::uuid").fetchone()[0]
            admin.execute("SELECT sidecar.finish_run()")
            new_min = admin.execute("SELECT min(stmt_id) FROM sidecar.statements WHERE run_id = %s",
                                    (new_run,)).fetchone()[0]
            assert new_min > on_primary[1]
    finally:
        primary._run([pg_ctl, "-D", str(replica_dir), "-m", "immediate", "-w", "stop"], timeout=90)
