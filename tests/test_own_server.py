"""Promises that need a server of the test's own: the console's wrong-password path (the shared
test server trusts every password) and install's warning when the role lacks CREATEROLE (the
shared server has the sidecar group roles already)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sidecar.cli import cli
from sidecar.cluster import ThrowawayCluster

PASSWORD = "correct horse"


@pytest.fixture
def password_cluster(pg_bindir) -> Iterator[ThrowawayCluster]:
    """A throwaway cluster of the suite's major where every role but the superuser signs in with
    a scram-sha-256 password (the superuser keeps trust, for the test's own setup)."""
    with ThrowawayCluster(bindir=pg_bindir, settings={"password_encryption": "scram-sha-256"}) as cluster:
        (cluster.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            assert admin.execute("SELECT pg_reload_conf()").fetchone()[0]
            admin.execute(sql.SQL("CREATE ROLE app_owner LOGIN CREATEDB PASSWORD {}").format(sql.Literal(PASSWORD)))
            admin.execute("CREATE DATABASE support OWNER app_owner")
        yield cluster


def _as(cluster: ThrowawayCluster, user: str, password: str | None = PASSWORD, dbname: str = "support") -> str:
    return make_conninfo(cluster.dsn_for(dbname), user=user, password=password, passfile="/dev/null")


def test_the_test_server_checks_passwords(password_cluster):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_as(password_cluster, "app_owner", "wrong"))


def test_install_without_createrole_warns_and_says_what_to_ask_for(password_cluster):
    result = CliRunner().invoke(cli, ["install", "--dsn", _as(password_cluster, "app_owner")])
    assert result.exit_code == 0, result.output
    for role in ("sidecar_viewer", "sidecar_pauser", "sidecar_undoer", "sidecar_approver", "sidecar_rerunner"):
        assert (f"warning: sidecar: cannot create role {role} (this role lacks CREATEROLE). "
                f"Ask a superuser to run: CREATE ROLE {role} NOLOGIN; then sidecar install again.") in result.stderr
    assert "sidecar is installed." in result.stdout
    with psycopg.connect(password_cluster.dsn, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'sidecar\\_%'").fetchone()[0] == 0


def test_console_refuses_a_wrong_password(password_cluster):
    pytest.importorskip("starlette", reason="the console extra is not installed: pip install -e '.[console]'")
    from starlette.testclient import TestClient

    from sidecar.console.app import create_app
    from tests.test_console import token

    installed = CliRunner().invoke(cli, ["install", "--dsn", password_cluster.dsn_for("support")])
    assert installed.exit_code == 0, installed.output
    with psycopg.connect(password_cluster.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE dana LOGIN IN ROLE sidecar_viewer PASSWORD {}").format(
            sql.Literal(PASSWORD)))
    app = create_app(password_cluster.dsn_for("support"))  # the default: passwords must be checked
    with TestClient(app, follow_redirects=False) as client:
        page = client.get("/signin")
        wrong = client.post("/signin", data={"user": "dana", "password": "tr0ub4dor",
                                             "csrftoken": token(page.text)})
        assert wrong.status_code == 401
        assert "That user name and password do not match." in wrong.text
        assert "tr0ub4dor" not in wrong.text
        assert client.get("/automations").status_code == 303  # still signed out
        page = client.get("/signin")
        right = client.post("/signin", data={"user": "dana", "password": PASSWORD, "csrftoken": token(page.text)})
        assert right.status_code == 303, right.text
        assert client.get("/automations").status_code == 200
