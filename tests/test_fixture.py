"""The database fixtures themselves: a real server, one empty database per test."""

import psycopg
import pytest

_seen: dict[str, str] = {}


def _user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    return [row[0] for row in rows]


def test_server_answers(conn, pg_major):
    version = conn.execute("SELECT version()").fetchone()[0]
    assert version.startswith("PostgreSQL ")
    assert pg_major >= 10
    assert conn.info.server_version // 10000 == pg_major


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_its_own_empty_database(conn, turn):
    assert _user_tables(conn) == []
    name = conn.execute("SELECT current_database()").fetchone()[0]
    assert name not in _seen.values()
    _seen[turn] = name
    # Written here, this table must not appear in the next test's database.
    conn.execute("CREATE TABLE left_behind (id int)")
    conn.execute("INSERT INTO left_behind VALUES (1)")


def test_databases_of_finished_tests_are_dropped(conn, server_dsn):
    own = conn.execute("SELECT current_database()").fetchone()[0]
    suffix = own.rsplit("_", 1)[1]  # t_<counter>_<pid>: this process's databases
    with psycopg.connect(server_dsn) as admin:
        names = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"t\\_%\\_{suffix}"]
        ).fetchall()
    assert [row[0] for row in names] == [own]


def test_make_conn_opens_sessions_on_the_same_database(conn, make_conn):
    other = make_conn(autocommit=False)
    conn.execute("CREATE TABLE shared (v text)")
    other.execute("INSERT INTO shared VALUES ('from other session')")
    assert conn.execute("SELECT count(*) FROM shared").fetchone()[0] == 0
    other.commit()
    assert conn.execute("SELECT v FROM shared").fetchone()[0] == "from other session"


@pytest.mark.pg_version(min=99)
def test_pg_version_marker_skips_older_servers():
    raise AssertionError("a server of major version 99 does not exist yet")
