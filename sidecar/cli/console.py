"""`sidecar serve`: the operator console (its extra, `rollback-sidecar[console]`, is loaded only here)."""

from __future__ import annotations

import click

from ..db import resolve_dsn, safe_dsn
from ..errors import SidecarError
from ._common import dsn_option, handles_errors


@click.command()
@dsn_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback belongs behind an HTTPS proxy.")
@click.option("--port", default=8470, show_default=True, type=click.IntRange(1, 65535))
@click.option("--session-hours", default=8.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Sign people out after this long without a request.")
@click.option("--allow-unchecked-passwords", is_flag=True,
              help="Let people in when the database does not check passwords (trust/peer auth): "
                   "for throwaway test servers only.")
@handles_errors
def serve(dsn, host, port, session_hours, allow_unchecked_passwords):
    """Serve the operator console: people sign in with their PostgreSQL user and password.

    Example: sidecar serve --dsn postgresql://db.internal/app
    """
    try:
        import uvicorn

        from ..console.app import create_app
    except ImportError as exc:
        raise SidecarError(
            f"the console needs its extra ({exc.name} is missing): pip install 'rollback-sidecar[console]'"
        ) from None
    app = create_app(dsn, idle_hours=session_hours, require_password_check=not allow_unchecked_passwords)
    where = safe_dsn(resolve_dsn(dsn)) or "libpq defaults (PGHOST, PGDATABASE, ...)"
    click.echo(f"sidecar console on http://{host}:{port}/ for database {where}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("sidecar: listening beyond loopback: put the console behind HTTPS, "
                   "or passwords cross the network in clear", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
