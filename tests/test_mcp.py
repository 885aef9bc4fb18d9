"""`sidecar mcp`, driven as an agent drives it: the SDK's own client over stdio, a scripted agent
(no model) calling the tools, and the database checked afterwards."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.fix_sidecar import snapshot, track

mcp = pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[test]'")
from mcp import Client, StdioServerParameters  # noqa: E402


@pytest.fixture
def agent_dsn(sc, dsn):
    """A support database, and the role a DBA gives the agent: it writes tickets and refunds, owns nothing."""
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tier text NOT NULL DEFAULT 'standard')")
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, customer_id int REFERENCES customers, "
               "status text NOT NULL, note text)")
    sc.execute("CREATE TABLE refunds (id int PRIMARY KEY, ticket_id int REFERENCES tickets, amount numeric NOT NULL)")
    sc.execute("INSERT INTO customers VALUES (1, 'Northwind', 'enterprise'), (2, 'Contoso', 'standard')")
    sc.execute("INSERT INTO tickets VALUES (41, 1, 'open', NULL), (42, 2, 'open', NULL), (43, 2, 'open', NULL)")
    track(sc, "tickets", "refunds")
    role = f"agent_{uuid.uuid4().hex[:8]}"
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    sc.execute(sql.SQL("GRANT SELECT ON customers, tickets, refunds TO {0}; "
                       "GRANT INSERT, UPDATE, DELETE ON tickets, refunds TO {0}").format(sql.Identifier(role)))
    return make_conninfo(**dict(conninfo_to_dict(dsn), user=role))


def _text(result) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def agent(dsn: str, script, *args: str):
    """Start `sidecar mcp` over stdio and run the async script(client) against it; returns its result."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sidecar.cli", "mcp", "--dsn", dsn, "--automation", "support-agent",
                                         *args])

    async def main():
        async with Client(params, read_timeout_seconds=60) as client:
            return await script(client)

    return anyio.run(main)


async def call(client, tool: str, **arguments) -> dict[str, Any]:
    return _text(await client.call_tool(tool, arguments))


def test_each_write_is_one_explained_action_of_the_sessions_run(agent_dsn, sc, cli):
    async def script(client):
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"query", "execute", "status"} <= tools and "undo" not in tools
        read = await call(client, "query", sql="SELECT id, status FROM tickets WHERE customer_id = %s ORDER BY id",
                          params=[2])
        assert read["rows"] == [[42, "open"], [43, "open"]]
        first = await call(client, "execute", sql="UPDATE tickets SET status = 'closed' WHERE id = %s", params=[42],
                           why="the customer confirmed the fix", read=[{"table": "tickets", "key": 42}],
                           confidence=0.9)
        second = await call(client, "execute", why="both are duplicates of #41", confidence=0.7,
                            sql=["UPDATE tickets SET note = 'dup of 41' WHERE id = 43",
                                 "UPDATE tickets SET status = 'closed' WHERE id = 43"])
        return first, second

    first, second = agent(agent_dsn, script)
    assert first["status"] == "done" and first["rows_changed"] == 1 and "1 row changed" in first["message"]
    assert second["rows_changed"] == 2
    run_id = first["run_id"]
    assert second["run_id"] == run_id
    actions = sc.execute("SELECT a.key, a.context->>'why', (a.context->>'confidence')::float8, "
                         "(SELECT count(*) FROM sidecar.statements s WHERE s.action_id = a.action_id) "
                         "FROM sidecar.actions a WHERE a.run_id = %s ORDER BY a.action_id", (run_id,)).fetchall()
    assert actions == [("mcp-call-1", "the customer confirmed the fix", 0.9, 1),
                       ("mcp-call-2", "both are duplicates of #41", 0.7, 2)]
    # The session ended cleanly: the run is finished as succeeded, under the agent's automation.
    assert sc.execute("SELECT automation, status FROM sidecar.runs WHERE run_id = %s",
                      (run_id,)).fetchone() == ("support-agent", "succeeded")
    shown = cli("show", run_id)
    assert shown.exit_code == 0 and "the customer confirmed the fix" in shown.output


def test_a_held_write_is_reported_held_and_a_person_approves_it(agent_dsn, sc, cli):
    added = cli("rule", "add", "refunds", "--when", "NEW.amount > 100", "--reason", "refund over the limit")
    assert added.exit_code == 0, added.output

    async def script(client):
        small = await call(client, "execute", sql="INSERT INTO refunds VALUES (1, 42, 20)", why="goodwill refund")
        big = await call(client, "execute", sql="INSERT INTO refunds VALUES (2, 43, 650)", why="charged twice",
                         read=["email: I was charged twice for invoice 17"], confidence=0.6)
        status = await call(client, "status")
        return small, big, status

    small, big, status = agent(agent_dsn, script)
    assert small["status"] == "done"
    assert big["status"] == "held" and "do not retry" in big["message"] and "a person decides" in big["message"]
    (held,) = big["held"]
    assert held["table_name"] == "public.refunds" and held["status"] == "pending"
    assert status["held"][0]["pending_id"] == held["pending_id"] and not status["paused"]
    assert sc.execute("SELECT id FROM refunds ORDER BY id").fetchall() == [(1,)]
    approved = cli("approve", str(held["pending_id"]))
    assert approved.exit_code == 0, approved.output
    assert sc.execute("SELECT id, amount FROM refunds ORDER BY id").fetchall() == [(1, 20), (2, 650)]


def test_a_pause_stops_the_next_call_with_the_reason(agent_dsn, sc, cli):
    async def script(client):
        before = await call(client, "execute", sql="UPDATE tickets SET status = 'pending' WHERE id = 41",
                            why="waiting on the customer")
        paused = cli("pause", "support-agent", "--reason", "closing enterprise tickets by mistake")
        assert paused.exit_code == 0, paused.output
        stopped = await call(client, "execute", sql="UPDATE tickets SET status = 'closed' WHERE id = 42",
                             why="looks resolved")
        status = await call(client, "status")
        return before, stopped, status

    before, stopped, status = agent(agent_dsn, script)
    assert before["status"] == "done"
    assert stopped["status"] == "paused"
    assert stopped["message"].startswith("stop: ") and "closing enterprise tickets by mistake" in stopped["message"]
    assert "Do not retry" in stopped["message"]
    assert status["paused"] and status["pauses"][0]["reason"] == "closing enterprise tickets by mistake"
    assert sc.execute("SELECT status FROM tickets WHERE id = 42").fetchone() == ("open",)
    run_status, error = sc.execute("SELECT status, error FROM sidecar.runs WHERE run_id = %s",
                                   (before["run_id"],)).fetchone()
    assert run_status == "failed" and "paused" in error


def test_a_retried_step_is_not_written_twice(agent_dsn, sc):
    async def script(client):
        args = dict(sql="UPDATE tickets SET note = coalesce(note, '') || 'refund issued; ' WHERE id = 42",
                    why="refund issued for the double charge", step="refund-note:ticket-42")
        return await call(client, "execute", **args), await call(client, "execute", **args)

    first, retried = agent(agent_dsn, script)
    assert first["status"] == "done" and first["action"] == "refund-note:ticket-42"
    assert retried["status"] == "skipped" and "done already" in retried["message"]
    assert sc.execute("SELECT note FROM tickets WHERE id = 42").fetchone() == ("refund issued; ",)


FORBIDDEN = [  # (statement, what the refusal says)
    ("SET sidecar.run_id = '00000000-0000-0000-0000-000000000000'", "SET is not allowed"),
    ("SELECT set_config('sidecar.run_id', '00000000-0000-0000-0000-000000000000', false)", "set_config()"),
    ("UPDATE tickets SET status = pg_catalog.set_config('sidecar.action', 'x', true) WHERE id = 41", "set_config()"),
    ("SELECT sidecar.resume('support-agent')", "sidecar.resume() is sidecar's own function"),
    ("UPDATE sidecar.pending SET status = 'approved'", "sidecar's own tables"),
    ("TRUNCATE tickets", "TRUNCATE is not allowed"),
    ("ALTER TABLE tickets DISABLE TRIGGER ALL", "ALTER is not allowed"),
    ("DROP TABLE tickets", "DROP is not allowed"),
    ("DELETE FROM refunds; DELETE FROM tickets", "more than one statement"),
    ("DO $$ BEGIN DELETE FROM tickets; END $$", "DO is not allowed"),
]


def test_what_the_agent_cannot_do_is_refused_and_nothing_changes(agent_dsn, sc):
    before = snapshot(sc, "tickets")

    async def script(client):
        return [await call(client, "execute", sql=statement, why="trying") for statement, _ in FORBIDDEN]

    for (statement, said), result in zip(FORBIDDEN, agent(agent_dsn, script)):
        assert result["status"] == "refused", statement
        assert said in result["message"] and "Nothing was run" in result["message"], (statement, result)
    assert snapshot(sc, "tickets") == before
    assert sc.execute("SELECT count(*) FROM sidecar.runs").fetchone() == (0,)


def test_the_databases_privileges_stop_what_the_tool_would_let_through(agent_dsn, sc):
    """The other way round: the agent's role, connected directly, cannot use sidecar's controls either."""
    with psycopg.connect(agent_dsn, autocommit=True) as agent_conn:
        for call_sql in ("SELECT sidecar.resume('support-agent')", "SELECT sidecar.approve(1, 'me')",
                         "UPDATE sidecar.pending SET status = 'approved'", "ALTER TABLE tickets DISABLE TRIGGER ALL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                agent_conn.execute(call_sql)


def test_read_only_mode_and_queries_cannot_write(agent_dsn, sc):
    async def script(client):
        tools = {t.name for t in (await client.list_tools()).tools}
        sneaky = await call(client, "query", sql="WITH gone AS (DELETE FROM tickets RETURNING id) SELECT * FROM gone")
        capped = await call(client, "query", sql="SELECT g FROM generate_series(1, 500) g")
        return tools, sneaky, capped

    tools, sneaky, capped = agent(agent_dsn, script, "--read-only")
    assert tools == {"query", "status"}
    assert sneaky["status"] == "refused"
    assert len(capped["rows"]) == 200 and capped["more_rows"] and "more rows exist" in capped["message"]
    assert sc.execute("SELECT count(*) FROM tickets").fetchone() == (3,)


def test_an_undo_of_the_agents_run_from_the_cli_restores_everything(agent_dsn, sc, cli):
    before = snapshot(sc, "tickets")

    async def script(client):
        await call(client, "execute", sql="UPDATE tickets SET status = 'closed' WHERE customer_id = 2",
                   why="bulk close of Contoso tickets", confidence=0.4)
        return await call(client, "execute", sql="DELETE FROM tickets WHERE id = 41", why="spam")

    last = agent(agent_dsn, script)
    assert snapshot(sc, "tickets") != before
    undone = cli("undo", last["run_id"], "--yes")
    assert undone.exit_code == 0, undone.output
    assert snapshot(sc, "tickets") == before


def test_bad_options_are_one_clear_line(agent_dsn, cli):
    from click.testing import CliRunner

    from sidecar.cli import cli as sidecar_cli

    missing = CliRunner().invoke(sidecar_cli, ["mcp", "--dsn", agent_dsn])
    assert missing.exit_code == 2 and "--automation" in missing.output
    bad = CliRunner().invoke(sidecar_cli, ["mcp", "--dsn", agent_dsn, "--automation", "a", "--run-id", "nope"])
    assert bad.exit_code == 2 and "--run-id 'nope' is not a run id" in bad.output
    lone = CliRunner().invoke(sidecar_cli, ["mcp", "--dsn", agent_dsn, "--automation", "a", "--allow-undo"])
    assert lone.exit_code == 2 and "--allow-undo goes with --operator" in lone.output


def test_over_http_the_servers_calls_are_one_run_finished_when_it_stops(agent_dsn, sc):
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "mcp", "--dsn", agent_dsn, "--automation",
                               "support-agent", "--http", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)

        async def one_session(ticket: int):
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
                return await call(client, "execute", sql=f"UPDATE tickets SET status = 'closed' WHERE id = {ticket}",
                                  why=f"ticket {ticket} resolved")

        first = anyio.run(one_session, 42)
        second = anyio.run(one_session, 43)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert first["status"] == second["status"] == "done", err
    assert first["run_id"] == second["run_id"]
    # Stopping the server ends its run: finished, not left running.
    assert sc.execute("SELECT status FROM sidecar.runs WHERE automation = 'support-agent'").fetchall() == [
        ("succeeded",)]
    assert sc.execute("SELECT status FROM tickets WHERE id IN (42, 43)").fetchall() == [("closed",), ("closed",)]


def test_operator_tools_read_runs_and_undo_only_other_automations_runs(agent_dsn, sc, dsn, run_bot, cli):
    role = f"opr_{uuid.uuid4().hex[:8]}"
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE sidecar_viewer, sidecar_undoer").format(sql.Identifier(role)))
    sc.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON tickets TO {0}; GRANT SELECT ON customers TO {0}")
               .format(sql.Identifier(role)))
    operator_dsn = make_conninfo(**dict(conninfo_to_dict(dsn), user=role))
    other = run_bot("UPDATE tickets SET status = 'spam' WHERE id = 41", automation="triage-bot")

    async def own(client):
        return await call(client, "execute", sql="UPDATE tickets SET status = 'closed' WHERE id = 42", why="done")

    mine = agent(agent_dsn, own)

    async def script(client):
        tools = {t.name for t in (await client.list_tools()).tools}
        shown = await call(client, "show_run", run_id=str(other))
        preview = await call(client, "preview_undo", run_id=str(other))
        refused = await call(client, "undo", run_id=mine["run_id"], reason="trying my own")
        undone = await call(client, "undo", run_id=str(other), reason="triage-bot marked a real ticket as spam")
        return tools, shown, preview, refused, undone

    tools, shown, preview, refused, undone = agent(operator_dsn, script, "--operator", "--allow-undo")
    assert {"runs", "show_run", "preview_undo", "queue", "undo"} <= tools
    assert shown["exit_code"] == 0 and "triage-bot" in shown["text"]
    assert preview["exit_code"] == 0 and "tickets" in preview["text"], preview
    assert refused["exit_code"] == 2 and "a person undoes it" in refused["text"]
    assert undone["exit_code"] == 0, undone["text"]
    assert sc.execute("SELECT id, status FROM tickets WHERE id IN (41, 42) ORDER BY id").fetchall() == [
        (41, "open"), (42, "closed")]


def test_run_id_attaches_to_a_rerun_and_done_steps_are_skipped(agent_dsn, sc, cli):
    async def first_session(client):
        done = await call(client, "execute", sql="UPDATE tickets SET note = 'refund issued' WHERE id = 42",
                          why="refund issued", step="refund-note:ticket-42")
        failed = await call(client, "execute", sql="UPDATE tickets SET customer_id = 99 WHERE id = 43",
                            why="moved to the right customer", step="move:ticket-43")
        return done, failed

    done, failed = agent(agent_dsn, first_session)
    assert done["status"] == "done" and failed["status"] == "error"  # customer 99 does not exist
    run_id = done["run_id"]
    assert sc.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone() == ("failed",)
    opened = cli("rerun", run_id, "--json")
    assert opened.exit_code == 0, opened.output
    rerun_id = json.loads(opened.output)["rerun"]["rerun_id"]

    async def rerun_session(client):
        again = await call(client, "execute", sql="UPDATE tickets SET note = 'refund issued' WHERE id = 42",
                           why="refund issued", step="refund-note:ticket-42")
        fixed = await call(client, "execute", sql="UPDATE tickets SET customer_id = 1 WHERE id = 43",
                           why="moved to the right customer", step="move:ticket-43")
        return again, fixed

    again, fixed = agent(agent_dsn, rerun_session, "--run-id", rerun_id)
    assert again["status"] == "skipped" and "done already" in again["message"]
    assert fixed["status"] == "done" and fixed["run_id"] == rerun_id
    assert sc.execute("SELECT customer_id, note FROM tickets WHERE id IN (42, 43) ORDER BY id").fetchall() == [
        (2, "refund issued"), (1, None)]
    assert sc.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (rerun_id,)).fetchone() == ("succeeded",)
