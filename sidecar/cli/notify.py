"""`sidecar notify`: post sidecar's events (held changes, pauses, undos, conflicts, failed runs) to a webhook."""

from __future__ import annotations

import signal
import sys
import threading

import click

from ..ops import notify as notify_lib
from ._common import dsn_option, handles_errors


@click.command()
@dsn_option
@click.option("--webhook", required=True, metavar="URL",
              help="Where each event is POSTed as JSON (a Slack incoming webhook works as it is).")
@click.option("--events", metavar="LIST", default=",".join(notify_lib.DEFAULT_EVENTS), show_default=True,
              help=f"Which events, comma-separated, of: {','.join(notify_lib.EVENTS)}.")
@click.option("--console-url", metavar="URL", help="The console's address: each message links to its page.")
@click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
              help="Attempts after the first for a delivery that fails (waits 1 s, 2 s, 4 s ...).")
@click.option("--backoff", type=click.FloatRange(0.01, 60), default=1.0, hidden=True)
@handles_errors
def notify(dsn, webhook, events, console_url, retries, backoff):
    """Listen on the database's 'sidecar' channel and POST each event to --webhook.

    It only listens: no writer ever waits for it. Runs until SIGTERM or Ctrl-C, then
    delivers what it has received and exits 0. What it could not deliver is said on stderr.

    \b
    Example:
      sidecar notify --webhook https://hooks.slack.com/services/T0/B0/XXXX \\
          --events held,pause,failed --console-url https://sidecar.example.com
    """
    notifier = notify_lib.Notifier(
        dsn, notify_lib.check_url(webhook, "--webhook"), notify_lib.parse_events(events),
        notify_lib.check_url(console_url, "--console-url") if console_url else None,
        report=lambda line: click.echo(f"sidecar notify: {line}", err=True), retries=retries, backoff=backoff)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    names = ",".join(sorted(notifier.events))
    notifier.run(stop, ready=lambda: click.echo(f"sidecar notify: listening for {names}", err=True))
    click.echo(f"sidecar notify: stopped; {notifier.delivered} delivered, {notifier.undelivered} not", err=True)
    sys.exit(0)
