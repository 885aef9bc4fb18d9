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


def connect(dsn: str | None = None, *, autocommit: bool = True, application_name: str = "sidecar") -> psycopg.Connection:
    """Open a connection, turning failures into one clear line without the password."""
    resolved = resolve_dsn(dsn)
    try:
        return psycopg.connect(
            resolved, autocommit=autocommit, application_name=application_name, options=_SESSION_OPTIONS
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "connection refused"
        password = conninfo.conninfo_to_dict(resolved).get("password") if resolved else None
        if password:
            reason = reason.replace(password, "***")
        where = safe_dsn(resolved) if resolved else "libpq defaults (PGHOST, PGDATABASE, ...)"
        raise SidecarError(
            f"cannot connect to {where}: {reason}; pass --dsn or set SIDECAR_DSN"
        ) from None
