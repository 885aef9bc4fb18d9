"""`sidecar status`: what ran and what waits, for a paused automation too."""

from __future__ import annotations

import json
import time

import sidecar


def ok(result):
    """A CLI call that must succeed: exit code 0, else its output in the failure."""
    assert result.exit_code == 0, result.output
    return result


def _refunds(sc, cli):
    sc.execute("CREATE TABLE refunds (id int PRIMARY KEY, ticket_id int NOT NULL, amount numeric NOT NULL, "
               "status text NOT NULL DEFAULT 'proposed')")
    sidecar.capture.tracking.track(sc, "refunds", display_name="refund")
    result = cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--hold", "--reason", "refund over limit")
    assert result.exit_code == 0, result.output


def test_status_of_a_paused_automation_lists_its_run_in_flight_and_its_held_item(sc, make_conn, cli):
    _refunds(sc, cli)
    bot = make_conn(application_name="refund-bot")
    with sidecar.Run(bot, "refund-bot") as run:
        bot.execute("INSERT INTO refunds (id, ticket_id, amount) VALUES (1, 42, 120)")  # lands
        bot.execute("INSERT INTO refunds (id, ticket_id, amount) VALUES (2, 43, 900)")  # held
        assert cli("pause", "refund-bot", "--reason", "refunds look wrong").exit_code == 0

        result = cli("status")
        assert result.exit_code == 0, result.output
        out = result.output
        short = str(run.run_id)[:8]
        assert "refund-bot           paused   1 run" in out
        assert "1 held change to review" in out
        assert "paused since" in out and "refunds look wrong" in out
        assert f"run {short} still running, last write " in out
        assert "Added refund #1 (" in out
        assert "#1  Add refund #2 (ticket id 43, amount 900, status 'proposed') (rule: refund over limit)" in out

        doc = json.loads(ok(cli("status", "--json")).output)
        (bot_state,) = [a for a in doc["automations"] if a["name"] == "refund-bot"]
        assert bot_state["state"] == "paused"
        assert bot_state["pending"] == 1
        (flight,) = bot_state["in_flight"]
        assert flight["run_id"] == str(run.run_id)
        assert flight["state"] == "running"
        assert flight["last_write_at"] is not None
        assert flight["last_write"].startswith("Added refund #1")
        (held,) = bot_state["held"]
        assert held["run_id"] == str(run.run_id)
        assert held["status"] == "pending"
        assert held["text"] == "Add refund #2 (ticket id 43, amount 900, status 'proposed') (rule: refund over limit)"


def test_status_counts_held_items_of_an_active_automation_and_names_abandoned_runs(sc, make_conn, cli):
    _refunds(sc, cli)
    bot = make_conn(application_name="refund-bot")
    with sidecar.Run(bot, "refund-bot"):
        bot.execute("INSERT INTO refunds (id, ticket_id, amount) VALUES (1, 41, 100)")  # lands
        for i in range(5):
            bot.execute("INSERT INTO refunds (id, ticket_id, amount) VALUES (%s, 40, 600)", (10 + i,))
    # Active: the count only; the items are in `sidecar queue`.
    out = ok(cli("status")).output
    assert "refund-bot           active   1 run" in out and "5 held changes to review" in out
    assert "waiting for review" not in out

    # A run whose session is gone, then the pause: abandoned, its last write said; 3 of 5 items listed.
    dead = make_conn(application_name="refund-bot")
    run = sidecar.Run(dead, "refund-bot").__enter__()
    dead.execute("UPDATE refunds SET status = 'sent' WHERE id = 1")
    pid = dead.info.backend_pid
    dead.close()
    for _ in range(100):  # the server ends the backend a moment after the client leaves
        if not sc.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            break
        time.sleep(0.05)
    ok(cli("pause", "*", "--reason", "big red button"))
    out = ok(cli("status")).output
    assert "EVERY AUTOMATION PAUSED" in out
    assert f"run {str(run.run_id)[:8]} abandoned (no live session), last write" in out
    assert "Changed status of refund #1 from 'proposed' to 'sent'" in out
    assert "… and 2 more: sidecar queue" in out
    assert out.count("(rule: refund over limit)") == 3
    doc = json.loads(ok(cli("status", "--json")).output)
    (bot_state,) = doc["automations"]
    assert bot_state["pending"] == 5 and len(bot_state["held"]) == 3
    assert [f["state"] for f in bot_state["in_flight"]] == ["abandoned"]


def test_status_says_how_history_follows_schema_changes(sc, cli):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sidecar.capture.tracking.track(sc, "tickets")
    assert "schema changes: followed at each ALTER TABLE" in ok(cli("status")).stdout

    # A DBA disables one: capture still relies on it until install renders it with the check.
    sc.execute("ALTER EVENT TRIGGER sidecar_watch_drop DISABLE")
    out = ok(cli("status")).stdout
    assert "SCHEMA CHANGES NOT FOLLOWED: event trigger sidecar_watch_alter or sidecar_watch_drop" in out
    assert json.loads(ok(cli("status", "--json")).stdout)["shapes"] == "lost"

    assert cli("install").exit_code == 0
    assert "schema changes: checked by every captured statement" in ok(cli("status")).stdout
