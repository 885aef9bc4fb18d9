"""What every command shares: the --dsn and --json options, connecting, and turning
library errors into one line on stderr with the contract's exit code."""

from __future__ import annotations

import functools
import sys
from datetime import datetime, timedelta, timezone

import click
import psycopg

from .. import db
from ..capture import partitioning, settle
from ..errors import SidecarError, UsageError

EXIT_CONFLICTS = 3


def dsn_option(f):
    return click.option(
        "--dsn", envvar="SIDECAR_DSN", default=None, show_envvar=True,
        help="Database to work on (else DATABASE_URL, else libpq's PG* variables).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, for scripts.")(f)


def handles_errors(f):
    """Library errors become one clear line on stderr and their exit code."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except SidecarError as exc:
            if isinstance(exc, psycopg.Error):  # sidecar.errors' database errors: their one line and hint
                _database_error(exc)
            click.echo(f"sidecar: {exc}", err=True)
            sys.exit(exc.exit_code)
        except psycopg.errors.UndefinedTable as exc:
            if "sidecar." in str(exc):
                click.echo("sidecar: sidecar is not installed in this database; run: sidecar install", err=True)
                sys.exit(1)
            click.echo(f"sidecar: {exc.diag.message_primary}", err=True)
            sys.exit(1)
        except psycopg.errors.InvalidSchemaName:
            click.echo("sidecar: sidecar is not installed in this database; run: sidecar install", err=True)
            sys.exit(1)
        except psycopg.Error as exc:
            _database_error(exc)

    return wrapper


def _database_error(exc: psycopg.Error) -> None:
    message = getattr(exc, "message", None) or exc.diag.message_primary or str(exc).strip()
    hint = getattr(exc, "hint", None) or exc.diag.message_hint
    hint = f" ({hint})" if hint else ""
    click.echo(f"sidecar: {message.removeprefix('sidecar: ')}{hint}; nothing was changed", err=True)
    sys.exit(1)


def connect(dsn):
    conn = db.connect(dsn)
    # History partitions ahead of capture, when due (no cron to remember).
    partitioning.keep_ahead(conn)
    # Row-mode statements written from their heads, before anything reads history.
    settle.keep_settled(conn)
    return conn


def parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(timezone.utc) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r} is not a time; use e.g. 2h, 3d or 2026-11-01T09:00") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def progress_line():
    """On a terminal, each step of a long undo as it starts, with the time since the first."""
    if not sys.stderr.isatty():
        return None
    started = datetime.now()

    def say(step: str) -> None:
        click.echo(f"  [{(datetime.now() - started).total_seconds():6.1f}s] {step}…", err=True)

    return say
