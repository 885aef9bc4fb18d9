"""sidecar track / untrack: choosing which tables' writes are captured."""

import pytest

import sidecar.capture.tracking
from sidecar.errors import UsageError
from tests.fix_sidecar import mode_words


def _triggers(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY 1", (table,))]


def test_track_installs_capture_triggers(sc, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")

    result = cli("track", "tickets")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"tracking public.tickets (capture tagged{mode_words(sc, 'tickets')}, key id)"
    assert _triggers(sc, "tickets") == [
        "sidecar_capture_delete", "sidecar_capture_insert", "sidecar_capture_update", "sidecar_refuse_truncate"]
    assert [t.table for t in sidecar.capture.tracking.list_tracked(sc)] == ["public.tickets"]
    assert _history_indexes(sc, "tickets") == [("brin", ["autosummarize=on"])]


def _history_indexes(conn, table: str) -> list[tuple]:
    """(access method, options) of the indexes of the table's history."""
    return conn.execute(
        "SELECT am.amname, ic.reloptions FROM sidecar.tracked t "
        "JOIN pg_index i ON i.indrelid = format('sidecar.%%I', t.log_table)::regclass "
        "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
        "WHERE t.relid = %s::regclass", (table,)).fetchall()


def test_track_schema_qualified_and_mixed_case_names(sc, cli, run_bot):
    sc.execute("CREATE SCHEMA billing")
    sc.execute("CREATE TABLE billing.notes (id int PRIMARY KEY, body text)")
    sc.execute('CREATE SCHEMA "Sales Dept"')
    sc.execute('CREATE TABLE "Sales Dept"."Order Items" ("Order Id" int, "Line" int, qty int, '
               'PRIMARY KEY ("Order Id", "Line"))')
    sc.execute('INSERT INTO "Sales Dept"."Order Items" VALUES (1, 1, 5)')

    result = cli("track", "billing.notes", '"Sales Dept"."Order Items"')

    assert result.exit_code == 0, result.output
    assert f"tracking billing.notes (capture tagged{mode_words(sc, 'billing.notes')}, key id)" in result.stdout
    items = '"Sales Dept"."Order Items"'
    assert f"tracking {items} (capture tagged{mode_words(sc, items)}, key Order Id, Line)" in result.stdout
    run_id = run_bot('UPDATE "Sales Dept"."Order Items" SET qty = 6', "INSERT INTO billing.notes VALUES (1, 'x')")
    shown = cli("show", str(run_id))
    assert '"Sales Dept"."Order Items" (Order Id 1, Line 1): qty 5 -> 6' in shown.stdout
    assert "billing.notes #1: added (body 'x')" in shown.stdout


def test_track_a_mixed_case_table_in_public(sc, cli):
    sc.execute('CREATE TABLE "Order Items" (id int PRIMARY KEY)')
    result = cli("track", '"Order Items"')
    assert result.exit_code == 0, result.output
    assert 'tracking public."Order Items"' in result.stdout


def test_unquoted_mixed_case_name_is_refused_with_a_hint(sc, cli):
    sc.execute('CREATE TABLE "Order Items" (id int PRIMARY KEY)')
    result = cli("track", "Order Items")
    assert result.exit_code == 2
    # PostgreSQL up to 17 calls it no name at all; 18's to_regclass just finds no such table.
    assert "Order Items" in result.stderr and ("is not a valid table name" in result.stderr
                                               or "does not exist" in result.stderr)
    assert 'double quotes, e.g. \'"Order Items"\'' in result.stderr


def test_table_without_primary_key_is_refused(sc, cli):
    sc.execute("CREATE TABLE audit_log (at timestamptz, line text)")

    result = cli("track", "audit_log")

    assert result.exit_code == 2
    assert "table public.audit_log has no primary key, so its rows cannot be told apart for undo" in result.stderr
    assert "ALTER TABLE public.audit_log ADD PRIMARY KEY (...)), then track it again" in result.stderr
    assert _triggers(sc, "audit_log") == []
    assert sc.execute("SELECT count(*) FROM sidecar.tracked").fetchone()[0] == 0


def test_label_column_that_does_not_exist_is_refused(sc, cli):
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")

    result = cli("track", "customers", "--label-column", "title")

    assert result.exit_code == 2
    assert 'table public.customers has no column title' in result.stderr
    assert "--label-column" in result.stderr
    assert _triggers(sc, "customers") == []


def test_views_cannot_be_tracked(sc, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY)")
    sc.execute("CREATE VIEW open_tickets AS SELECT * FROM tickets")
    result = cli("track", "open_tickets")
    assert result.exit_code == 2
    assert "is not a table" in result.stderr


def test_sidecar_own_tables_cannot_be_tracked(sc):
    with pytest.raises(UsageError, match="belongs to sidecar itself"):
        sidecar.capture.tracking.track(sc, "sidecar.runs")


def test_untrack_removes_triggers_and_keeps_history(sc, cli, run_bot):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets VALUES (42, 'needs review')")
    cli("track", "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    result = cli("untrack", "tickets")

    assert result.exit_code == 0, result.output
    assert "stopped tracking tickets (history kept)" in result.stdout
    assert _triggers(sc, "tickets") == []
    assert sidecar.capture.tracking.list_tracked(sc) == []
    # Writes are no longer captured...
    later = run_bot("UPDATE tickets SET status = 'closed' WHERE id = 42")
    assert sc.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (later,)).fetchone()[0] == 0
    # ...but the old run is still there, and still undoable.
    assert "tickets #42: status 'needs review' -> 'resolved'" in cli("show", str(run_id)).stdout
    sc.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    undone = cli("undo", str(run_id), "--yes")
    assert undone.exit_code == 0, undone.output
    assert sc.execute("SELECT status FROM tickets").fetchone()[0] == "needs review"


def test_untrack_of_an_untracked_table_is_refused(sc, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY)")
    result = cli("untrack", "tickets")
    assert result.exit_code == 2
    assert "table public.tickets is not tracked" in result.stderr


def test_tracking_again_updates_options_and_keeps_history(sc, cli, run_bot):
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    sc.execute("INSERT INTO customers VALUES (7, 'Northwind Solar')")
    cli("track", "customers")
    run_bot("UPDATE customers SET name = 'Northwind Systems'")
    log_table = sc.execute("SELECT log_table FROM sidecar.tracked").fetchone()[0]

    result = cli("track", "customers", "--capture", "all", "--label-column", "name")

    assert result.exit_code == 0, result.output
    assert "capture all" in result.stdout
    t = sidecar.capture.tracking.get(sc, "customers")
    assert (t.capture, t.label_column, t.log_table) == ("all", "name", log_table)
    assert sc.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 1


def test_retracking_after_untrack_resumes_capture(sc, cli, run_bot):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets VALUES (1, 'open')")
    cli("track", "tickets")
    cli("untrack", "tickets")
    assert cli("track", "tickets").exit_code == 0
    run_id = run_bot("UPDATE tickets SET status = 'closed'")
    assert sc.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (run_id,)).fetchone()[0] == 1
