"""The server crashing mid-run loses no captured change of a committed write."""

from __future__ import annotations

import psycopg
import pytest

import sidecar
import sidecar.capture.schema
import sidecar.capture.tracking
from sidecar.cluster import ThrowawayCluster
from tests.fix_sidecar import snapshot, undo


@pytest.fixture
def own_cluster(server_bindir):
    """A server of our own (the shared one cannot be crashed), of the session's major."""
    # Commits wait for their WAL: a committed write must survive the crash.
    with ThrowawayCluster(bindir=server_bindir, settings={"synchronous_commit": "on"}) as cluster:
        yield cluster


def test_crash_mid_run_keeps_every_committed_capture(own_cluster):
    dsn = own_cluster.dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        sidecar.capture.schema.install(admin)
        admin.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        admin.execute("INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 20) g")
        sidecar.capture.tracking.track(admin, "ledger")
        before = snapshot(admin, "ledger")

    bot = psycopg.connect(dsn, autocommit=True)
    run_id = bot.execute("SELECT sidecar.start_run('ledger-bot')").fetchone()[0]
    committed = []
    for i in range(1, 11):
        with bot.transaction():
            bot.execute("UPDATE ledger SET amount = amount + 10 WHERE id = %s", (i,))
            committed.append(bot.execute("SELECT txid_current()").fetchone()[0])
    bot.execute("BEGIN")
    bot.execute("UPDATE ledger SET amount = 999 WHERE id = 20")  # in flight when the power goes

    own_cluster.restart(crash=True)
    with pytest.raises(psycopg.OperationalError):
        bot.execute("COMMIT")
    bot.close()

    with psycopg.connect(dsn, autocommit=True) as admin:
        captured = {r[0] for r in admin.execute("SELECT txid FROM sidecar.statements WHERE run_id = %s", (run_id,))}
        assert captured == set(committed)
        assert admin.execute("SELECT amount FROM ledger WHERE id = 20").fetchone()[0] == 0
        assert sidecar.steps.runs.get(admin, run_id).state == "abandoned"
        undo(admin, run_id)
        assert snapshot(admin, "ledger") == before
