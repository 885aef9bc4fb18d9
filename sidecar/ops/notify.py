"""Alerts: what sidecar's SQL functions NOTIFY on channel 'sidecar', posted to a webhook.

    notifier = Notifier(dsn, "https://hooks.slack.com/services/...", events={"held", "pause"},
                        console_url="https://sidecar.example.com", report=print)
    notifier.run(stop)    # until stop (a threading.Event) is set

The payloads (sql/functions/fn_*.sql): held, approved, rejected, conflict (an approval that
found the row changed, or an undo that skipped conflicting rows), pause, resume, undo, rerun,
failed (a run that finished as failed). Each is posted as JSON with a Slack-compatible `text`
(a sentence, and a link to the console page when console_url is given) and the payload under
`sidecar`. The notifier only listens: a writer never waits for it. A delivery that fails is
retried with backoff (1 s, 2 s, 4 s ...; a 4xx other than 429 is not retried); what could not be
delivered is said through `report`. A lost connection is reopened; what was notified meanwhile
is missed, and said.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import db
from ..errors import SidecarError, UsageError
from ..text.describe import plural
from . import named as named_mod

EVENTS = ("held", "pause", "resume", "undo", "conflict", "failed", "approved", "rejected", "rerun")
DEFAULT_EVENTS = ("held", "pause", "undo", "conflict", "failed")
CHANNEL = "sidecar"
_OPS = {"I": "insert into", "U": "update of", "D": "delete from"}


def parse_events(text: str | None) -> set[str]:
    """`held,pause` -> {"held", "pause"}; an unknown name is a usage error naming the known ones."""
    names = {n.strip().lower() for n in (text or ",".join(DEFAULT_EVENTS)).split(",") if n.strip()}
    unknown = sorted(names - set(EVENTS))
    if unknown or not names:
        raise UsageError(f"--events: unknown event {', '.join(unknown) or '(none given)'}; "
                         f"choose from {','.join(EVENTS)}")
    return names


def check_url(url: str, option: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise UsageError(f"{option} {url!r} is not an http(s) URL")
    return url.rstrip("/") if option == "--console-url" else url


def _escape(value: Any) -> str:
    """Text from automations and models, as Slack shows it and never parses it (&, <, >)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(run: Any) -> str:
    return _escape(str(run or "")[:8])


def _held(p: dict[str, Any], named: dict[int, tuple[str, str]]) -> str:
    """The held changes of an approved, rejected or conflict payload: `held change 2 (Add refund #2
    (ticket "..." (#42), amount 1240.00))` with its records named, else their ids."""
    ids = p.get("pending_ids") or []
    if (not isinstance(ids, list) or not ids or len(ids) > 3
            or not all(isinstance(i, int) and i in named for i in ids)):
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return ("held change " if len(ids) == 1 else "held changes ") + ", ".join(map(str, ids))
        return f"held changes {_escape(ids)}"
    return "; ".join(f"held change {_escape(i)} ({_escape(named[i][0])})" for i in ids)


def _sentence(p: dict[str, Any], automation: str | None,
              named: dict[int, tuple[str, str]]) -> tuple[str, str]:
    """(sentence, console path) for one payload."""
    event, who = p.get("event"), _escape(automation or "an automation")
    if event == "held" and p.get("pending_id") in named:
        return (f"{who}'s change is held for review: {_escape(named[p['pending_id']][0])} "
                f"(rule {_escape(p.get('rule_id'))}: {_escape(p.get('reason'))}; "
                f"action {_escape(p.get('action'))}).", "/queue")
    if event == "held":
        what = f"{_OPS.get(p.get('op'), 'change of')} {_escape(p.get('table'))} {_escape(p.get('key'))}"
        return (f"{who}'s {what} is held for review (rule {_escape(p.get('rule_id'))}: "
                f"{_escape(p.get('reason'))}; action {_escape(p.get('action'))}).", "/queue")
    if event in ("pause", "resume"):
        target = p.get("target")
        name = ("every automation" if target == "*" else _escape(target)) if p.get("scope") == "automation" \
            else f"table {_escape(p.get('label') or target)}"
        reason = f": {_escape(p['reason'])}" if p.get("reason") else ""
        return f"{'Paused' if event == 'pause' else 'Resumed'} {name}{reason}.", "/automations"
    if event == "undo":
        return f"{_escape(p.get('summary') or 'Undid run ' + str(p.get('run')))}.", f"/runs/{p.get('undo_run')}"
    if event == "conflict" and p.get("undo_run"):
        rows = p.get("rows")
        rows = plural(rows, "conflicting row") if isinstance(rows, int) else f"{_escape(rows)} conflicting rows"
        one = p.get("rows") == 1
        return (f"The undo of run {_short(p.get('run'))} skipped {rows}: "
                + ("it changed since the run. A person decides about it." if one else
                   "they changed since the run. A person decides about them."), f"/runs/{p.get('undo_run')}")
    if event == "conflict":
        return (f"Approval of {_held(p, named)} refused: the row changed since it "
                "was held; nothing was applied.", "/queue")
    if event in ("approved", "rejected"):
        why = f": {_escape(p['why'])}" if p.get("why") else ""
        return f"{event.capitalize()} {_held(p, named)}{why}.", "/queue"
    if event == "failed":
        return (f"{who}'s run {_short(p.get('run'))} failed: {_escape(p.get('error') or 'no error text')}.",
                f"/runs/{p.get('run')}")
    if event == "rerun":
        return f"Run {_short(p.get('run'))} is rerun as {_short(p.get('rerun'))}.", f"/runs/{p.get('rerun')}"
    return f"sidecar event {_escape(event)}.", "/events"


def message(payload: dict[str, Any], *, automation: str | None = None, console_url: str | None = None,
            named: dict[int, tuple[str, str]] | None = None) -> dict:
    """The JSON document posted for one payload; named (ops.named.held_changes) names the held
    changes it is about, their foreign keys as records. The payload stays as it was under `sidecar`."""
    sentence, path = _sentence(payload, automation, named or {})
    url = f"{console_url}{path}" if console_url else None
    return {"text": f"sidecar: {sentence}" + (f" {url}" if url else ""),
            "sidecar": {**payload, "automation": automation, "url": url}}


class DeliveryError(Exception):
    def __init__(self, reason: str, retry: bool, wait: float | None = None):
        super().__init__(reason)
        self.retry, self.wait = retry, wait


def post(url: str, body: dict, *, timeout: float = 10) -> None:
    """POST body as JSON; DeliveryError says why not and whether trying again may help."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "sidecar-notify"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        wait = exc.headers.get("Retry-After") if exc.headers else None
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}", retry=exc.code == 429 or exc.code >= 500,
                            wait=float(wait) if wait and wait.isdigit() else None) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(str(getattr(exc, "reason", exc)), retry=True) from None


@dataclass
class Notifier:
    dsn: str | None
    webhook: str
    events: set[str] = field(default_factory=lambda: set(DEFAULT_EVENTS))
    console_url: str | None = None
    report: Callable[[str], None] = lambda line: None
    retries: int = 5  # attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled after each
    delivered: int = 0
    undelivered: int = 0
    _queue: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _automations: dict[str, str | None] = field(default_factory=dict, repr=False)

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Listen and deliver until stop is set; then deliver what was received (one try each) and return."""
        sender = threading.Thread(target=self._deliver_all, args=(stop,), name="sidecar-notify-sender")
        sender.start()
        try:
            self._listen(stop, ready)
        finally:
            stop.set()
            self._queue.put(None)
            sender.join()

    # -- listening ----------------------------------------------------------

    def _listen(self, stop: threading.Event, ready: Callable[[], None] | None) -> None:
        wait, first = self.backoff, True
        while not stop.is_set():
            try:
                with db.connect(self.dsn, application_name="sidecar notify") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        self.report("listening again; events notified while disconnected were missed")
                    if ready:
                        ready()
                        ready = None
                    first, wait = False, self.backoff
                    while not stop.is_set():
                        # Collected first: the connection answers the lookups once the generator is done.
                        for note in list(conn.notifies(timeout=0.5)):
                            self._received(conn, note.payload)
            except (psycopg.OperationalError, SidecarError) as exc:
                if first and ready is not None:
                    raise  # cannot connect at all: the caller says so and exits
                what = "lost the database connection" if isinstance(exc, psycopg.Error) else "still no database"
                self.report(f"{what} ({str(exc).strip().splitlines()[0]}); reconnecting in {wait:g} s")
                stop.wait(wait)
                wait = min(wait * 2, 60)

    def _received(self, conn: psycopg.Connection, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"event": "unknown", "payload": text}
        if payload.get("event") not in self.events:
            return
        ids = payload.get("pending_ids") if isinstance(payload.get("pending_ids"), list) else []
        ids = ([payload["pending_id"]] if isinstance(payload.get("pending_id"), int) else []) + ids[:3]
        self._queue.put(message(payload, automation=self._automation(conn, payload),
                                console_url=self.console_url, named=named_mod.held_changes(conn, ids)))

    def _automation(self, conn: psycopg.Connection, payload: dict) -> str | None:
        if payload.get("automation"):
            return payload["automation"]
        run = payload.get("run_id") or payload.get("run")
        if not run:
            return None
        if run not in self._automations:
            row = conn.execute("SELECT automation FROM sidecar.runs WHERE run_id = %s", (run,)).fetchone()
            self._automations[run] = row[0] if row else None
        return self._automations[run]

    # -- delivering ---------------------------------------------------------

    def _deliver_all(self, stop: threading.Event) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                if self._queue.empty():
                    return
                continue
            self._deliver(body, stop)

    def _deliver(self, body: dict, stop: threading.Event) -> None:
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                post(self.webhook, body)
                self.delivered += 1
                return
            except DeliveryError as exc:
                last = exc
                if not exc.retry or attempt == self.retries or stop.is_set():
                    break
                if stop.wait(min(exc.wait or wait, 60)):
                    break  # stopping: no more waiting
                wait *= 2
        self.undelivered += 1
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        self.report(f"could not deliver the {body['sidecar'].get('event')} event after {tries} ({last}): "
                    f"{body['text']}")
