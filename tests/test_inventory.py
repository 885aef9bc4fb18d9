"""Know what it touches: the table inventory (owner, risk, kind, writers, warnings) and who is on duty."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from sidecar.ops.inventory import write_target
from tests.fix_sidecar import mode_words, track


@pytest.fixture
def tables(sc):
    sc.execute(
        "CREATE TABLE tickets (id int PRIMARY KEY, status text);"
        "CREATE TABLE billing_notes (id int PRIMARY KEY, ticket_id int REFERENCES tickets, note text);"
        "CREATE TABLE audit_log (id serial PRIMARY KEY, what text);"
        "INSERT INTO tickets SELECT g, 'open' FROM generate_series(1, 5) g"
    )
    return sc


def inventory(cli, *args):
    result = cli("inventory", *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["inventory"]
    return report, {t["table"]: t for t in report["tables"]}


def warnings_of(report, kind):
    return [w for w in report["warnings"] if w["kind"] == kind]


def test_an_untracked_table_a_cascade_reaches_is_warned(tables, cli, run_bot):
    """Deleting a tracked ticket deletes its notes too; if the notes are not tracked, the
    undo of that delete puts the ticket back without them."""
    tables.execute("CREATE TABLE ticket_tags (id int PRIMARY KEY, ticket_id int REFERENCES tickets ON DELETE CASCADE);"
                   "CREATE TABLE ticket_links (id int PRIMARY KEY, "
                   "ticket_id int REFERENCES tickets ON UPDATE CASCADE ON DELETE SET NULL)")
    track(tables, "tickets", "billing_notes")
    run_bot("UPDATE tickets SET status = 'closed' WHERE id = 1")

    report, _ = inventory(cli)
    found = warnings_of(report, "cascade-untracked")
    assert [w["table"] for w in found] == ["public.ticket_links", "public.ticket_tags"]
    assert found[1]["message"] == (
        "public.ticket_tags follows public.tickets (ON DELETE CASCADE) but is not tracked: the rows a write to "
        "public.tickets changes or deletes there with it cannot be put back by an undo; "
        "sidecar track public.ticket_tags")
    assert "(ON DELETE SET NULL, ON UPDATE CASCADE)" in found[0]["message"]
    assert found[1]["automations"] == ["ticket-bot"]
    # An undo that puts tickets back says what it cannot put back with them.
    run_id = run_bot("DELETE FROM tickets WHERE id = 2")
    undone = cli("undo", str(run_id), "--yes")
    assert undone.exit_code == 0, undone.output
    assert ("note: public.tickets: rows put back do not bring back what their delete did to public.ticket_tags "
            "(a foreign key's ON DELETE action; public.ticket_tags is not tracked)") in undone.stdout
    # billing_notes refers to tickets without an action, and is tracked anyway: no warning for it.
    track(tables, "ticket_tags", "ticket_links")
    assert warnings_of(inventory(cli)[0], "cascade-untracked") == []


def test_track_records_owner_risk_and_kind(tables, cli):
    result = cli("track", "billing_notes", "--owner", "billing-team", "--risk", "high", "--kind", "final")
    assert result.exit_code == 0, result.output
    assert (f"tracking public.billing_notes (capture tagged{mode_words(tables, 'billing_notes')}, key id; "
            "owner billing-team, risk high, kind final)") in result.output
    # Tracking again without the options keeps the entry; one option changes only itself.
    assert cli("track", "billing_notes", "--label-column", "note").exit_code == 0
    assert cli("track", "billing_notes", "--risk", "medium").exit_code == 0
    row = tables.execute("SELECT owner, risk, kind FROM sidecar.tracked").fetchone()
    assert row == ("billing-team", "medium", "final")
    event = tables.execute(
        "SELECT summary FROM sidecar.events WHERE kind = 'inventory' ORDER BY event_id DESC").fetchone()
    assert event[0] == "Inventory of public.billing_notes: owner billing-team, risk medium, kind final"

    bad = cli("track", "billing_notes", "--risk", "extreme")
    assert bad.exit_code == 2 and "'extreme' is not one of 'low', 'medium', 'high'" in bad.output
    with pytest.raises(psycopg.Error) as err:
        tables.execute("SELECT sidecar.set_table_info('tickets', 'x', 'high', 'final')")
    assert err.value.sqlstate == "SC004" and "tickets is not tracked" in str(err.value)


def test_inventory_lists_tables_writers_and_warns_about_high_risk_without_hold(tables, run_bot, cli):
    track(tables, "tickets", owner="support", risk="low", kind="draft")
    track(tables, "billing_notes", owner="billing-team", risk="high", kind="final")
    run_bot("INSERT INTO billing_notes VALUES (1, 1, 'a'), (2, 2, 'b')",
            "UPDATE billing_notes SET note = 'c' WHERE id = 1", automation="billing-bot")
    run_bot("UPDATE tickets SET status = 'resolved' WHERE id <= 3")
    tables.execute("UPDATE billing_notes SET note = 'by hand' WHERE id = 2")  # a person: not an automation

    report, by_table = inventory(cli)
    notes = by_table["public.billing_notes"]
    assert (notes["owner"], notes["risk"], notes["kind"]) == ("billing-team", "high", "final")
    assert notes["capture"] == "tagged"
    assert notes["capture_state"] == "on" and notes["hold_rules"] == []
    assert notes["writers"] == {"billing-bot": 3}
    assert by_table["public.tickets"]["writers"] == {"ticket-bot": 3}

    [high] = warnings_of(report, "high-risk-no-hold")
    assert high["table"] == "public.billing_notes" and high["automations"] == ["billing-bot"]
    assert not warnings_of(report, "no-owner")

    text = cli("inventory").output
    assert "owner billing-team, risk high, kind final; capture tagged" in text
    assert "written by: billing-bot 3 rows" in text
    assert "! public.billing_notes is high-risk and billing-bot wrote to it, but no hold rule covers it" in text
    assert "How untracked writes are found (a heuristic):" in text


def test_a_hold_rule_for_the_automation_silences_the_warning(tables, run_bot, cli):
    track(tables, "billing_notes", owner="billing-team", risk="high")
    run_bot("INSERT INTO billing_notes VALUES (1, 1, 'a')", automation="billing-bot")
    added = cli("rule", "add", "billing_notes", "--when", "NEW.note IS NULL", "--hold", "--reason", "empty note",
                "--automation", "other-bot")
    assert added.exit_code == 0, added.output
    report, by_table = inventory(cli)
    assert by_table["public.billing_notes"]["hold_rules"] == [
        'rule 1 holds rows where NEW."note" IS NULL (other-bot): empty note']
    assert warnings_of(report, "high-risk-no-hold")  # the rule is for another automation
    tables.execute("""SELECT sidecar.add_rule('billing_notes', 'NEW."note" IS NULL', 'empty note')""")
    report, _ = inventory(cli)
    assert not warnings_of(report, "high-risk-no-hold")


def test_inventory_warns_about_no_owner_and_capture_switched_off(tables, run_bot, cli):
    track(tables, "tickets")
    run_bot("UPDATE tickets SET status = 'x' WHERE id = 1")
    tables.execute("ALTER TABLE tickets DISABLE TRIGGER sidecar_capture_update")
    report, by_table = inventory(cli)
    assert by_table["public.tickets"]["capture_state"] == "trigger disabled for update"
    [off] = warnings_of(report, "capture-off")
    assert "capture is off (trigger disabled for update)" in off["message"]
    [owner] = warnings_of(report, "no-owner")
    assert owner["message"].startswith("public.tickets is written by ticket-bot but names no owner")


def _stats_reported(conn, bot, pg_major, *tables: str) -> None:
    """Wait until the sessions' writes to `tables` show in pg_stat_user_tables, which the
    inventory reads. From 15 on a session can flush its counters on demand; on 14 a session
    sends them to the statistics collector when idle, at most every 500 ms, and they arrive
    a moment later."""
    if pg_major >= 15:
        bot.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT pg_stat_force_next_flush()")
        bot.execute("SELECT 1")  # the bot's counters reach pg_stat_user_tables once it is idle again
        return
    for _ in range(100):
        bot.execute("SELECT 1")
        conn.execute("SELECT 1")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        seen = conn.execute("SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY(%s) "
                            "AND n_tup_ins + n_tup_upd > 0", (list(tables),)).fetchone()[0]
        if seen == len(tables):
            return
        time.sleep(0.1)
    raise AssertionError(f"writes to {tables} never reached pg_stat_user_tables")


def test_untracked_table_an_automation_writes_is_warned(tables, bot, run_bot, cli, pg_major):
    track(tables, "tickets")
    # In one transaction the bot writes a tracked table and an untracked one.
    run_bot("WITH t AS (UPDATE tickets SET status = 'resolved' WHERE id = 1 RETURNING id) "
            "INSERT INTO audit_log (what) SELECT 'resolved ' || id FROM t")
    tables.execute("INSERT INTO billing_notes VALUES (9, 1, 'a person, no run')")
    _stats_reported(tables, bot, pg_major, "audit_log", "billing_notes")
    report, _ = inventory(cli)
    untracked = {u["table"]: u for u in report["untracked"]}
    assert set(untracked) == {"public.audit_log"}
    assert untracked["public.audit_log"]["automations"] == {"ticket-bot": 1}
    [warning] = warnings_of(report, "untracked-writes")
    assert warning["message"].startswith("public.audit_log is not tracked, yet ticket-bot appears to write it")
    assert "sidecar track public.audit_log" in warning["message"]
    assert any(h.startswith("- xmin:") for h in report["heuristic"])


def test_write_target_reads_the_table_a_statement_writes():
    assert write_target("INSERT INTO audit_log (what) VALUES ($1)") == "audit_log"
    assert write_target('update "Billing"."Notes" set x = $1') == '"Billing"."Notes"'
    assert write_target("DELETE FROM ONLY public.t WHERE id = $1") == "public.t"
    assert write_target("SELECT * FROM t") is None


@pytest.fixture
def people(tables, run_bot):
    """alice can pause; bob can undo through a team role; carol is an undoer who cannot write the
    tables, and needs not: the table's undo function writes with its owner's rights."""
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{suffix}" for k in ("alice", "bob", "carol", "ops")}
    q = {k: sql.Identifier(v) for k, v in names.items()}
    tables.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE sidecar_pauser").format(q["alice"]))
    tables.execute(sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE sidecar_undoer").format(q["ops"]))
    tables.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(q["bob"], q["ops"]))
    tables.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE sidecar_undoer").format(q["carol"]))
    tables.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON tickets TO {}").format(q["ops"]))
    track(tables, "tickets", owner="support")
    run_bot("UPDATE tickets SET status = 'x' WHERE id = 1")
    yield names
    for role in ("alice", "bob", "carol", "ops"):
        tables.execute(sql.SQL("DROP OWNED BY {}").format(q[role]))
        tables.execute(sql.SQL("DROP ROLE {}").format(q[role]))


def test_owners_says_who_can_do_each_duty_and_flags_gaps(people, cli):
    result = cli("owners", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["owners"]
    [bot] = [a for a in report["automations"] if a["automation"] == "ticket-bot"]
    assert bot["tables"] == ["public.tickets"] and bot["table_owners"] == {"public.tickets": "support"}
    duties = bot["duties"]
    holders = {d: {h["role"]: h["how"] for h in duties[d]["holders"]} for d in duties}
    assert holders["pause"][people["alice"]] == "via sidecar_pauser"
    assert holders["undo"][people["bob"]] == f"via {people['ops']} -> sidecar_undoer"
    assert holders["undo"][people["carol"]] == "via sidecar_undoer"
    # Members of the other groups read the logs too (they are members of sidecar_viewer).
    assert holders["logs"][people["alice"]] == "via sidecar_pauser -> sidecar_viewer"
    assert duties["pause"]["flag"] is None and duties["undo"]["flag"] is None
    assert duties["rerun"]["flag"] == "superusers only"
    assert any(f.startswith("ticket-bot: rerun: nobody but superusers") for f in report["flags"])

    text = cli("owners", "--automation", "ticket-bot").output
    assert text.startswith("Automation ticket-bot: writes public.tickets (owner support)")
    assert f"{people['alice']} (via sidecar_pauser)" in text
    assert "<- SUPERUSERS ONLY" in text
    assert f"{people['carol']} (via sidecar_undoer)" in text


def test_owners_flags_a_table_without_its_undo_function(people, tables, cli):
    """Tracked before undo functions existed, and its owner has not tracked it again."""
    tables.execute("DROP FUNCTION sidecar.undo_1(text, uuid, jsonb)")
    report = json.loads(cli("owners", "--json").output)["owners"]
    [bot] = [a for a in report["automations"] if a["automation"] == "ticket-bot"]
    unable = {h["role"]: h["how"] for h in bot["duties"]["undo"]["unable"]}
    assert unable[people["carol"]] == ("via sidecar_undoer, but public.tickets has no undo function: "
                                       "its owner runs sidecar track public.tickets")


def test_owners_flags_a_role_without_its_grant(people, tables, cli):
    tables.execute("REVOKE EXECUTE ON FUNCTION sidecar.pause(text, text) FROM sidecar_pauser")
    report = json.loads(cli("owners", "--json").output)["owners"]
    [bot] = [a for a in report["automations"] if a["automation"] == "ticket-bot"]
    assert people["alice"] not in {h["role"] for h in bot["duties"]["pause"]["holders"]}
    assert {h["role"] for h in bot["duties"]["pause"]["unable"]} == {people["alice"]}
    assert "role sidecar_pauser lacks EXECUTE on sidecar.pause(text,text): its members cannot do that; " \
           "grant it (sidecar install grants what it knows of)" in report["flags"]


def test_owners_before_any_run_covers_every_automation(tables, cli):
    track(tables, "tickets")
    report = json.loads(cli("owners", "--json").output)["owners"]
    assert [a["automation"] for a in report["automations"]] == ["*"]
    assert cli("owners").output.startswith("Every automation (none has run yet): writes public.tickets")


def test_inventory_keeps_who_ever_wrote_a_table_without_reading_all_history(tables, run_bot, cli):
    """Issue 25: the automations that ever wrote a table are kept in sidecar.table_writers and read
    forward from the last statement summarized; a purge of their history does not forget them."""
    track(tables, "tickets", "billing_notes")
    old = run_bot("UPDATE tickets SET status = 'old' WHERE id = 1", automation="old-bot")
    for t in ("runs", "actions"):
        tables.execute(sql.SQL("UPDATE sidecar.{} SET started_at = started_at - interval '100 days' "
                               "WHERE run_id = %s").format(sql.Identifier(t)), (old,))
    tables.execute("UPDATE sidecar.statements SET at = at - interval '100 days' WHERE run_id = %s", (old,))
    run_bot("INSERT INTO billing_notes VALUES (1, 1, 'a')", automation="new-bot")  # within the hour: read, not stored

    _, by_table = inventory(cli)
    assert by_table["public.tickets"]["automations_ever"] == ["old-bot"]
    assert by_table["public.billing_notes"]["automations_ever"] == ["new-bot"]
    stored = tables.execute("SELECT automation FROM sidecar.table_writers ORDER BY 1").fetchall()
    assert stored == [("old-bot",)]
    upto = tables.execute("SELECT read_upto FROM sidecar.table_writers_read").fetchone()[0]
    assert upto == tables.execute("SELECT max(stmt_id) FROM sidecar.statements WHERE run_id = %s", (old,)).fetchone()[0]

    purged = cli("purge", "--before", "90d", "--yes")
    assert purged.exit_code == 0, purged.output
    assert tables.execute("SELECT count(*) FROM sidecar.statements WHERE run_id = %s", (old,)).fetchone()[0] == 0
    _, by_table = inventory(cli)
    assert by_table["public.tickets"]["automations_ever"] == ["old-bot"]


def test_inventory_counts_each_statements_rows_once_and_keeps_the_count(tables, run_bot, cli):
    """Issue 25: rows written in the window are added up from counts kept per statement
    (sidecar.statement_rows), made from the images once; later calls count only new statements."""
    track(tables, "tickets")
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id <= 3", "DELETE FROM tickets WHERE id = 5")
    _, by_table = inventory(cli)
    assert by_table["public.tickets"]["writers"] == {"ticket-bot": 4}
    kept = tables.execute("SELECT s.op, c.rows FROM sidecar.statement_rows c JOIN sidecar.statements s USING (stmt_id) "
                          "ORDER BY c.stmt_id").fetchall()
    assert kept == [("U", 3), ("D", 1)]

    # The kept count is what is reported: the images are not counted again.
    tables.execute("UPDATE sidecar.statement_rows SET rows = 30 WHERE rows = 3")
    run_bot("INSERT INTO tickets VALUES (6, 'new')", automation="intake-bot")
    _, by_table = inventory(cli)
    assert by_table["public.tickets"]["writers"] == {"ticket-bot": 31, "intake-bot": 1}

    # Outside the window: neither reported nor counted.
    tables.execute("UPDATE sidecar.statements SET at = at - interval '30 days' WHERE run_id = %s", (first,))
    tables.execute("DELETE FROM sidecar.statement_rows")
    _, by_table = inventory(cli)
    assert by_table["public.tickets"]["writers"] == {"intake-bot": 1}
    assert tables.execute("SELECT count(*) FROM sidecar.statement_rows").fetchone()[0] == 1
    # A purge of every run: the counts of its statements go with the next call.
    tables.execute("UPDATE sidecar.runs SET started_at = started_at - interval '100 days'")
    assert cli("purge", "--before", "90d", "--yes").exit_code == 0
    inventory(cli)
    assert tables.execute("SELECT count(*) FROM sidecar.statement_rows").fetchone()[0] == 0
