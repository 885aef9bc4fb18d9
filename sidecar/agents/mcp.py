"""`sidecar mcp`: a PostgreSQL tool for AI agents (Model Context Protocol), safe by construction.

Built on the official `mcp` SDK (extra `rollback-sidecar[mcp]`). The agent gets `query`
(reads only), `execute` (each call one explained action of the session's run: paused,
held, refused or done, said in words a model acts on) and `status`. One MCP session is
one run of `--automation`, started at its first write and finished when the server stops
(over stdio, when the host ends the session).
With `--operator`, also `runs`, `show_run`, `preview_undo` and `queue` (their text is the
CLI's own); `undo` only with `--allow-undo`, and never for the automation's own runs.
The work is in session.AgentSession; this module only exposes it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import click
from click.testing import CliRunner
from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from .. import db
from ..steps import runs as runs_mod
from .session import AgentSession

INSTRUCTIONS = """\
A PostgreSQL database whose writes are recorded, explained and undoable.
Read with `query`. Write with `execute`, one logical change per call, always with `why` (one
sentence a person will read), `read` (what you based it on: row references like
{"table": "tickets", "key": 42} or short excerpts) and `confidence` (0 to 1).
If a result says "held", a person will decide: do not retry. If it says "stop", the automation
is paused: stop working and report. Use `step` (a stable key such as "refund:ticket-42") for work
that must happen once: a step done already is skipped, so retrying after a timeout is safe.
Call `status` to see your pause state and the decisions on your held writes."""


def build_server(dsn: str | None, automation: str, *, run_id: uuid.UUID | None = None, read_only: bool = False,
                 operator: bool = False, allow_undo: bool = False, command: click.Command | None = None
                 ) -> MCPServer:
    """The MCP server. `command` is the `sidecar` CLI whose text the operator tools return."""
    # One server is one agent session and one run: over stdio the host starts one server per
    # agent session; over HTTP the protocol (2026-07-28) keeps no sessions, so every call this
    # server serves belongs to its one run. Give each agent a server of its own.
    sessions: list[AgentSession] = []

    def session_of(_ctx: Context | None = None) -> AgentSession:
        if not sessions:
            sessions.append(AgentSession(dsn, automation, run_id=run_id, read_only=read_only))
        return sessions[0]

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for s in sessions:
                s.close()

    server = MCPServer("sidecar", instructions=INSTRUCTIONS, lifespan=lifespan)

    @server.tool(description="Run one read-only SQL query (SELECT). Results as JSON rows, at most 200; "
                             "the result says when more rows exist (narrow the query then). Pass values as "
                             "params (a list for %s placeholders, or an object for %(name)s).")
    def query(sql: str, ctx: Context, params: list[Any] | dict[str, Any] | None = None) -> dict[str, Any]:
        return session_of(ctx).query(sql, params)

    if not read_only:
        @server.tool(description=(
            "Write to the database: one INSERT, UPDATE, DELETE or MERGE (or a list of them, run in one "
            "transaction), recorded as one action of your run that a person can review and undo. `why` is "
            "required: one sentence on why this change is right. `read`: what you based it on (row references "
            "such as {\"table\": \"tickets\", \"key\": 42}, or short excerpts). `confidence`: 0 to 1. `step`: a "
            "stable key for work that must happen once (a step done already is skipped). The result says done "
            "(rows changed), held (a person decides: do not retry), stop (paused: stop working) or refused "
            "(nothing was written)."))
        def execute(sql: str | list[str], why: str, ctx: Context,
                    params: list[Any] | dict[str, Any] | None = None,
                    read: list[Any] | None = None,
                    confidence: Annotated[float | None, Field(ge=0, le=1)] = None,
                    step: str | None = None) -> dict[str, Any]:
            return session_of(ctx).execute(sql, params, why=why, read=read, confidence=confidence, step=step)

    @server.tool(description="Your automation's pause state, your run, and your held writes with each "
                             "person's decision. Call it before going on after a held or stopped result.")
    def status(ctx: Context) -> dict[str, Any]:
        return session_of(ctx).status()

    if operator:
        _operator_tools(server, dsn, automation, allow_undo, command)
    return server


def _operator_tools(server: MCPServer, dsn: str | None, automation: str, allow_undo: bool,
                    command: click.Command | None) -> None:
    if command is None:
        raise ValueError("operator tools need the sidecar CLI command")
    runner = CliRunner()

    def cli(*args: str) -> dict[str, Any]:
        env = {"SIDECAR_DSN": dsn} if dsn else {}
        result = runner.invoke(command, list(args), env=env, catch_exceptions=False)
        return {"exit_code": result.exit_code, "text": result.output.strip()}

    @server.tool(description="Operator: recent runs, newest first, with rows changed per table.")
    def runs(automation_name: str | None = None, limit: int = 20) -> dict[str, Any]:
        return cli("runs", "--limit", str(limit), *(["--automation", automation_name] if automation_name else []))

    @server.tool(description="Operator: one run in plain language: its actions, why, and each change.")
    def show_run(run_id: str) -> dict[str, Any]:
        return cli("show", run_id)

    @server.tool(description="Operator: what undoing a run would restore, and each conflict; changes nothing.")
    def preview_undo(run_id: str) -> dict[str, Any]:
        return cli("undo", run_id, "--preview")

    @server.tool(description="Operator: held writes waiting for a person's decision.")
    def queue() -> dict[str, Any]:
        return cli("queue")

    if allow_undo:
        @server.tool(description="Operator: undo a run (conflicting later edits are kept and listed). Not for "
                                 "runs of the automation this tool serves.")
        def undo(run_id: str, reason: str) -> dict[str, Any]:
            with db.connect(dsn) as conn:
                info = runs_mod.get(conn, run_id)
            if info.automation == automation:
                return {"exit_code": 2, "text": f"refused: run {info.run_id} is a run of {automation}, the "
                                                "automation this tool serves; a person undoes it"}
            return cli("undo", str(info.run_id), "--yes", "--reason", reason)


def serve(server: MCPServer, *, http: bool = False, host: str = "127.0.0.1", port: int = 8471) -> None:
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its parser's warnings are not the agent's business
    if http:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run("stdio")
