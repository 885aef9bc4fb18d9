"""sidecar install / uninstall: the DBA's first and last commands."""

import psycopg
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

import sidecar.capture.schema
import sidecar.steps.runs
from sidecar import resources
from sidecar.cli import cli as sidecar_cli


def _schema_exists(conn) -> bool:
    return conn.execute("SELECT to_regnamespace('sidecar') IS NOT NULL").fetchone()[0]


def _sidecar_triggers(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'sidecar%' ORDER BY 1")]


def _sidecar_functions(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'sidecar'"
    ).fetchone()[0]


def test_install_creates_the_schema_and_records_the_version(conn, cli):
    result = cli("install")

    assert result.exit_code == 0, result.output
    assert "sidecar is installed." in result.stdout
    assert "applied migration 001_schema.sql" in result.stdout
    assert _schema_exists(conn)
    newest = max(v for v, _ in resources.migrations())
    assert conn.execute("SELECT max(version) FROM sidecar.migrations").fetchone()[0] == newest
    assert sidecar.capture.schema.installed_version(conn) == newest
    # The public functions automations call are there.
    assert conn.execute("SELECT to_regprocedure('sidecar.start_run(text, jsonb, text)') IS NOT NULL").fetchone()[0]


def test_second_install_changes_nothing_and_says_so(conn, cli):
    assert cli("install").exit_code == 0
    before = conn.execute("SELECT version, applied_at FROM sidecar.migrations ORDER BY 1").fetchall()
    definitions = conn.execute("SELECT file, applied_at FROM sidecar.definitions ORDER BY 1").fetchall()

    again = cli("install")

    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "sidecar is already installed and up to date: nothing changed."
    assert conn.execute("SELECT version, applied_at FROM sidecar.migrations ORDER BY 1").fetchall() == before
    assert conn.execute("SELECT file, applied_at FROM sidecar.definitions ORDER BY 1").fetchall() == definitions


def test_dry_run_prints_the_sql_and_changes_nothing(conn, cli):
    result = cli("install", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "CREATE SCHEMA IF NOT EXISTS sidecar" in result.stdout
    assert "CREATE OR REPLACE FUNCTION sidecar.start_run" in result.stdout
    assert not _schema_exists(conn)


def test_dry_run_on_an_installed_database_says_nothing_would_run(conn, cli):
    cli("install")
    result = cli("install", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.strip() == "-- sidecar is up to date: nothing would run"


def test_changed_function_file_is_reapplied_on_install(sc):
    # An upgrade: the database holds an older version of fn_runs.sql.
    sc.execute("UPDATE sidecar.definitions SET sha256 = 'old' WHERE file = 'fn_runs.sql'")
    report = sidecar.capture.schema.install(sc)
    assert report.functions == ["fn_runs.sql"]
    assert report.migrations == []


def test_a_changed_template_is_rendered_for_tracked_tables_even_with_one_dropped(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("CREATE TABLE gone (id int PRIMARY KEY)")
    sc.execute("SELECT sidecar.track('tickets'), sidecar.track('gone')")
    sc.execute("DROP TABLE gone")  # dropped while tracked: its history stays
    sc.execute("UPDATE sidecar.templates SET body = '-- an older release' WHERE name = 'capture'")

    report = sidecar.capture.schema.install(sc)

    assert report.templates == ["capture"]
    assert report.rerendered == ["public.tickets"]
    with sidecar.steps.runs.Run(sc, "ticket-bot"):
        sc.execute("INSERT INTO tickets VALUES (42, 'new')")
    assert sc.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 1


def test_uninstall_removes_triggers_functions_and_schema(conn, cli):
    conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    cli("install")
    assert cli("track", "tickets").exit_code == 0
    assert _sidecar_triggers(conn)

    result = cli("uninstall", "--yes")

    assert result.exit_code == 0, result.output
    assert "removed capture triggers from public.tickets" in result.stdout
    assert not _schema_exists(conn)
    assert _sidecar_triggers(conn) == []
    # The application's table and its writes are untouched.
    conn.execute("INSERT INTO tickets VALUES (1, 'open')")
    assert conn.execute("SELECT status FROM tickets").fetchone()[0] == "open"


def test_uninstall_without_yes_refuses(conn, cli):
    cli("install")
    result = cli("uninstall")
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert _schema_exists(conn)


def test_uninstall_keep_history_keeps_runs_and_history_tables(conn, cli, run_bot):
    conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    conn.execute("INSERT INTO tickets VALUES (42, 'needs review')")
    cli("install")
    cli("track", "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    result = cli("uninstall", "--yes", "--keep-history")

    assert result.exit_code == 0, result.output
    assert "history kept" in result.stdout
    assert _sidecar_triggers(conn) == []
    assert _sidecar_functions(conn) == 0
    assert conn.execute("SELECT count(*) FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0] == 1
    log_table = conn.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]
    images = conn.execute(
        sql.SQL("SELECT _kind, status FROM sidecar.{} ORDER BY _kind DESC").format(sql.Identifier(log_table))
    ).fetchall()
    assert images == [("O", "needs review"), ("N", "resolved")]

    # Installing again picks the kept history up: the run can still be shown.
    assert cli("install").exit_code == 0
    shown = cli("show", str(run_id))
    assert shown.exit_code == 0, shown.output
    assert "tickets #42: status 'needs review' -> 'resolved'" in shown.stdout


def test_uninstall_when_not_installed_says_so(conn, cli):
    result = cli("uninstall", "--yes")
    assert result.exit_code == 1
    assert "not installed" in result.stderr


def test_install_as_a_table_owner_without_superuser(conn, dsn, cli, make_conn):
    conn.execute("CREATE ROLE app_owner LOGIN NOSUPERUSER")
    dbname = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO app_owner").format(sql.Identifier(dbname)))
    conn.execute("GRANT CREATE ON SCHEMA public TO app_owner")
    owner_dsn = make_conninfo(dsn, user="app_owner")
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as owner:
            assert owner.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
            owner.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
            owner.execute("INSERT INTO tickets VALUES (42, 'needs review')")

            def as_owner(*args):
                return CliRunner().invoke(sidecar_cli, [*args, "--dsn", owner_dsn], catch_exceptions=False)

            assert as_owner("install").exit_code == 0
            tracked = as_owner("track", "tickets")
            assert tracked.exit_code == 0, tracked.output

            with sidecar.steps.runs.Run(owner, "ticket-bot") as run:
                owner.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
            undone = as_owner("undo", str(run.run_id), "--yes")
            assert undone.exit_code == 0, undone.output
            assert owner.execute("SELECT status FROM tickets").fetchone()[0] == "needs review"

            assert as_owner("uninstall", "--yes").exit_code == 0
            assert not _schema_exists(owner)
    finally:
        conn.execute("DROP OWNED BY app_owner CASCADE")
        conn.execute("DROP ROLE app_owner")


def test_a_foreign_schema_named_sidecar_is_refused(conn, cli):
    conn.execute("CREATE SCHEMA sidecar")
    conn.execute("CREATE TABLE sidecar.mine (id int)")

    result = cli("install")

    assert result.exit_code == 1
    assert 'a schema named "sidecar" already exists and was not made by sidecar' in result.stderr
    assert "rename or drop it" in result.stderr
    # Nothing of ours was put into it.
    assert conn.execute(
        "SELECT array_agg(relname::text ORDER BY relname) FROM pg_class WHERE relnamespace = 'sidecar'::regnamespace"
    ).fetchone()[0] == ["mine"]

