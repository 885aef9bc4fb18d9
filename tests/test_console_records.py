"""Issue 26, the rest: a table pause does not leave a button that fails (the queue says why and
offers the button that helps), and records are named where people read them after the fact:
the CLI's undo preview, undo report and queue, and the console's event trail."""

from __future__ import annotations

import json
import re

from sidecar import demo
from sidecar.review import gate
from tests.test_console_e2e import operator_scene, sync_api  # noqa: F401  (fixtures)
from tests.test_console_story import (  # noqa: F401
    Server,
    _page,
    _propose_refunds,
    _sign_in,
    chromium,
    outage,
)

expect = sync_api.expect

TICKET_42 = "ticket Northwind Systems: invoice NS-2291 charged twice (#42)"


def _held(sc) -> dict[int, int]:
    """ticket_id -> pending_id of the held refunds."""
    return dict(sc.execute("SELECT (new_row->>'ticket_id')::int, pending_id FROM sidecar.pending").fetchall())


def test_a_table_pause_offers_resume_and_approve_or_says_who_can(operator_scene, chromium, sc, bot):
    scene = operator_scene
    _propose_refunds(sc, bot)
    held = _held(sc)
    gate.pause(sc, table="refunds", reason="refund export running")
    with Server(scene.dsn) as server:
        # An approver without the pauser role: the sentence says why, and rejecting is still there.
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/queue")
        _sign_in(page, scene.users["approver"])
        item = page.locator(f"#held-{held[41]}")
        expect(item).to_contain_text("writes to refunds are paused (refund export running)")
        expect(item).to_contain_text("A person with the pauser role resumes it first")
        expect(item.get_by_role("button", name=re.compile("Approve|approve"))).to_have_count(0)
        expect(item.get_by_role("button", name=f"Reject #{held[41]}")).to_be_visible()
        page.context.close()

        # The operator may resume: one button resumes the table and approves.
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/queue")
        _sign_in(page, scene.users["operator"])
        item = page.locator(f"#held-{held[41]}")
        expect(item.get_by_role("button", name=f"Approve #{held[41]}", exact=True)).to_have_count(0)
        item.get_by_role("button", name=f"Resume writes to refunds and approve #{held[41]}").click()
        expect(page.get_by_role("status")).to_contain_text("Resumed table public.refunds")
        expect(page.get_by_role("status")).to_contain_text("Approved: Add refund #1 (ticket Refund request")

        # Rejected, the refund reads by its ticket in the event trail too.
        page.locator(f"#why-{held[42]}").fill(demo.REJECT_WHY)
        page.get_by_role("button", name=f"Reject #{held[42]}").click()
        expect(page.get_by_role("status")).to_contain_text(TICKET_42)
        page.get_by_role("link", name="Event trail").click()
        expect(page.locator("table.events")).to_contain_text(
            f"Rejected held change {held[42]}: Add refund #2 ({TICKET_42}, amount 1240.00")
        # Times read as times wherever a person reads: no ISO text outside the (closed) raw values.
        for url in (f"/runs/{scene.run_id}", "/queue?show=all", "/events", f"/runs/{scene.run_id}/undo"):
            page.goto(url)
            main = page.locator("main").inner_text()
            assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", main), (url, main)
        page.context.close()

    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    assert sc.execute("SELECT ticket_id, amount::text FROM refunds ORDER BY ticket_id").fetchall() == [
        (41, "900.00"), (48, "80.00")]
    assert dict(sc.execute("SELECT pending_id, status FROM sidecar.pending").fetchall()) == {
        held[41]: "approved", held[42]: "rejected"}


def test_both_pauses_are_said_and_resumed_by_one_button(operator_scene, chromium, sc, bot):
    scene = operator_scene
    _propose_refunds(sc, bot)
    held = _held(sc)
    gate.pause(sc, table="refunds", reason="refund export running")
    gate.pause(sc, automation=demo.AUTOMATION, reason="bad matches")
    with Server(scene.dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/queue")
        _sign_in(page, scene.users["operator"])
        item = page.locator(f"#held-{held[41]}")
        expect(item).to_contain_text("billing-bot is paused (bad matches) and writes to refunds are paused")
        item.get_by_role("button", name=f"Resume billing-bot and writes to refunds and approve #{held[41]}").click()
        expect(page.get_by_role("status")).to_contain_text("Approved")
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    assert sc.execute("SELECT status FROM sidecar.pending WHERE pending_id = %s", (held[41],)).fetchone()[0] == "approved"


def test_the_cli_names_records_in_preview_undo_report_and_queue(operator_scene, cli, sc, bot):
    run_cli = cli
    short = str(operator_scene.run_id)[:8]
    preview = run_cli("undo", short, "--preview")
    assert preview.exit_code == 0, preview.output
    assert ('restore tickets "Northwind Systems: invoice NS-2291 charged twice" (#42): '
            "customer_id customer Northwind Solar (#2) -> empty") in preview.output
    assert ('conflict: tickets "Northwind Systems: update billing address" (#43): changed since by someone outside '
            "any run") in preview.output
    assert "customer_id customer Northwind Solar (#2) is now customer Northwind Systems (#3)" in preview.output
    assert "T" not in re.findall(r"last_update (\S+)", preview.output)[0]  # a time, not ISO text
    raw = json.loads(run_cli("undo", short, "--preview", "--json").output)  # the raw values one --json away
    assert {"customer_id": 3}.items() <= raw["preview"]["conflicts"][0]["now"].items()

    done = run_cli("undo", short, "--yes")
    assert done.exit_code == 3, done.output
    assert "customer_id customer Northwind Solar (#2) is now customer Northwind Systems (#3)" in done.output

    _propose_refunds(sc, bot)
    queue = run_cli("queue")
    assert "Add refund #2 (ticket Northwind Systems: invoice NS-2291 charged twice (#42), amount 1240.00" in queue.output
    items = json.loads(run_cli("queue", "--json").output)["queue"]
    assert sorted(i["new_row"]["ticket_id"] for i in items) == [41, 42]
    held = _held(sc)
    rejected = run_cli("reject", str(held[42]), "--reason", demo.REJECT_WHY)
    assert f"rejected #{held[42]}: Add refund #2 ({TICKET_42}" in rejected.output
    refunds_run = sc.execute("SELECT run_id FROM sidecar.pending WHERE pending_id = %s", (held[42],)).fetchone()[0]
    shown = run_cli("show", str(refunds_run))
    assert f"Rejected held change {held[42]}: Add refund #2 ({TICKET_42}" in shown.output


def test_a_change_an_approval_found_changed_offers_approve_only_once_it_can_apply(operator_scene, chromium, sc, bot):
    """'approve again' used to be offered for a held change whose row had changed, and failed again."""
    from sidecar.review import held as held_mod

    scene = operator_scene
    _propose_refunds(sc, bot)
    pid = _held(sc)[41]
    refund_id = sc.execute("SELECT (new_row->>'id')::int FROM sidecar.pending WHERE pending_id = %s", (pid,)).fetchone()[0]
    sc.execute("INSERT INTO refunds (id, ticket_id, amount) OVERRIDING SYSTEM VALUE VALUES (%s, 41, 10)",
               (refund_id,))  # a person, since
    assert held_mod.approve(sc, pid).refused
    with Server(scene.dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/queue")
        _sign_in(page, scene.users["operator"])
        item = page.locator(f"#held-{pid}")
        expect(item).to_contain_text("approving it now would be refused too")
        expect(item).to_contain_text(f"refund #{refund_id} exists now")
        expect(item.get_by_role("button", name=re.compile("pprove"))).to_have_count(0)
        expect(item.get_by_role("button", name=f"Reject #{pid}")).to_be_visible()
        assert sc.execute("SELECT status FROM sidecar.pending WHERE pending_id = %s", (pid,)).fetchone()[0] == "conflict"

        sc.execute("DELETE FROM refunds WHERE id = %s", (refund_id,))  # back as it was when held
        page.reload()
        expect(item).to_contain_text("it is back as it was")
        item.get_by_role("button", name=f"Approve #{pid}", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Approved: Add refund")
    assert sc.execute("SELECT amount::text FROM refunds WHERE id = %s", (refund_id,)).fetchone()[0] == "900.00"
    assert sc.execute("SELECT status FROM sidecar.pending WHERE pending_id = %s", (pid,)).fetchone()[0] == "approved"


def test_the_database_down_in_the_middle_of_resume_and_approve(operator_scene, chromium, sc, bot, outage):
    scene = operator_scene
    relay, dsn = outage
    _propose_refunds(sc, bot)
    pid = _held(sc)[41]
    gate.pause(sc, table="refunds", reason="refund export running")
    with Server(dsn) as server:
        page = _page(chromium, f"http://127.0.0.1:{server.port}")
        page.goto("/queue")
        _sign_in(page, scene.users["operator"])
        relay.cut()
        page.get_by_role("button", name=f"Resume writes to refunds and approve #{pid}").click()
        expect(page.get_by_role("alert")).to_contain_text(
            f"nothing was done: held change #{pid} was not approved and writes to refunds were not resumed")
        assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 1
        relay.restore()
        page.get_by_role("button", name=f"Try again: Resume and approve #{pid}").click()
        expect(page.get_by_role("status")).to_contain_text("Resumed table public.refunds")
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    assert sc.execute("SELECT status FROM sidecar.pending WHERE pending_id = %s", (pid,)).fetchone()[0] == "approved"
