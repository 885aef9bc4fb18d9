"""The operator console, through Starlette's test client: an operator signs in as their
PostgreSQL user and pauses, previews and undoes; what they may do follows their roles."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

pytest.importorskip("starlette", reason="the console extra is not installed: pip install -e '.[console]'")
from starlette.testclient import TestClient  # noqa: E402

import sidecar  # noqa: E402
import sidecar.capture.history  # noqa: E402
import sidecar.console.changes  # noqa: E402
from sidecar import demo  # noqa: E402
from sidecar.console.app import create_app  # noqa: E402
from tests.fix_sidecar import snapshot, track  # noqa: E402

PASSWORD = "correct horse"


@dataclass
class Scene:
    """The seed story: billing-bot's bad run, then a support agent's hand edit of ticket 43."""

    dsn: str
    run_id: uuid.UUID
    users: dict[str, str]  # viewer, pauser, undoer, approver -> role name
    owner: str


def _login_role(conn, name: str, *member_of: str) -> None:
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
    for group in member_of:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))


def make_scene(sc: psycopg.Connection, dsn: str, bot: psycopg.Connection) -> Scene:
    suffix = uuid.uuid4().hex[:6]
    owner = f"app_owner_{suffix}"
    users = {kind: f"{kind}_{suffix}" for kind in ("viewer", "pauser", "undoer", "approver", "nobody")}
    sc.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
    sc.execute(demo.SCHEMA)
    with sc.cursor() as cur:
        cur.executemany("INSERT INTO customers VALUES (%s, %s, %s)", demo.CUSTOMERS)
        cur.executemany("INSERT INTO tickets VALUES (%s, %s, %s, %s, now() - interval '2 days')", demo.TICKETS)
    for table in ("customers", "tickets", "billing_notes"):
        sc.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(owner)))
    track(sc, "customers", label_column="name")
    track(sc, "tickets")
    track(sc, "billing_notes")
    _login_role(sc, users["viewer"], "sidecar_viewer")
    _login_role(sc, users["pauser"], "sidecar_pauser")
    # sidecar_undoer is all the undoer holds: no right on the tables, which app_owner owns
    # (each table's undo function restores with its owner's rights).
    _login_role(sc, users["undoer"], "sidecar_undoer")
    _login_role(sc, users["approver"], "sidecar_approver")
    _login_role(sc, users["nobody"])

    customers = bot.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
    with sidecar.Run(bot, demo.AUTOMATION, meta=demo.RUN_META) as run:
        for ticket_id, subject in bot.execute(
                "SELECT id, subject FROM tickets WHERE status = 'needs review' ORDER BY id").fetchall():
            customer_id, name = demo._naive_match(subject, customers)
            with run.action(f"match:ticket-{ticket_id}"):
                with bot.transaction():
                    bot.execute("UPDATE tickets SET customer_id = %s, status = 'resolved' WHERE id = %s",
                                (customer_id, ticket_id))
                    bot.execute("INSERT INTO billing_notes (ticket_id, customer_id, note) VALUES (%s, %s, %s)",
                                (ticket_id, customer_id, f"Matched to {name}; billing contact notified"))
    sc.execute(demo.AGENT_EDIT)  # the agent's fix, outside any run: a conflict for the undo
    return Scene(dsn, run.run_id, users, owner)


def drop_scene(sc: psycopg.Connection, scene: Scene) -> None:
    for role in [*scene.users.values(), scene.owner]:
        sc.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        sc.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def scene(sc, dsn, bot):
    made = make_scene(sc, dsn, bot)
    yield made
    drop_scene(sc, made)


def token(html: str) -> str:
    found = re.search(r'name="csrftoken" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


class Browser:
    """A test client that signs in and posts forms with their CSRF token, like a browser."""

    def __init__(self, app):
        self.client = TestClient(app, follow_redirects=False)
        self.client.__enter__()

    def get(self, url: str, **kw):
        return self.client.get(url, **kw)

    def text_of(self, url: str, **kw) -> str:
        """A page that must load (200): what a person reads on it."""
        r = self.client.get(url, **kw)
        assert r.status_code == 200, (url, r.status_code, r.text[:500])
        return r.text

    def sign_in(self, user: str, password: str = PASSWORD):
        page = self.client.get("/signin")
        return self.client.post("/signin", data={"user": user, "password": password, "csrftoken": token(page.text)})

    def post(self, url: str, data: dict, page: str | None = None):
        html = self.text_of(page or "/automations")
        return self.client.post(url, data={**data, "csrftoken": token(html)})

    def close(self):
        self.client.__exit__(None, None, None)


@pytest.fixture
def browser(scene):
    opened = []

    def open_as(user: str | None = None, **options) -> Browser:
        options.setdefault("require_password_check", False)  # the test servers use trust authentication
        b = Browser(create_app(scene.dsn, **options))
        opened.append(b)
        if user:
            assert b.sign_in(user).status_code == 303
        return b

    yield open_as
    for b in opened:
        b.close()


def test_nothing_but_sign_in_works_without_signing_in(scene, browser, sc):
    b = browser()
    for url in ("/", "/automations", "/runs", f"/runs/{scene.run_id}", f"/runs/{scene.run_id}/undo", "/queue",
                "/events", "/automations/rows"):
        r = b.get(url)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), url
    assert b.get("/live").status_code == 401
    r = b.post("/automations/pause", {"automation": "billing-bot", "reason": "x"}, page="/signin")
    # The sign-in form, saying that nothing was done, and keeping what was typed for after signing in.
    assert r.status_code == 401 and 'action="/signin"' in r.text
    assert "nothing was done: billing-bot was not paused" in r.text and 'name="_draft"' in r.text
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    assert b.get("/signin").status_code == 200


def test_every_changing_route_is_a_signed_in_post(scene):
    app = create_app(scene.dsn).starlette
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        if route.path in ("/signin", "/signout") or not methods:
            continue
        assert getattr(route.endpoint, "signed_in_only", False), route.path
        assert methods <= {"GET", "HEAD", "POST"}, route.path


def test_sign_in_refused_for_wrong_password_or_unchecked_password(scene, browser):
    params = conninfo_to_dict(scene.dsn)
    try:
        psycopg.connect(make_conninfo(**dict(params, user=scene.users["viewer"], password="wrong"))).close()
        trusting = True
    except psycopg.OperationalError:
        trusting = False
    b = browser(require_password_check=True)
    r = b.sign_in(scene.users["viewer"], "wrong")
    assert r.status_code == 401
    if trusting:
        assert "without checking a password" in r.text
    else:
        assert "do not match" in r.text
    assert "wrong" not in r.text.replace('value="' + scene.users["viewer"], "")
    assert b.get("/runs").status_code == 303


def test_sign_in_refused_without_a_sidecar_role(scene, browser):
    b = browser()
    r = b.sign_in(scene.users["nobody"])
    assert r.status_code == 401 and "GRANT sidecar_viewer TO" in r.text


def test_csrf_refused_without_token(scene, browser, sc):
    b = browser(scene.users["pauser"])
    r = b.client.post("/automations/pause", data={"automation": "billing-bot", "reason": "no token"})
    assert r.status_code == 403
    r = b.client.post("/automations/pause", data={"automation": "billing-bot", "reason": "forged", "csrftoken": "x"})
    assert r.status_code == 403
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    # Signing in needs the token too (no login forgery).
    fresh = browser()
    r = fresh.client.post("/signin", data={"user": scene.users["pauser"], "password": PASSWORD})
    assert r.status_code == 403


def test_viewer_sees_no_buttons_and_cannot_pause(scene, browser, sc):
    b = browser(scene.users["viewer"])
    page = b.text_of("/automations")
    assert "billing-bot" in page and "active" in page
    assert "Pause billing-bot" not in page and "Pause everything" not in page
    run_page = b.text_of(f"/runs/{scene.run_id}")
    assert "Undo this run" not in run_page and "Undo this row" not in run_page
    assert "Northwind Solar" in run_page
    r = b.post("/automations/pause", {"automation": "billing-bot", "reason": "viewer tries"})
    assert r.status_code == 403
    assert b.get(f"/runs/{scene.run_id}/undo").status_code == 403
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


def test_pauser_pauses_with_a_reason_and_resumes(scene, browser, sc, bot):
    b = browser(scene.users["pauser"])
    page = b.text_of("/automations")
    assert "Pause billing-bot" in page and "Pause everything" in page
    assert "Undo" not in b.text_of(f"/runs/{scene.run_id}")
    r = b.post("/automations/pause", {"automation": "billing-bot", "reason": ""})
    said = b.text_of(r.headers["location"]) if r.status_code == 303 else r.text
    assert "A pause needs a reason, so that people know why" in said
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    r = b.post("/automations/pause", {"automation": "billing-bot", "reason": "matching wrong customers"})
    assert r.status_code == 303
    row = sc.execute("SELECT scope, target, paused_by, reason FROM sidecar.pauses").fetchone()
    assert row == ("automation", "billing-bot", scene.users["pauser"], "matching wrong customers")
    page = b.text_of("/automations")
    assert "Paused automation billing-bot" in page and "Resume billing-bot" in page
    with pytest.raises(psycopg.Error, match="paused"):
        bot.execute("SELECT sidecar.start_run('billing-bot')")
    events = b.text_of("/events")
    assert scene.users["pauser"] in events and "matching wrong customers" in events
    assert b.post("/automations/resume", {"automation": "billing-bot"}).status_code == 303
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0
    assert b.post("/automations/pause", {"automation": "*", "reason": "incident 7"}).status_code == 303
    assert "Every automation is paused" in b.text_of("/automations")


def test_runs_list_filters_and_counts(scene, browser, run_bot):
    other = run_bot("UPDATE customers SET billing_email = 'x@y' WHERE id = 4", automation="email-bot")
    b = browser(scene.users["viewer"])
    page = b.text_of("/runs")
    assert page.index(str(other)[:8]) < page.index(str(scene.run_id)[:8])  # newest first
    assert "tickets 3" in page and "billing_notes 3" in page
    only = b.text_of("/runs?automation=billing-bot")
    assert str(other)[:8] not in only and str(scene.run_id)[:8] in only
    assert str(scene.run_id)[:8] not in b.text_of("/runs?status=failed")
    assert str(scene.run_id)[:8] in b.text_of("/runs?since=1h&status=succeeded")


def test_run_page_in_plain_language(scene, browser):
    b = browser(scene.users["viewer"])
    page = b.text_of(f"/runs/{str(scene.run_id)[:8]}", follow_redirects=True)
    assert "What started this" in page and "match-billing v3" in page and "gpt-4o-mini" in page
    # Records named: the ticket by its subject (and id); a viewer may not read customers, so the id stays.
    ticket = "tickets &#34;Northwind Systems: invoice NS-2291 charged twice&#34; (#42)"
    assert f"Changed customer_id of {ticket} from empty to 2" in page  # columns in the table's order
    assert f"status of {ticket} from &#39;needs review&#39; to &#39;resolved&#39;" in page
    assert "match:ticket-43" in page
    assert '<time datetime="' in page and " UTC</time>" in page
    assert "+00:00" not in page.split("Raw values")[0]  # captured times read as times, raw ones a click away

    # Someone who may read customers sees the customer by name, its id beside it.
    with psycopg.connect(scene.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT SELECT ON customers TO {}").format(sql.Identifier(scene.users["undoer"])))
    page = browser(scene.users["undoer"]).text_of(f"/runs/{scene.run_id}")
    assert f"Changed customer_id of {ticket} from empty to customer Northwind Solar (#2)" in page


def test_a_big_running_runs_pages_say_its_rows_were_counted_earlier(scene, browser, bot, monkeypatch):
    monkeypatch.setattr(sidecar.capture.history, "RECOUNT_MAX", 2)
    run_id = bot.execute("SELECT sidecar.start_run('always-on-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 44")
    b = browser(scene.users["viewer"])
    assert "At least" not in b.text_of(f"/runs/{run_id}")  # counted when first shown
    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 44")
    page = b.text_of(f"/runs/{run_id}")
    assert "At least 2 rows in tickets (2)" in page
    assert "the run has written since, and is counted again once it has finished" in page
    assert "at least tickets 2" in b.text_of("/runs")


def test_undo_preview_lists_the_conflict(scene, browser, sc):
    before = snapshot(sc, "tickets")
    b = browser(scene.users["undoer"])
    assert "Undo this run" in b.text_of(f"/runs/{scene.run_id}")
    page = b.text_of(f"/runs/{scene.run_id}/undo")
    assert "Nothing has changed yet" in page
    assert "5 rows to restore" in page and "1 conflict" in page
    conflicts = page[page.index("Conflicts: kept as they are"):]
    assert "(#43)" in conflicts and "Northwind Systems: update billing address" in conflicts and "someone outside any run" in conflicts
    assert "waiting on customer" in conflicts
    assert snapshot(sc, "tickets") == before


def test_undo_says_why_a_row_the_run_added_stays(scene, browser, sc, run_bot):
    """Not a later edit of the row: rows changed since refer to it. The preview and the
    undo's message say that, not 'changed since by someone'."""
    run_id = run_bot("INSERT INTO customers (id, name) VALUES (9, 'Fabrikam')", automation="billing-bot")
    sc.execute("INSERT INTO tickets (id, customer_id, subject) VALUES (90, 9, 'filed by a person')")
    b = browser(scene.users["undoer"])
    page = b.text_of(f"/runs/{run_id}/undo")
    assert "0 rows to restore" in page and "1 conflict" in page
    conflicts = page[page.index("Conflicts: kept as they are"):]
    assert "added by the run, and rows changed since still refer to it" in conflicts
    assert "changed since by" not in conflicts

    r = b.post(f"/runs/{run_id}/undo", {"reason": "test"}, page=f"/runs/{run_id}/undo")
    assert r.status_code == 303
    message = b.text_of(r.headers["location"])
    assert "added by the run, and rows changed since still refer to it" in message
    assert sc.execute("SELECT name FROM customers WHERE id = 9").fetchone() == ("Fabrikam",)


def test_undo_restores_rows_and_keeps_the_conflict(scene, browser, sc):
    b = browser(scene.users["undoer"])
    r = b.post(f"/runs/{scene.run_id}/undo", {"reason": "wrong customers"}, page=f"/runs/{scene.run_id}/undo")
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{scene.run_id}"
    rows = sc.execute("SELECT id, customer_id, status FROM tickets WHERE id BETWEEN 42 AND 44 ORDER BY id").fetchall()
    assert rows == [(42, None, "needs review"), (43, 3, "waiting on customer"), (44, None, "needs review")]
    assert sc.execute("SELECT count(*) FROM billing_notes").fetchone()[0] == 0
    page = b.text_of(r.headers["location"])
    assert "restored 5 rows" in page and "Kept 1 conflicting row" in page and "update billing address&#34; (#43)" in page
    event = sc.execute("SELECT actor, summary FROM sidecar.events WHERE kind = 'undo'").fetchone()
    assert event[0] == scene.users["undoer"] and "wrong customers" in event[1]
    assert "Undo this run" not in page  # undone: no second undo offered


def test_undo_one_action_and_one_row(scene, browser, sc):
    b = browser(scene.users["undoer"])
    preview = b.text_of(f"/runs/{scene.run_id}/undo?action=match:ticket-42")
    assert "2 rows to restore" in preview
    r = b.post(f"/runs/{scene.run_id}/undo", {"action": "match:ticket-42"}, page=f"/runs/{scene.run_id}")
    assert r.status_code == 303
    assert sc.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "needs review"
    assert sc.execute("SELECT status FROM tickets WHERE id = 44").fetchone()[0] == "resolved"
    page = b.text_of(f"/runs/{scene.run_id}")
    assert "Undo this row" in page
    r = b.post(f"/runs/{scene.run_id}/undo", {"row": "tickets:44"}, page=f"/runs/{scene.run_id}")
    assert r.status_code == 303
    assert sc.execute("SELECT status FROM tickets WHERE id = 44").fetchone()[0] == "needs review"
    assert sc.execute("SELECT count(*) FROM billing_notes WHERE ticket_id = 44").fetchone()[0] == 1


def test_run_page_is_paginated(scene, browser, sc, run_bot):
    sc.execute("INSERT INTO customers SELECT g, 'Customer ' || g, NULL FROM generate_series(100, 219) g")
    big = run_bot("UPDATE customers SET billing_email = 'c' || id || '@example.com' WHERE id >= 100")
    b = browser(scene.users["viewer"])
    first = b.text_of(f"/runs/{big}")
    assert "Page 1 of 3 (120 in all)" in first
    assert "customers &#34;Customer 100&#34;" in first and "customers &#34;Customer 150&#34;" not in first
    third = b.text_of(f"/runs/{big}?page=3")
    assert "customers &#34;Customer 219&#34;" in third and "customers &#34;Customer 100&#34;" not in third


def test_a_run_of_many_actions_is_paged_without_counting_them_all(scene, browser, sc, run_bot, monkeypatch):
    """A run left running for days has millions of changes: pagers count up to a limit and say
    "more than", and a page is found among the run's first statements, as few as it needs."""
    monkeypatch.setattr(sidecar.console.changes, "COUNT_MAX", 60)
    sc.execute("INSERT INTO customers SELECT g, 'Customer ' || g, NULL FROM generate_series(100, 169) g")
    many = run_bot(*[f"UPDATE customers SET billing_email = 'c{i}@example.com' WHERE id = {i}" for i in range(100, 170)])
    b = browser(scene.users["viewer"])
    first = b.text_of(f"/runs/{many}")
    assert "in more than 60 actions" in first
    assert first.count("Page 1 (more than 60 in all)") == 2  # actions and changes
    assert "customers &#34;Customer 149&#34;" in first and "customers &#34;Customer 150&#34;" not in first
    second = b.text_of(f"/runs/{many}?page=2")  # past the first 64 statements
    assert "customers &#34;Customer 150&#34;" in second and "customers &#34;Customer 169&#34;" in second
    assert "customers &#34;Customer 149&#34;" not in second
    assert "Page 2 (more than 60 in all)" in second
    assert 'href="?page=3" rel="next"' in second and ">Last<" not in second.split("Pages of changes")[1]


def test_long_values_are_cut_with_a_way_to_see_all(scene, browser, run_bot):
    long_note = "Refund approved. " * 20
    run_id = run_bot(("UPDATE billing_notes SET note = %s WHERE ticket_id = 42", (long_note,)))
    page = browser(scene.users["viewer"]).text_of(f"/runs/{run_id}")
    assert '<details class="long">' in page and f"show all {len(long_note):,} characters" in page


def test_sessions_expire(scene, browser):
    b = browser(scene.users["viewer"], idle_hours=1 / 3600)
    assert b.get("/runs").status_code == 200
    time.sleep(1.2)
    assert b.get("/runs").status_code == 303


def test_sign_out_ends_the_session(scene, browser):
    b = browser(scene.users["viewer"])
    r = b.post("/signout", {}, page="/runs")
    assert r.status_code == 303
    assert b.get("/runs").status_code == 303


def test_approver_approves_and_rejects_held_writes(scene, browser, sc, run_bot):
    from sidecar.review import rules

    rules.add_rule(sc, "customers", when="NEW.billing_email IS DISTINCT FROM OLD.billing_email",
                   reason="billing email changes need review")
    run_bot("UPDATE customers SET billing_email = 'ap@northwind.example' WHERE id = 3",
            "UPDATE customers SET billing_email = 'spam@evil.example' WHERE id = 4")
    viewer = browser(scene.users["viewer"]).text_of("/queue")
    assert "ap@northwind.example" in viewer and "Approve #" not in viewer
    b = browser(scene.users["approver"])
    page = b.text_of("/queue")
    ids = [int(x) for x in re.findall(r'action="/queue/(\d+)/approve"', page)]
    assert len(ids) == 2
    assert "billing email changes need review" in page
    r = b.post(f"/queue/{ids[0]}/approve", {}, page="/queue")
    assert r.status_code == 303
    assert sc.execute("SELECT billing_email FROM customers WHERE id = 3").fetchone()[0] == "ap@northwind.example"
    assert b.post(f"/queue/{ids[1]}/reject", {"reason": "not their address"}, page="/queue").status_code == 303
    assert sc.execute("SELECT billing_email FROM customers WHERE id = 4").fetchone()[0] == "finance@globex.example"
    assert "Nothing waits for review" in b.text_of("/queue")
    assert "not their address" in b.text_of("/queue?show=all")


def test_sign_in_sends_people_back_only_to_this_site(scene, browser):
    b = browser()
    page = b.get("/signin")
    for target, expected in (("/runs?status=failed", "/runs?status=failed"), ("//evil.example/x", "/"),
                             ("/\\evil.example", "/"), ("https://evil.example", "/")):
        r = b.client.post("/signin", data={"user": scene.users["viewer"], "password": PASSWORD, "next": target,
                                           "csrftoken": token(page.text)})
        assert r.status_code == 303 and r.headers["location"] == expected, target
        assert b.post("/signout", {}, page="/runs").status_code == 303
        page = b.get("/signin")


def test_a_failed_run_is_rerun_from_its_page_and_a_paused_bot_resumed_there(scene, browser, sc, make_conn):
    rerunner = f"rerunner_{scene.owner.rsplit('_', 1)[1]}"
    _login_role(sc, rerunner, "sidecar_rerunner", "sidecar_pauser")
    scene.users["rerunner"] = rerunner
    conn = make_conn()
    with pytest.raises(RuntimeError):
        with sidecar.Run(conn, "billing-bot") as run:
            run.plan(["note:ticket-41", "note:ticket-42"])
            with run.step("note:ticket-41"):
                conn.execute("UPDATE tickets SET status = 'noted' WHERE id = 41")
            with run.step("note:ticket-42"):
                raise RuntimeError("the mail server timed out")
    b = browser(rerunner)
    page = b.get(f"/runs/{run.run_id}").text
    assert "step note:ticket-42 failed: RuntimeError: the mail server timed out" in page  # What failed, as the CLI says
    assert "Open a rerun of the steps not done" in page and "sidecar rerun" not in page
    r = b.post(f"/runs/{run.run_id}/rerun", {"reason": "mail server back"}, page=f"/runs/{run.run_id}")
    assert r.status_code == 303
    rerun_id = sc.execute("SELECT run_id FROM sidecar.runs WHERE rerun_of = %s", (run.run_id,)).fetchone()[0]
    assert r.headers["location"] == f"/runs/{rerun_id}"
    page = b.get(r.headers["location"]).text
    assert f"Opened rerun {str(rerun_id)[:8]}" in page and "note:ticket-42" in page
    assert "blocked" not in page and "force" not in page and "[&#34;" not in page  # the meta in words, not JSON

    # Paused, the run page offers Resume where it offered Pause.
    sc.execute("SELECT sidecar.pause('billing-bot', 'checking')")
    page = b.get(f"/runs/{run.run_id}").text
    assert "Resume billing-bot" in page and "Pause billing-bot" not in page
    r = b.post("/automations/resume", {"automation": "billing-bot"}, page=f"/runs/{run.run_id}")
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


def test_a_form_from_before_a_restart_says_nothing_was_done(scene, browser, sc):
    b = browser(scene.users["pauser"])
    r = b.client.post("/automations/pause", data={"automation": "billing-bot", "reason": "x", "csrftoken": "stale"},
                      headers={"referer": "http://testserver/automations"})
    assert r.status_code == 403
    assert "Nothing was done" in r.text and "href='/automations'" in r.text
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


def test_a_row_undone_alone_offers_no_undo_again(scene, browser, sc):
    b = browser(scene.users["undoer"])
    r = b.post(f"/runs/{scene.run_id}/undo", {"row": "tickets:44"}, page=f"/runs/{scene.run_id}/undo?row=tickets:44")
    assert r.status_code == 303, r.text
    assert sc.execute("SELECT status FROM tickets WHERE id = 44").fetchone()[0] == "needs review"
    page = b.get(f"/runs/{scene.run_id}").text
    items = page.split('<li class="change')
    ticket_44 = [i for i in items if "(#44)" in i.split("</p>")[0] and "tickets" in i.split("</p>")[0]]
    assert ticket_44 and all("undone by" in i and "Undo this row" not in i for i in ticket_44)
    assert any("Undo this row" in i for i in items if "(#42)" in i.split("</p>")[0])
