"""`sidecar notify`: the real command, listening on the test's database, posting to a local webhook."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

import sidecar
from sidecar.review import rules
from tests.fix_sidecar import track, undo


class Webhook:
    """A local HTTP server that records what is POSTed; `statuses` are answered in turn (then 200)."""

    def __init__(self, statuses=()):
        self.bodies: list[dict] = []
        self.requests = 0
        self.statuses = list(statuses)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests += 1
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.bodies


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def start_notify(dsn):
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "notify", "--dsn", dsn, "--backoff", "0.05",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        line = proc.stderr.readline()
        assert "listening for" in line, line + proc.stderr.read()
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)")
    sc.execute("INSERT INTO tickets SELECT g, 'open' FROM generate_series(40, 45) g")
    track(sc, "tickets")
    return sc


def test_each_event_is_posted_with_a_sentence_and_a_link(tickets, bot, webhook, start_notify):
    rules.add_rule(tickets, "tickets", when="NEW.status = 'refunded'", reason="refunds need a person")
    proc = start_notify("--webhook", webhook.url, "--console-url", "http://console.test/")

    with sidecar.Run(bot, "ticket-bot") as run:
        bot.execute("UPDATE tickets SET status = 'refunded' WHERE id = 44")            # held
        bot.execute("UPDATE tickets SET status = '<!channel> resolved' WHERE id = 41")
    tickets.execute("UPDATE tickets SET status = 'reopened' WHERE id = 41")            # a person, since
    undo(tickets, run.run_id)                                                           # undo + conflict
    with pytest.raises(ValueError):
        with sidecar.Run(bot, "ticket-bot"):
            raise ValueError("model said <script>")                                     # failed
    tickets.execute("SELECT sidecar.pause('ticket-bot', 'refunds look wrong')")         # pause
    tickets.execute("SELECT sidecar.resume('ticket-bot')")                              # not asked for

    bodies = {b["sidecar"]["event"]: b for b in webhook.wait_for(5)}
    code, err = stop(proc)
    assert (code, sorted(bodies)) == (0, ["conflict", "failed", "held", "pause", "undo"]), err
    held = bodies["held"]
    assert held["text"] == ("sidecar: ticket-bot's change is held for review: Set status of tickets #44 from "
                            "'open' to 'refunded' (rule 1: refunds need a person; action tx:"
                            + held["text"].split("action tx:")[1])
    assert held["sidecar"]["key"] == {"id": 44} and held["sidecar"]["table"] == "public.tickets"  # the raw payload
    assert held["text"].endswith("). http://console.test/queue")
    assert held["sidecar"]["run_id"] == str(run.run_id) and held["sidecar"]["url"] == "http://console.test/queue"
    assert bodies["pause"]["text"] == "sidecar: Paused ticket-bot: refunds look wrong. http://console.test/automations"
    assert bodies["undo"]["text"].startswith(f"sidecar: Undid run {str(run.run_id)[:8]}: restored 0 rows")
    assert bodies["conflict"]["text"].startswith(
        f"sidecar: The undo of run {str(run.run_id)[:8]} skipped 1 conflicting row: it changed since the run.")
    # Text from the automation is shown, escaped, never taken as markup.
    assert "model said &lt;script&gt;" in bodies["failed"]["text"]
    assert bodies["failed"]["text"].startswith("sidecar: ticket-bot's run ")
    assert "stopped; 5 delivered, 0 not" in err


def test_held_and_decided_changes_name_their_records(sc, bot, webhook, start_notify):
    """A refund's ticket_id reads as the ticket it refers to, by its subject (issue 26), in the
    held, the rejected and the approved notifications; the payload keeps the raw values."""
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, subject text NOT NULL)")
    sc.execute("INSERT INTO tickets VALUES (41, 'Acme: invoice A-1009 charged twice'), (42, 'Globex: credit note')")
    sc.execute("CREATE TABLE refunds (id serial PRIMARY KEY, ticket_id int REFERENCES tickets, amount numeric(10,2))")
    track(sc, "refunds", display_name="refund")
    rules.add_rule(sc, "refunds", when="NEW.amount > 500", reason="refund over limit")
    proc = start_notify("--webhook", webhook.url, "--events", "held,approved,rejected")
    with sidecar.Run(bot, "billing-bot") as run:
        bot.execute("INSERT INTO refunds (ticket_id, amount) VALUES (41, 900), (42, 1240)")
    first, second = [i for i, in sc.execute("SELECT pending_id FROM sidecar.pending ORDER BY pending_id")]
    sc.execute("SELECT sidecar.reject(%s, 'refunded by phone')", (second,))
    sc.execute("SELECT sidecar.approve(%s)", (first,))

    bodies = webhook.wait_for(4)
    code, err = stop(proc)
    assert code == 0, err
    texts = {b["sidecar"]["event"] + str(b["sidecar"].get("pending_id") or b["sidecar"]["pending_ids"]): b["text"]
             for b in bodies}
    assert texts[f"held{first}"].startswith(
        "sidecar: billing-bot's change is held for review: Add refund #1 (ticket Acme: invoice A-1009 charged "
        "twice (#41), amount 900.00) (rule 1: refund over limit; action ")
    assert texts[f"rejected[{second}]"] == (
        f"sidecar: Rejected held change {second} (Add refund #2 (ticket Globex: credit note (#42), amount 1240.00)): "
        "refunded by phone.")
    assert texts[f"approved[{first}]"].startswith(f"sidecar: Approved held change {first} (Add refund #1 (ticket Acme")
    held = next(b for b in bodies if b["sidecar"]["event"] == "held")
    assert held["sidecar"]["key"] == {"id": held["sidecar"]["key"]["id"]} and held["sidecar"]["run_id"] == str(run.run_id)


def test_a_failing_webhook_is_retried_with_backoff(tickets, start_notify):
    hook = Webhook(statuses=[503, 502])
    proc = start_notify("--webhook", hook.url, "--events", "pause")
    tickets.execute("SELECT sidecar.pause('*', 'incident 7')")
    assert [b["text"] for b in hook.wait_for(1)] == ["sidecar: Paused every automation: incident 7."]
    code, err = stop(proc)
    assert (code, hook.requests) == (0, 3)
    assert "could not deliver" not in err
    hook.server.shutdown()


def test_what_cannot_be_delivered_is_said_on_stderr_and_the_writer_never_waits(tickets, bot, start_notify):
    hook = Webhook(statuses=[500] * 10)
    proc = start_notify("--webhook", hook.url, "--retries", "2", "--events", "pause,failed")
    started = time.monotonic()
    tickets.execute("SELECT sidecar.pause('ticket-bot', 'refunds look wrong')")
    assert time.monotonic() - started < 1
    deadline = time.monotonic() + 15
    while hook.requests < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    code, err = stop(proc)
    assert code == 0
    assert ("could not deliver the pause event after 3 attempts (HTTP 500 Internal Server Error): "
            "sidecar: Paused ticket-bot: refunds look wrong.") in err
    assert "stopped; 0 delivered, 1 not" in err
    hook.server.shutdown()


def test_bad_options_are_refused_with_exit_2(cli):
    result = cli("notify", "--webhook", "http://127.0.0.1:9/hook", "--events", "held,paused")
    assert result.exit_code == 2
    assert "--events: unknown event paused; choose from held,pause," in result.output
    result = cli("notify", "--webhook", "hooks.slack.com/services/x")
    assert (result.exit_code, result.output.strip()) == (
        2, "sidecar: --webhook 'hooks.slack.com/services/x' is not an http(s) URL")


def test_notify_needs_a_database_it_can_reach(webhook):
    result = subprocess.run([sys.executable, "-m", "sidecar.cli", "notify", "--webhook", webhook.url,
                             "--dsn", "postgresql://nobody@127.0.0.1:1/none"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and result.stderr.startswith("sidecar: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_lost_connection_is_reopened_and_said(tickets, webhook, start_notify, server_dsn, dsn):
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    proc = start_notify("--webhook", webhook.url, "--events", "pause")
    database = sql.Identifier(conninfo_to_dict(dsn)["dbname"])
    admin = psycopg.connect(server_dsn, autocommit=True)
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))  # down for a while
    killed = tickets.execute("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'sidecar notify'").fetchall()
    assert [k[1] for k in killed] == [True]
    time.sleep(1)
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))
    admin.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not tickets.execute(  # back, and listening
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'sidecar notify' "
            "AND query LIKE 'LISTEN%%' AND pid <> %s", (killed[0][0],)).fetchone():
        time.sleep(0.1)
    tickets.execute("SELECT sidecar.pause('ticket-bot', 'after the reconnect')")
    assert [b["text"] for b in webhook.wait_for(1)] == ["sidecar: Paused ticket-bot: after the reconnect."]
    code, err = stop(proc)
    assert code == 0
    assert "sidecar notify: lost the database connection (" in err
    assert "sidecar notify: still no database (cannot connect to " in err
    assert "sidecar notify: listening again; events notified while disconnected were missed" in err
