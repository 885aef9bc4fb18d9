"""The console's web layer: templates and their filters, the page decorator that signs people
in and picks the connection, sign-in and sign-out, security headers. Pages (pages.py) and the
app (app.py) build on it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
from asgi_csrf import Errors
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..capture import settle
from ..errors import SidecarError
from ..text import describe
from .auth import Rights, Session, Sessions, SignInError, rights_of
from .drafts import Draft, Typed, capture, safe_path

HERE = Path(__file__).parent
PER_PAGE = 50
CUT = 80  # characters of a value shown before "show all"


# -- rendering helpers ---------------------------------------------------------

def _time(value: datetime | None) -> Markup:
    """A time as UTC in <time datetime>; live.js shows it in the viewer's time zone."""
    if value is None:
        return Markup("-")
    utc = value.astimezone(timezone.utc)
    return Markup('<time datetime="{}">{} UTC</time>').format(
        utc.isoformat().replace("+00:00", "Z"), utc.strftime("%Y-%m-%d %H:%M:%S"))


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, Decimal):
        return str(v)
    return describe.value(v, limit=10**9)


def _raw(v: Any) -> str:
    """The raw values, as captured (JSON)."""
    return json.dumps(v, indent=1, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Named:
    """A value shown by what it names (customer Northwind Solar (#2)); the raw value is in the change's raw view."""

    text: str
    raw: Any


def _value(v: Any) -> Markup:
    """A value in full when short; cut, with a way to see all, when long; times and names as people read them."""
    if v is None:
        return Markup('<span class="empty">empty</span>')
    if isinstance(v, Named):
        return escape(v.text)
    at = describe.as_time(v)
    if at is not None:
        return _time(at)
    text = _text(v)
    if len(text) <= CUT:
        return escape(text)
    return Markup('<details class="long"><summary>{}… <span class="more">show all {} characters</span></summary>'
                  '<div class="full">{}</div></details>').format(text[:CUT], f"{len(text):,}", text)


def _sentence(change, labels=None) -> str:
    """A change as a sentence, records named; a bulk UPDATE's row that kept its values says so."""
    if change.op == "U" and not change.changed_columns:
        image = change.after or change.before
        label = describe.row_name(change.table, change.key, image, labels, change.label_column, change.display_name)
        return f"Wrote {label} with the values it already had (no change)"
    return describe.named_sentence(change, labels)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=_time, value=_value, short=lambda run_id: str(run_id)[:8],
                       table=describe.table_name, number=lambda n: f"{n:,}", raw=_raw)
    env.globals.update(plural=describe.plural, sentence=_sentence)
    return env


@dataclass
class Pager:
    number: int
    total: int
    per_page: int = PER_PAGE
    args: dict[str, str] = field(default_factory=dict)
    param: str = "page"
    more: bool = False  # total was counted only so far: there are more

    @classmethod
    def of(cls, request: Request, total: int, per_page: int = PER_PAGE, param: str = "page",
           more: bool = False) -> "Pager":
        try:
            number = max(1, int(request.query_params.get(param, "1")))
        except ValueError:
            number = 1
        args = {k: v for k, v in request.query_params.items() if k != param and v}
        return cls(number, total, per_page, args, param, more)

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def url(self, number: int) -> str:
        return "?" + urlencode({**self.args, self.param: number})


# -- the request context -------------------------------------------------------

class Page:
    """What a page handler gets: the request, its form, a connection as the signed-in person, their rights."""

    def __init__(self, console: "Console", request: Request, session: Session, conn: psycopg.Connection,
                 rights: Rights, form: FormData | None):
        self.console, self.request, self.session = console, request, session
        self.conn, self.rights, self.form = conn, rights, form

    def field(self, name: str) -> str:
        return str(self.form.get(name, "")).strip() if self.form is not None else ""

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        waiting = None
        if self.rights.has_queue and not template.startswith("_"):
            waiting = self.conn.execute(
                "SELECT count(*) FROM sidecar.pending WHERE status IN ('pending', 'conflict')").fetchone()[0]
        return self.console.render(self.request, template, status=status, session=self.session,
                                   rights=self.rights, waiting=waiting, **context)

    def redirect(self, url: str, message: str | None = None, kind: str = "ok") -> RedirectResponse:
        if message:
            self.session.flashes.append((kind, message))
        return RedirectResponse(url, status_code=303)


class Console:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.env = _templates()

    def render(self, request: Request, template: str, *, status: int = 200, session: Session | None = None,
               rights: Rights | None = None, **context: Any) -> HTMLResponse:
        flashes, draft = [], None
        if session is not None and not template.startswith("_"):  # a fragment (live.js) leaves them for the page
            flashes, session.flashes = session.flashes, []
            draft, session.draft = session.draft, None
        context.setdefault("waiting", None)
        html = self.env.get_template(template).render(
            request=request, path=request.url.path, csrf=request.scope["csrftoken"](), session=session,
            rights=rights, flashes=flashes, typed=Typed(draft), **context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _signed_in(request: Request) -> Session | None:
    session = request.app.state.console.sessions.get(request.session.get("sid"))
    if session is None and request.session:
        request.session.clear()
    return session


def _to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET" or target == "/":
        return RedirectResponse("/signin", status_code=303)
    return RedirectResponse("/signin?" + urlencode({"next": target}), status_code=303)


def page(needs: str | None = None, *, changes: str | None = None, back: str = "/") -> Callable:
    """Make a page handler an endpoint: signed in only, run in a thread, as the person, with `needs` right.

    changes: the handler is a form that changes something (a key of drafts.DESCRIBE). When it
    cannot be done (signed out, database out of reach) nothing is, and what the person typed
    comes back on the form's page (`back` when the form's page is not known)."""

    def wrap(handler: Callable[[Page], Response]) -> Callable:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            session = _signed_in(request)
            form = await request.form() if request.method == "POST" else None
            draft = capture(request, form, changes, back) if changes and form is not None else None
            if session is None:
                if draft is not None:
                    return _sign_in_again(request, draft, "Your session had ended")
                return _to_sign_in(request)
            return await run_in_threadpool(_serve, handler, needs, request, session, form, draft)

        endpoint.signed_in_only = True
        return endpoint

    return wrap


def _serve(handler, needs, request: Request, session: Session, form, draft: Draft | None = None) -> Response:
    console: Console = request.app.state.console
    try:
        with console.sessions.connection(session) as conn:
            settle.keep_settled(conn)  # row-mode statements before any page reads history
            rights = rights_of(conn)
            ctx = Page(console, request, session, conn, rights, form)
            if needs and not getattr(rights, needs):
                return ctx.render("error.html", status=403, title="Not allowed",
                                  message=f"{rights.user} may not do this; it needs the sidecar_{needs}er role "
                                          "(ask a DBA).")
            try:
                return handler(ctx)
            except psycopg.OperationalError:
                raise
            except (SidecarError, psycopg.Error) as exc:
                message = _message(exc)
                status = 403 if isinstance(exc, psycopg.errors.InsufficientPrivilege) else 400
                if draft is not None:
                    session.draft = draft  # the form comes back with what was typed
                    return ctx.redirect(draft.back, message, "error")
                return ctx.render("error.html", status=status, title="That did not work", message=message)
    except SignInError as exc:
        return console.render(request, "error.html", status=503, title="Console unavailable", message=str(exc))
    except psycopg.OperationalError as exc:
        if _signed_out_by_the_database(exc):
            # The password the person signed in with is not accepted any more: sign in again.
            console.sessions.sign_out(session.sid)
            request.session.clear()
            if draft is not None:
                return _sign_in_again(request, draft, "Your password was not accepted any more (changed?)")
            return RedirectResponse("/signin?" + urlencode({"why": "password"}), status_code=303)
        return _unreachable(request, session, draft)


def _unreachable(request: Request, session: Session, draft: Draft | None) -> Response:
    """The database cannot be reached: nothing was done; the person stays signed in."""
    console: Console = request.app.state.console
    if draft is not None:
        page = console.render(request, "interrupted.html", status=503, session=session, draft=draft,
                              why="The database could not be reached")
        session.draft = draft  # the form's page gives it back once the database answers
        return page
    return console.render(request, "error.html", status=503, session=session, title="The database cannot be reached",
                          message="The database cannot be reached right now (it may be restarting). You are still "
                                  "signed in, and your password is fine: try again in a moment.",
                          retry=request.url.path + (f"?{request.url.query}" if request.url.query else ""))


def _sign_in_again(request: Request, draft: Draft, why: str) -> Response:
    """Signed out before a form was done: say that nothing was done; sign in brings the form back."""
    console: Console = request.app.state.console
    return console.render(request, "signin.html", status=401, user="", next=draft.back, draft=draft,
                          error=f"{why}, so nothing was done: {draft.not_done}. Sign in again and you come "
                                "back to the form with what you typed.")


def _signed_out_by_the_database(exc: psycopg.OperationalError) -> bool:
    """The person's password or role no longer lets them in (not a server that is away)."""
    text = str(exc)
    return "authentication failed" in text or ("role" in text and "does not exist" in text)


def _message(exc: Exception) -> str:
    if isinstance(exc, SidecarError) and not isinstance(exc, psycopg.Error):
        return exc.without_shell()  # the console offers links and buttons, not commands
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        text = (diag.message_primary or str(exc)).removeprefix("sidecar: ")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            text = f"PostgreSQL refused: {text}. Nothing was changed."
        if diag.message_hint:
            text += f" ({diag.message_hint})"
        return text
    return str(exc)


# -- sign-in -------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    return safe_path(target)


async def sign_in_page(request: Request) -> Response:
    console: Console = request.app.state.console
    if _signed_in(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    error = None
    if request.query_params.get("why") == "password":
        error = "Your password was not accepted any more (changed?); please sign in again."
    status = 200
    user = ""
    draft = None
    if request.method == "POST":
        form = await request.form()
        user = str(form.get("user", ""))
        draft = Draft.from_json(str(form.get("_draft", ""))) if form.get("_draft") else None
        try:
            session = await run_in_threadpool(console.sessions.sign_in, user, str(form.get("password", "")))
        except SignInError as exc:
            await asyncio.sleep(1)  # slows down guessing passwords
            error, status = str(exc), 401
        else:
            request.session.clear()
            request.session["sid"] = session.sid
            if draft is not None:
                session.draft = draft
                session.flashes.append(("warn", f"Nothing was done while you were signed out: {draft.not_done}. "
                                                f"What you typed is filled in below; press {draft.button!r} again."))
                return RedirectResponse(draft.back, status_code=303)
            return RedirectResponse(_safe_next(str(form.get("next", ""))), status_code=303)
    return console.render(request, "signin.html", status=status, error=error, user=user, draft=draft,
                          next=_safe_next(request.query_params.get("next") or None))


async def sign_out(request: Request) -> Response:
    request.app.state.console.sessions.sign_out(request.session.get("sid"))
    request.session.clear()
    return RedirectResponse("/signin", status_code=303)


async def home(request: Request) -> Response:
    if _signed_in(request) is None:
        return _to_sign_in(request)
    return RedirectResponse("/automations", status_code=303)


home.signed_in_only = True


# -- the application -----------------------------------------------------------

class SecurityHeaders:
    """Headers every response gets: no framing, scripts and styles only from /static."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def csrf_failed(scope, send, error: Errors) -> None:
    """A form whose token no longer matches (the console restarted, or another site sent it): nothing
    was done; the way back is the page the form was on, where it can be sent again."""
    headers = dict(scope.get("headers") or [])
    referer = headers.get(b"referer", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    back = "/"
    for scheme in ("http://", "https://"):
        if host and referer.startswith(f"{scheme}{host}/"):
            back = safe_path(referer[len(scheme + host):])
    body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Nothing was done · sidecar console</title>"
            "<link rel=stylesheet href='/static/console.css'><header class=top><span class=brand>sidecar</span>"
            "</header><main><h1>Nothing was done</h1><p class='flash error' role=alert>That form could not be "
            "accepted: it was sent from a page older than the console's last start (or from another site), "
            "so nothing was done.</p><p>Go back to the page, which is loaded afresh, and send the form again."
            f"</p><p><a class=button href='{escape(back)}'>Back to the page</a></p></main>")
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/html; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body.encode()})


def lifespan(sessions: Sessions):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        sessions.close_all()

    return lifespan


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 in the console's style, with a way back (a GET of a form's address is a 405)."""
    console: Console = request.app.state.console
    session = _signed_in(request) if "session" in request.scope else None
    status = getattr(exc, "status_code", 404)
    path = request.url.path
    if status == 405:
        parent = path.rsplit("/", 1)[0] or "/"
        if parent.startswith("/queue/"):
            parent = "/queue"
        title = "This address is not a page"
        message = ("It is where a button sends its form, so there is nothing to show here, and nothing was done. "
                   "The page the button is on is one click away.")
        links = [(parent, "Go to the page with the button")]
    else:
        status = 404
        title = "Page not found"
        message = f"There is no page at {path}."
        links = [("/runs", "See the runs"), ("/automations", "See the automations")]
    return console.render(request, "error.html", status=status, session=session, title=title, message=message,
                          links=links)
