"""The operator console: `sidecar serve`, a small server-rendered web app.

Libraries, and why:
- Starlette (ASGI) + uvicorn: small, well kept, async where it matters (the live
  state is a Server-Sent Events stream fed by psycopg's async LISTEN/NOTIFY) and
  plain threads for the rest: the sidecar library is synchronous psycopg, so each
  page runs in Starlette's thread pool on a connection as the signed-in person.
- Jinja2 (autoescaping) for the pages: HTML that works without JavaScript.
- Starlette's SessionMiddleware (itsdangerous-signed cookie, max_age = the idle
  expiry): the cookie holds only a random session id; credentials stay in memory
  on the server (auth.py).
- asgi-csrf (Simon Willison's, used by Datasette) against cross-site request
  forgery: a signed double-submit token that plain HTML forms carry in a hidden
  field (starlette-csrf reads only a header, which a form without JavaScript
  cannot send). Every POST, sign-in included, must carry it.
No crypto or token checking is written here.
"""

from __future__ import annotations

import secrets

from asgi_csrf import asgi_csrf
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import live, pages
from .auth import Sessions
from .web import (
    HERE,
    Console,
    SecurityHeaders,
    csrf_failed,
    home,
    http_error,
    lifespan,
    sign_in_page,
    sign_out,
)


def create_app(dsn: str | None = None, *, idle_hours: float = 8, require_password_check: bool = True,
               secret: str | None = None):
    """The console as an ASGI app. `dsn` says where (host, port, database); people bring who."""
    sessions = Sessions(dsn, idle=idle_hours * 3600, require_password_check=require_password_check)
    secret = secret or secrets.token_urlsafe(48)  # sessions live in memory: a restart signs everyone out anyway
    routes = [
        Route("/", home),
        Route("/signin", sign_in_page, methods=["GET", "POST"]),
        Route("/signout", sign_out, methods=["POST"]),
        *pages.routes(),
        Route("/live", live.stream),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SessionMiddleware, secret_key=secret, session_cookie="sidecar_session",
                               max_age=int(idle_hours * 3600), same_site="lax")],
        lifespan=lifespan(sessions),
        exception_handlers={404: http_error, 405: http_error},
    )
    app.state.console = Console(sessions)
    protected = asgi_csrf(SecurityHeaders(app), signing_secret=secret, always_protect={"/signin", "/signout"},
                          cookie_name="sidecar_csrf", send_csrf_failed=csrf_failed)
    protected.state = app.state
    protected.starlette = app
    return protected
