"""The demo's agent scene: a scripted agent (no model) works tickets through `sidecar mcp`,
as an MCP host would drive it, so a newcomer sees what an agent reads back: a write done as an
explained action, a statement refused, its status. Needs the `mcp` extra; says so without it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

AGENT_ROLE = "support_agent"
AUTOMATION = "support-agent"


def agent_dsn(admin_dsn: str) -> str:
    """The role a DBA gives the agent: it reads and writes tickets, owns nothing, holds no sidecar role."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        if not admin.execute("SELECT FROM pg_roles WHERE rolname = %s", (AGENT_ROLE,)).fetchone():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(AGENT_ROLE)))
        admin.execute(sql.SQL("GRANT SELECT, UPDATE ON tickets TO {}").format(sql.Identifier(AGENT_ROLE)))
    return make_conninfo(**dict(conninfo_to_dict(admin_dsn), user=AGENT_ROLE))


def play(admin_dsn: str, say: Callable[[str], None]) -> str | None:
    """Run the scene; returns the agent's run id, or None when the mcp extra is not installed."""
    try:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client
    except ImportError:
        say("(The agent scene needs the mcp extra: pip install 'rollback-sidecar[mcp]')")
        return None
    dsn = agent_dsn(admin_dsn)
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sidecar.cli", "mcp", "--dsn", dsn, "--automation", AUTOMATION])

    async def call(client, tool: str, **arguments) -> dict:
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items())
        say(f"agent -> {tool}({shown})")
        result = await client.call_tool(tool, arguments)
        answer = json.loads(result.content[0].text)
        say(f"  <- {answer.get('message', answer)}")
        return answer

    async def agent() -> str | None:
        # The server's stderr goes to the real one: stdio needs a file with a descriptor, which a
        # captured stream (click's test runner, say) is not.
        async with Client(stdio_client(params, errlog=sys.__stderr__), read_timeout_seconds=60) as client:
            await call(client, "query", sql="SELECT id, subject FROM tickets WHERE status = 'open' "
                                            "AND subject LIKE %s ORDER BY id", params=["Acme Corp:%"])
            done = await call(client, "execute", sql="UPDATE tickets SET status = 'waiting on customer' WHERE id = %s",
                              params=[46], why="asked Acme Corp for the PO number; nothing to do until they reply",
                              read=[{"table": "tickets", "key": 46}], confidence=0.93)
            await call(client, "execute", sql="TRUNCATE tickets", why="start over")
            await call(client, "status")
            return done.get("run_id")

    return anyio.run(agent)
