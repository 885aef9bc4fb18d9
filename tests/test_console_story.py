"""The console for a support lead with no shell (issue 26), in a real browser: no lost clicks
(an expired session, the database down in the middle of a pause and of an undo), no dead
ends (every button can succeed, error pages lead back), records named, and the whole story
in at most 12 clicks, checked in the database afterwards."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sidecar import demo  # noqa: E402
from sidecar.console.app import create_app  # noqa: E402
from tests.test_console import PASSWORD
from tests.test_console_e2e import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    _free_port,
    operator_scene,
    shot,
    sync_api,
    uvicorn,
)

expect = sync_api.expect


class Server:
    """`sidecar serve` in a thread, with the console's options."""

    def __init__(self, dsn: str, **options):
        self.port = _free_port()
        app = create_app(dsn, require_password_check=False, **options)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the console did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Outage:
    """A loopback TCP relay between the console and PostgreSQL: cut() is the database going down
    (open connections drop, new ones are refused), restore() brings it back."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open = []

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


class Clicks:
    """Counts the person's clicks."""

    def __init__(self):
        self.n = 0

    def __call__(self, locator) -> None:
        self.n += 1
        locator.click()


@pytest.fixture
def chromium():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _page(browser, url: str):
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900},
                                  timezone_id="Europe/Berlin", locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def _sign_in(page, user: str, click=None) -> None:
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    (click or (lambda x: x.click()))(page.get_by_role("button", name="Sign in"))


def _propose_refunds(sc, bot) -> None:
    """billing-bot proposes the demo's three refunds; the two over the limit are held."""
    from sidecar.review import rules
    from sidecar.steps.runs import Run
    from tests.fix_sidecar import track

    track(sc, "refunds", display_name="refund")
    rules.add_rule(sc, "refunds", when=demo.REFUND_RULE, reason=demo.REFUND_REASON)
    with Run(bot, demo.AUTOMATION, meta={"job": "refunds"}) as run:
        for ticket_id, amount in demo.REFUNDS:
            with run.action(f"refund:ticket-{ticket_id}"):
                bot.execute("INSERT INTO refunds (ticket_id, amount) VALUES (%s, %s)", (ticket_id, amount))
                bot.commit()


def test_support_lead_end_to_end_in_at_most_12_clicks(operator_scene, chromium, sc, bot):
    scene = operator_scene
    _propose_refunds(sc, bot)
    held = dict(sc.execute("SELECT (new_row->>'ticket_id')::int, pending_id FROM sidecar.pending").fetchall())
    click = Clicks()
    short = str(scene.run_id)[:8]
    with Server(scene.dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/")
        _sign_in(page, scene.users["operator"], click)                                     # 1
        expect(page.locator("#waiting")).to_have_text("2 waiting")  # the queue counted in the navigation

        # Find the bad run: the runs list says what each run did, held writes included.
        click(page.get_by_role("link", name="Runs", exact=True))                            # 2
        expect(page.locator("table.runs")).to_contain_text("2 writes held for review wait in the queue")
        shot(page, "story-01-runs")
        click(page.get_by_role("link", name=short))                                         # 3
        ticket = 'tickets "Northwind Systems: invoice NS-2291 charged twice" (#42)'
        expect(page.get_by_text(f"Changed customer_id of {ticket} from empty to customer Northwind Solar (#2)")
               ).to_be_visible()

        # Pause the bot from the run page.
        page.get_by_label("Reason").first.fill("matching Northwind Systems tickets to Northwind Solar")
        click(page.get_by_role("button", name="Pause billing-bot"))                         # 4
        expect(page.locator(".flashes")).to_contain_text("Paused automation billing-bot")
        assert page.url.endswith(f"/runs/{scene.run_id}")

        # Preview, then undo: the agent's fix to ticket 43 is kept.
        click(page.get_by_role("link", name="Undo this run…"))                              # 5
        expect(page.get_by_text("5 rows to restore")).to_be_visible()
        expect(page.locator("section.conflicts")).to_contain_text("Northwind Systems: update billing address")
        shot(page, "story-02-preview")
        click(page.get_by_role("button", name=re.compile("Undo: restore 5 rows")))           # 6
        expect(page.get_by_role("status")).to_contain_text("restored 5 rows")

        # Decide the queue: the refunds are billing-bot's, which is paused.
        click(page.get_by_role("link", name="Review queue"))                                # 7
        refund = page.locator(f"#held-{held[42]}")
        expect(refund).to_contain_text("ticket Northwind Systems: invoice NS-2291 charged twice (#42)")
        expect(refund).to_contain_text("amount 1240.00")
        expect(page.locator(f"#held-{held[41]}")).to_contain_text("billing-bot is paused")
        expect(page.get_by_role("button", name=f"Approve #{held[41]}", exact=True)).to_have_count(0)
        shot(page, "story-03-queue")
        page.locator(f"#why-{held[42]}").fill(demo.REJECT_WHY)
        click(page.get_by_role("button", name=f"Reject #{held[42]}"))                       # 8
        expect(page.get_by_role("status")).to_contain_text("Rejected: Add refund")
        # Approving writes as billing-bot's run: the button resumes it and approves, in one click.
        click(page.get_by_role("button", name=f"Resume billing-bot and approve #{held[41]}"))  # 9
        expect(page.get_by_role("status")).to_contain_text("Resumed automation billing-bot")
        expect(page.get_by_role("status")).to_contain_text("Approved")
        expect(page.get_by_text("Nothing waits for review.")).to_be_visible()
        expect(page.locator("#waiting")).to_have_count(0)
        shot(page, "story-04-decided")
    assert click.n <= 12, f"the story took {click.n} clicks"

    # The database, as a DBA checks it in psql afterwards.
    tickets = sc.execute("SELECT id, customer_id, status FROM tickets WHERE id BETWEEN 42 AND 44 ORDER BY id").fetchall()
    assert tickets == [(42, None, "needs review"), (43, 3, "waiting on customer"), (44, None, "needs review")]
    assert sc.execute("SELECT count(*) FROM billing_notes").fetchone()[0] == 0
    refunds = sc.execute("SELECT ticket_id, amount::text FROM refunds ORDER BY ticket_id").fetchall()
    assert refunds == [(41, "900.00"), (48, "80.00")]
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    decided = dict(sc.execute("SELECT pending_id, status FROM sidecar.pending").fetchall())
    assert decided == {held[41]: "approved", held[42]: "rejected"}
    approved = sc.execute("SELECT summary FROM sidecar.events WHERE kind = 'approve'").fetchone()[0]
    assert "add refund #1 (amount 900.00, status proposed, ticket_id 41; rule: refund over limit)" in approved
    kinds = [k for k, in sc.execute("SELECT kind FROM sidecar.events ORDER BY event_id")]
    assert kinds.index("pause") < kinds.index("undo") < kinds.index("resume")


def test_an_expired_session_keeps_the_pause_typed(operator_scene, chromium, sc):
    scene = operator_scene
    reason = "matching Northwind Systems tickets to Northwind Solar"
    with Server(scene.dsn, idle_hours=2 / 3600) as server:  # signed out after 2 s without a request
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/automations")
        _sign_in(page, scene.users["operator"])
        page.wait_for_url("**/automations")
        page.locator("tr[data-automation='billing-bot'] input[name=reason]").fill(reason)
        time.sleep(3)
        page.get_by_role("button", name="Pause billing-bot").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "Your session had ended, so nothing was done: billing-bot was not paused")
        shot(page, "story-05-expired")
        assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0

        _sign_in(page, scene.users["operator"])
        page.wait_for_url("**/automations")
        expect(page.locator(".flashes")).to_contain_text("Nothing was done while you were signed out")
        typed = page.locator("tr[data-automation='billing-bot'] input[name=reason]")
        expect(typed).to_have_value(reason)
        page.get_by_role("button", name="Pause billing-bot").click()
        expect(page.locator(".flashes")).to_contain_text("Paused automation billing-bot")
    assert sc.execute("SELECT target, reason FROM sidecar.pauses").fetchall() == [("billing-bot", reason)]


@pytest.fixture
def outage(operator_scene):
    params = conninfo_to_dict(operator_scene.dsn)
    relay = Outage(params.get("host", "127.0.0.1"), int(params["port"]))
    yield relay, make_conninfo(operator_scene.dsn, host="127.0.0.1", port=str(relay.port))
    relay.close()


def test_the_database_down_in_the_middle_of_a_pause_and_of_an_undo(operator_scene, chromium, sc, outage):
    scene = operator_scene
    relay, dsn = outage
    with Server(dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/automations")
        _sign_in(page, scene.users["operator"])
        page.wait_for_url("**/automations")

        # A pause: typed, then the database goes away before the click.
        page.locator("tr[data-automation='billing-bot'] input[name=reason]").fill("wrong Northwind")
        relay.cut()
        page.get_by_role("button", name="Pause billing-bot").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("The database could not be reached, so nothing was done: "
                                      "billing-bot was not paused")
        expect(alert).to_contain_text("your password is fine")
        expect(page.get_by_label("Reason")).to_have_value("wrong Northwind")
        shot(page, "story-06-db-down-pause")
        assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
        relay.restore()
        page.get_by_role("button", name="Try again: Pause billing-bot").click()
        expect(page.locator(".flashes")).to_contain_text("Paused automation billing-bot")
        assert sc.execute("SELECT reason FROM sidecar.pauses").fetchone()[0] == "wrong Northwind"

        # An undo: previewed, then the database goes away before the confirmation.
        page.goto(f"/runs/{scene.run_id}/undo")
        page.get_by_label("Why (for the event trail, optional)").fill("matched the wrong Northwind")
        relay.cut()
        page.get_by_role("button", name=re.compile("Undo: restore 5 rows")).click()
        expect(page.get_by_role("alert")).to_contain_text(
            f"nothing was done: run {str(scene.run_id)[:8]} was not undone")
        assert sc.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "resolved"
        assert sc.execute("SELECT count(*) FROM sidecar.runs WHERE undo_of IS NOT NULL").fetchone()[0] == 0
        relay.restore()
        # Back on the preview, the reason is still there.
        page.get_by_role("link", name="Back to the page").click()
        expect(page.get_by_label("Why (for the event trail, optional)")).to_have_value("matched the wrong Northwind")
        page.get_by_role("button", name=re.compile("Undo: restore 5 rows")).click()
        expect(page.get_by_role("status")).to_contain_text("restored 5 rows")
        # The database goes down and comes back between two clicks: the next click just works.
        page.goto("/automations")
        relay.cut()
        relay.restore()
        page.get_by_role("button", name="Resume billing-bot").click()
        expect(page.locator(".flashes")).to_contain_text("Resumed automation billing-bot")
    assert sc.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "needs review"
    assert sc.execute("SELECT summary FROM sidecar.events WHERE kind = 'undo'").fetchone()[0]
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


def test_no_dead_ends_and_one_vocabulary(operator_scene, chromium, sc, make_conn):
    scene = operator_scene
    # A run whose session ended without finishing it: abandoned, everywhere.
    gone = make_conn()
    gone.autocommit = True
    gone_id = gone.execute("SELECT sidecar.start_run('billing-bot')").fetchone()[0]
    gone.close()
    deadline = time.monotonic() + 10
    while sc.execute("SELECT count(*) FROM pg_stat_activity a JOIN sidecar.runs r ON r.backend_pid = a.pid "
                     "WHERE r.run_id = %s", (gone_id,)).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    with Server(scene.dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/automations")
        _sign_in(page, scene.users["operator"])
        page.wait_for_url("**/automations")
        row = page.locator("tr[data-automation='billing-bot']")
        expect(row).to_contain_text("1 abandoned")
        expect(row).not_to_contain_text("running")
        page.goto("/runs?status=abandoned")
        expect(page.locator("table.runs tbody tr")).to_have_count(1)
        expect(page.locator("table.runs")).to_contain_text(str(gone_id)[:8])
        expect(page.locator("#f-status option")).to_have_text(["any", "running", "waiting", "succeeded", "failed",
                                                                "abandoned", "undone"])

        # Undo one action; it then offers no undo again, but says what undid it.
        page.goto(f"/runs/{scene.run_id}")
        page.get_by_role("row", name=re.compile("match:ticket-42")).get_by_role("link", name="Undo this action…").click()
        page.get_by_role("button", name=re.compile("Undo: restore")).click()
        expect(page.get_by_role("status")).to_contain_text("Undid action match:ticket-42 of run")
        action_row = page.get_by_role("row", name=re.compile("match:ticket-42"))
        expect(action_row).to_contain_text("undone by run")
        expect(action_row.get_by_role("link", name="Undo this action…")).to_have_count(0)

        # Error pages in the console's style, with a way back; no shell commands.
        page.goto("/nope")
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
        expect(page.get_by_role("link", name="See the runs")).to_be_visible()
        page.goto("/automations/pause")
        expect(page.get_by_role("heading", name="This address is not a page")).to_be_visible()
        page.get_by_role("link", name="Go to the page with the button").click()
        page.wait_for_url("**/automations")
        page.goto("/runs/abcdef99")
        expect(page.locator("main")).to_contain_text("no run id starts with abcdef99")
        # The whole run undone: its preview leads to the undo, not to a shell command.
        page.goto(f"/runs/{scene.run_id}/undo")
        page.get_by_role("button", name=re.compile("Undo: restore")).click()
        page.goto(f"/runs/{scene.run_id}/undo")
        expect(page.get_by_role("heading", name="This run is undone already")).to_be_visible()
        expect(page.get_by_role("link", name=re.compile("Open the undo"))).to_be_visible()
        for url in ("/automations", "/runs", f"/runs/{scene.run_id}", "/queue", "/events", "/nope",
                    f"/runs/{scene.run_id}/undo", "/runs/abcdef99"):
            page.goto(url)
            text = page.locator("body").inner_text()
            # A command to type (`sidecar undo 0a27ba31`, `sidecar runs lists...`), not the undo runs' name.
            found = re.search(r"\bsidecar (undo|show|rerun|approve|reject) [0-9a-f#]|\bsidecar (runs|queue) (lists|--)",
                              text)
            assert not found, (url, text[max(0, found.start() - 200):found.end() + 100])
            assert "(s)" not in text, url
