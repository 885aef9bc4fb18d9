"""Connections: where the DSN comes from, and errors that never show a password."""

from __future__ import annotations

import os
import re

import psycopg
from psycopg import conninfo

from .errors import SidecarError

# Settings every sidecar connection uses: a fixed search_path, so that no
# object in the user's schemas can stand in for a catalog function.
_SESSION_OPTIONS = "-c search_path=pg_catalog,public"


def resolve_dsn(dsn: str | None = None) -> str:
    """--dsn, else SIDECAR_DSN, else DATABASE_URL, else libpq's own defaults."""
    for candidate in (dsn, os.environ.get("SIDECAR_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    return ""


def safe_dsn(dsn: str) -> str:
    """The DSN with any password masked, for messages and logs."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    if "password" in params:
        params["password"] = "***"
    return conninfo.make_conninfo("", **params)


def _dsn_source(dsn: str | None) -> str:
    """Where the DSN came from, as the way out says it."""
    if dsn and dsn == os.environ.get("SIDECAR_DSN"):
        return "check SIDECAR_DSN"
    if dsn:
        return "check the --dsn value"
    if os.environ.get("SIDECAR_DSN"):
        return "check SIDECAR_DSN"
    if os.environ.get("DATABASE_URL"):
        return "check DATABASE_URL (or pass --dsn)"
    return "pass --dsn or set SIDECAR_DSN"


def connect_reason(exc: Exception) -> str:
    """libpq's report in one line, every line of it kept (the first says what failed)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return "connection refused"
    lines[0] = re.sub(r"^connection (is bad|failed): (?=connection to server)", "", lines[0])
    return lines[0] + (f" ({'; '.join(lines[1:])})" if len(lines) > 1 else "")


def connect(dsn: str | None = None, *, autocommit: bool = True, application_name: str = "sidecar") -> psycopg.Connection:
    """Open a connection, turning failures into one clear line without the password."""
    resolved = resolve_dsn(dsn)
    try:
        return psycopg.connect(
            resolved, autocommit=autocommit, application_name=application_name, options=_SESSION_OPTIONS
        )
    except psycopg.OperationalError as exc:
        reason = connect_reason(exc)
        try:
            password = conninfo.conninfo_to_dict(resolved).get("password") if resolved else None
        except psycopg.ProgrammingError:
            password = None
        if password:
            reason = reason.replace(password, "***")
        where = safe_dsn(resolved) if resolved else "libpq defaults (PGHOST, PGDATABASE, ...)"
        raise SidecarError(f"cannot connect to {where}: {reason}; {_dsn_source(dsn)}") from None
    except psycopg.ProgrammingError as exc:
        # Not a DSN at all (psycopg's parser refused it): say so, without echoing a password.
        raise SidecarError(f"the DSN {safe_dsn(resolved)!s} is not a connection string or URL "
                           f"({connect_reason(exc)}); {_dsn_source(dsn)}") from None
