"""`sidecar mcp`: serve the agents' database tool (its extra, `rollback-sidecar[mcp]`, is loaded only here)."""

from __future__ import annotations

import uuid

import click

from ..errors import SidecarError, UsageError
from ._common import dsn_option, handles_errors


@click.command()
@dsn_option
@click.option("--automation", required=True, help="The automation the agent's runs belong to, e.g. support-agent.")
@click.option("--http", is_flag=True, help="Serve streamable HTTP on loopback instead of stdio.")
@click.option("--port", default=8471, show_default=True, type=click.IntRange(1, 65535), help="With --http.")
@click.option("--run-id", help="Attach to this run (a rerun opened by `sidecar rerun`) instead of starting one.")
@click.option("--read-only", is_flag=True, help="Offer query and status only.")
@click.option("--operator", is_flag=True,
              help="Also offer runs, show_run, preview_undo and queue (the role needs the matching sidecar roles).")
@click.option("--allow-undo", is_flag=True, help="With --operator: also undo, never for this automation's own runs.")
@handles_errors
def mcp(dsn, automation, http, port, run_id, read_only, operator, allow_undo):
    """Serve a PostgreSQL tool for AI agents (MCP): every write a tagged, explained, undoable action.

    Example: sidecar mcp --dsn postgresql://agent@db/support --automation support-agent
    """
    if allow_undo and not operator:
        raise UsageError("--allow-undo goes with --operator")
    try:
        attach = uuid.UUID(run_id) if run_id else None
    except ValueError:
        raise UsageError(f"--run-id {run_id!r} is not a run id; use the full id `sidecar rerun` printed") from None
    try:
        from ..agents import mcp as mcp_server
    except ImportError as exc:
        raise SidecarError(
            f"sidecar mcp needs its extra ({exc.name} is missing): pip install 'rollback-sidecar[mcp]'"
        ) from None
    server = mcp_server.build_server(dsn, automation, run_id=attach, read_only=read_only, operator=operator,
                                     allow_undo=allow_undo, command=click.get_current_context().find_root().command)
    mcp_server.serve(server, http=http, port=port)
