"""The operator console in a real browser (the system Chromium, driven by Playwright):
sign in, see the bad run, preview, undo, see the conflict kept, pause the bot, approve a
held change. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from psycopg import sql

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no system Chromium at /usr/bin/chromium (apt-get install chromium); "
                "the browser tests need it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
uvicorn = pytest.importorskip("uvicorn", reason="the console extra is not installed")

from sidecar.console.app import create_app  # noqa: E402
from tests.test_console import PASSWORD, drop_scene, make_scene  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console-run.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleServer:
    """`sidecar serve` in a thread on a free loopback port."""

    def __init__(self, dsn: str):
        self.port = _free_port()
        app = create_app(dsn, require_password_check=False)  # the test servers use trust authentication
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ConsoleServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def operator_scene(sc, dsn, bot):
    scene = make_scene(sc, dsn, bot)
    operator = f"operator_{scene.owner.rsplit('_', 1)[1]}"
    sc.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(operator), sql.Literal(PASSWORD)))
    for group in ("sidecar_pauser", "sidecar_undoer", "sidecar_approver", scene.owner):
        sc.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(operator)))
    scene.users["operator"] = operator
    yield scene
    drop_scene(sc, scene)


@pytest.fixture
def browser_page(operator_scene):
    ARTIFACTS.mkdir(exist_ok=True)
    with ConsoleServer(operator_scene.dsn) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900},
                                      timezone_id="Europe/Berlin", locale="en-GB")
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page, user: str) -> None:
    page.goto("/runs")
    assert "/signin" in page.url
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, "01-sign-in")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/runs")


def test_operator_undoes_the_bad_run_and_pauses_the_bot(operator_scene, browser_page, sc):
    page, scene = browser_page, operator_scene
    expect = sync_api.expect
    sign_in(page, scene.users["operator"])

    # The bad run, in plain language, times in the viewer's zone.
    short = str(scene.run_id)[:8]
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    shot(page, "02-runs")
    page.get_by_role("link", name=short).click()
    expect(page.get_by_role("heading", name=re.compile(f"Run {short}"))).to_be_visible()
    shot(page, "03-run")
    expect(page.get_by_text("Times are in your time zone (Europe/Berlin).")).to_be_visible()
    expect(page.locator("time").first).not_to_contain_text("UTC")
    expect(page.get_by_text("from empty to customer Northwind Solar (#2)").first).to_be_visible()
    expect(page.get_by_text("match-billing v3", exact=True)).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "run-page.png"), full_page=False)
    if os.environ.get("SIDECAR_UPDATE_DOCS"):  # refresh the README's screenshot on purpose only
        page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)

    # Preview: rows to restore, and the agent's edit as a conflict; nothing changed yet.
    page.get_by_role("link", name="Undo this run…").click()
    expect(page.get_by_text("Nothing has changed yet.")).to_be_visible()
    expect(page.get_by_text("5 rows to restore")).to_be_visible()
    conflicts = page.locator("section.conflicts")
    expect(conflicts).to_contain_text("update billing address\" (#43)")
    expect(conflicts).to_contain_text("waiting on customer")
    shot(page, "04-undo-preview")
    assert sc.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "resolved"

    # One confirmation.
    page.get_by_label("Why (for the event trail, optional)").fill("matched the wrong Northwind")
    page.get_by_role("button", name=re.compile("Undo: restore 5 rows")).click()
    expect(page.get_by_role("status")).to_contain_text("restored 5 rows")
    expect(page.get_by_role("status")).to_contain_text("Kept 1 conflicting row as it is")
    shot(page, "05-undone")
    rows = sc.execute("SELECT id, status FROM tickets WHERE id BETWEEN 42 AND 44 ORDER BY id").fetchall()
    assert rows == [(42, "needs review"), (43, "waiting on customer"), (44, "needs review")]

    # Pause the bot; the state also arrives live in a second tab, without a reload.
    page.get_by_role("link", name="Automations").click()
    watcher = page.context.new_page()
    watcher.goto("/automations")
    watcher.wait_for_timeout(500)  # the live stream is open
    page.get_by_label("Reason").nth(1).fill("matching Northwind Systems tickets to Northwind Solar")
    page.get_by_role("button", name="Pause billing-bot").click()
    shot(page, "06-paused")
    expect(page.locator(".flashes")).to_contain_text("Paused automation billing-bot")
    expect(page.locator("tr[data-automation='billing-bot'] .badge")).to_have_text("paused")
    expect(watcher.locator("tr[data-automation='billing-bot'] .badge")).to_have_text("paused")
    shot(watcher, "06-paused-live")
    assert sc.execute("SELECT reason FROM sidecar.pauses WHERE target = 'billing-bot'").fetchone()[0].startswith(
        "matching Northwind")

    page.get_by_role("link", name="Event trail").click()
    expect(page.locator("table.events")).to_contain_text(scene.users["operator"])
    expect(page.locator("table.events")).to_contain_text("matched the wrong Northwind")
    shot(page, "07-event-trail")


def test_approver_approves_a_held_change(operator_scene, browser_page, sc, run_bot):
    from sidecar.review import rules

    page, expect = browser_page, sync_api.expect
    rules.add_rule(sc, "customers", when="NEW.billing_email IS DISTINCT FROM OLD.billing_email",
                   reason="billing email changes need review")
    run_bot("UPDATE customers SET billing_email = 'ap@northwind.example' WHERE id = 3")
    sign_in(page, operator_scene.users["operator"])
    page.get_by_role("link", name="Review queue").click()
    shot(page, "08-queue")
    item = page.locator("li.held").first
    expect(item).to_contain_text("ap@northwind.example")
    expect(item).to_contain_text("billing email changes need review")
    item.get_by_role("button", name=re.compile("Approve")).click()
    expect(page.get_by_role("status")).to_contain_text("Approved")
    expect(page.get_by_text("Nothing waits for review.")).to_be_visible()
    shot(page, "09-approved")
    assert sc.execute("SELECT billing_email FROM customers WHERE id = 3").fetchone()[0] == "ap@northwind.example"


def test_the_queue_shows_why_what_was_read_and_how_sure_escaped(operator_scene, browser_page, sc, bot):
    import sidecar
    from sidecar.review import rules

    page, expect = browser_page, sync_api.expect
    rules.add_rule(sc, "customers", when="CONTEXT.confidence < 0.8", reason="model unsure")
    reason = "Ticket 44 says the AP mailbox moved <img src=x onerror=alert(1)>"
    with sidecar.Run(bot, "billing-bot") as run:
        with run.action("email:customer-3", why=reason, confidence=0.41,
                        read=[sidecar.row("customers", 3), "email: please use ap@northwind.example"]):
            bot.execute("UPDATE customers SET billing_email = 'ap@northwind.example' WHERE id = 3")
    sign_in(page, operator_scene.users["operator"])
    page.get_by_role("link", name="Review queue").click()
    item = page.locator("li.held").first
    context = item.locator("aside.context")
    expect(context).to_contain_text(reason)  # shown as text: the tag is not an element
    expect(context.locator("img")).to_have_count(0)
    expect(context).to_contain_text("0.41")
    expect(context).to_contain_text('customers #3 "Northwind Systems"')
    expect(context).to_contain_text('"email: please use ap@northwind.example"')
    shot(page, "10-queue-context")
    # The run page opens with the four questions and says why, beside the action's changes.
    page.goto(f"/runs/{run.run_id}")
    expect(page.locator(".story")).to_contain_text("1 held change waiting for review")
    expect(page.locator(".story")).to_contain_text("1 action says why")
