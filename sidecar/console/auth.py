"""Who is signed in, and as whom the console works.

People sign in with their PostgreSQL user name and password. The console
checks them by connecting as that user, and does every request's database work
on a connection as that user, so the console can do no more than the same
person with psql or the CLI: PostgreSQL's grants decide.

The password stays in this process's memory, in the session record kept under a
random session id; the browser's cookie holds only that id (signed by
Starlette's SessionMiddleware). Sessions end after `idle` without a request,
when the person signs out, and when the console stops.
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg
from psycopg import conninfo

from .. import db

ROLES = ("sidecar_viewer", "sidecar_pauser", "sidecar_undoer", "sidecar_approver", "sidecar_rerunner")

_RIGHTS_QUERY = """
SELECT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)
       OR coalesce((SELECT pg_catalog.pg_has_role(current_user, nspowner, 'USAGE')
                    FROM pg_catalog.pg_namespace WHERE nspname = 'sidecar'), false) AS admin,
       ARRAY(SELECT rolname::text FROM pg_catalog.pg_roles
             WHERE rolname = ANY(%s) AND pg_catalog.pg_has_role(current_user, oid, 'USAGE')) AS roles,
       pg_catalog.to_regclass('sidecar.migrations') IS NOT NULL AS installed,
       pg_catalog.to_regclass('sidecar.pending') IS NOT NULL AS has_queue
"""


class SignInError(Exception):
    """Sign-in refused; the message is fit to show on the sign-in page."""


@dataclass(frozen=True)
class Rights:
    """What the signed-in person may do, from their PostgreSQL roles."""

    user: str
    admin: bool  # superuser or member of the sidecar schema's owner: everything
    roles: frozenset[str]
    has_queue: bool = False

    def _has(self, role: str) -> bool:
        return self.admin or role in self.roles

    @property
    def view(self) -> bool:
        return self.admin or bool(self.roles)

    @property
    def pause(self) -> bool:
        return self._has("sidecar_pauser")

    @property
    def undo(self) -> bool:
        return self._has("sidecar_undoer")

    @property
    def approve(self) -> bool:
        return self._has("sidecar_approver")

    @property
    def rerun(self) -> bool:
        return self._has("sidecar_rerunner")

    def describe(self) -> str:
        if self.admin:
            return "may do everything"
        names = [r.removeprefix("sidecar_") for r in ROLES if r in self.roles]
        return ", ".join(names) or "no sidecar role"


def rights_of(conn: psycopg.Connection) -> Rights:
    admin, roles, installed, has_queue = conn.execute(_RIGHTS_QUERY, (list(ROLES),)).fetchone()
    if not installed:
        raise SignInError("sidecar is not installed in this database; a DBA runs: sidecar install")
    return Rights(conn.info.user, bool(admin), frozenset(roles), bool(has_queue))


@dataclass
class Session:
    sid: str
    user: str
    password: str = field(repr=False)
    created: float
    last_seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)
    draft: Any = None  # a form that could not be done, given back on its page (drafts.Draft)
    spare: psycopg.Connection | None = field(default=None, repr=False)


class Sessions:
    """Signed-in people, in memory, keyed by a random session id."""

    def __init__(self, dsn: str | None, *, idle: float = 8 * 3600, require_password_check: bool = True):
        self.base = db.resolve_dsn(dsn)
        self.idle = idle
        self.require_password_check = require_password_check
        self._lock = threading.Lock()
        self._by_sid: dict[str, Session] = {}

    # -- connections -----------------------------------------------------------
    def connect_params(self, user: str, password: str) -> dict[str, Any]:
        """The console's DSN with the person's user name and password (never a stored one)."""
        params = conninfo.conninfo_to_dict(self.base) if self.base else {}
        params.update(user=user, password=password, passfile="/dev/null",
                      application_name="sidecar console", options=db._SESSION_OPTIONS)
        params.setdefault("connect_timeout", "10")
        return params

    def _open(self, user: str, password: str) -> psycopg.Connection:
        return psycopg.connect(autocommit=True, **self.connect_params(user, password))

    def sign_in(self, user: str, password: str) -> Session:
        """Check the user name and password by connecting as that user; a new session."""
        user = user.strip()
        if not user or not password:
            raise SignInError("Enter your PostgreSQL user name and password.")
        try:
            conn = self._open(user, password)
        except psycopg.OperationalError as exc:
            text = str(exc).replace(password, "***")
            if "password authentication failed" in text or "authentication failed" in text:
                raise SignInError("That user name and password do not match.") from None
            if "does not exist" in text and "database" in text:
                raise SignInError("The console's database does not exist; check its --dsn.") from None
            raise SignInError("The database cannot be reached; try again, or tell the operator of this console.") from None
        try:
            if self.require_password_check and not conn.pgconn.used_password:
                raise SignInError(
                    "The database let you in without checking a password (trust or peer authentication), "
                    "so the console cannot tell who you are. A DBA sets password authentication "
                    "(scram-sha-256) for the console's connections in pg_hba.conf."
                )
            rights = rights_of(conn)
            if not rights.view:
                raise SignInError(
                    f"{rights.user} has none of the sidecar roles; a DBA grants one, e.g. "
                    f"GRANT sidecar_viewer TO {rights.user};"
                )
        except BaseException:
            conn.close()
            raise
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), conn.info.user, password, now, now, spare=conn)
        with self._lock:
            self._by_sid[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._by_sid.get(sid)
            if session is not None:
                session.last_seen = now
            return session

    def peek(self, sid: str | None) -> Session | None:
        """The live session with this id, without restarting its idle clock (for the live stream)."""
        with self._lock:
            self._expire(time.monotonic())
            return self._by_sid.get(sid or "")

    def sign_out(self, sid: str | None) -> None:
        with self._lock:
            session = self._by_sid.pop(sid or "", None)
        if session is not None:
            self._close(session)

    def _expire(self, now: float) -> None:
        for sid in [s for s, x in self._by_sid.items() if now - x.last_seen > self.idle]:
            self._close(self._by_sid.pop(sid))

    @staticmethod
    def _close(session: Session) -> None:
        session.password = ""
        spare, session.spare = session.spare, None
        if spare is not None:
            spare.close()

    def close_all(self) -> None:
        with self._lock:
            sessions, self._by_sid = list(self._by_sid.values()), {}
        for session in sessions:
            self._close(session)

    @contextmanager
    def connection(self, session: Session) -> Iterator[psycopg.Connection]:
        """A connection as the session's user, for one request (one spare is kept per session)."""
        with self._lock:
            conn, session.spare = session.spare, None
        if conn is not None and not (conn.closed or conn.broken):
            try:
                conn.execute("SELECT")  # a spare left from before the server went away fails here, not mid-request
            except psycopg.OperationalError:
                conn.close()
        if conn is None or conn.closed or conn.broken:
            conn = self._open(session.user, session.password)
        try:
            yield conn
        finally:
            idle = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with self._lock:
                keep = idle and session.spare is None and session.password and session.sid in self._by_sid
                if keep:
                    session.spare = conn
            if not keep:
                conn.close()

    async def async_connection(self, session: Session) -> psycopg.AsyncConnection:
        """An async connection as the session's user (for LISTEN)."""
        return await psycopg.AsyncConnection.connect(autocommit=True,
                                                     **self.connect_params(session.user, session.password))
