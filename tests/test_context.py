"""Context on actions: the model's reason, what it read and how sure it was, stored with the action."""

from __future__ import annotations

import json

import psycopg
import pytest

import sidecar
from sidecar.steps.context import ContextError
from tests.fix_sidecar import track


@pytest.fixture
def tickets(sc):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, subject text NOT NULL, status text NOT NULL DEFAULT 'open')")
    sc.execute("INSERT INTO tickets VALUES (42, 'Northwind Systems: invoice charged twice'), (43, 'Password reset')")
    track(sc, "tickets", label_column="subject")
    return sc


def _context(conn, run_id, key):
    return conn.execute("SELECT context FROM sidecar.actions WHERE run_id = %s AND key = %s",
                        (run_id, key)).fetchone()[0]


def test_run_action_stores_why_read_confidence_and_extra(tickets, bot):
    with sidecar.Run(bot, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.action("close:ticket-42", why="customer confirmed the refund landed",
                        read=[sidecar.row("tickets", 42), "email: thanks, the refund arrived"],
                        confidence=0.62, model="gpt-x", tool_call_id="call_7"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")
    assert _context(tickets, run.run_id, "close:ticket-42") == {
        "why": "customer confirmed the refund landed",
        "read": [{"table": "tickets", "key": 42}, "email: thanks, the refund arrived"],
        "confidence": 0.62, "model": "gpt-x", "tool_call_id": "call_7"}
    # The run's own meta stays as it was.
    assert tickets.execute("SELECT meta FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone()[0] == {
        "prompt": "v3"}


def test_set_context_merges_later_keys_win_before_and_after_the_first_write(tickets, make_conn):
    client = make_conn()
    run_id = client.execute("SELECT sidecar.start_run('mail-agent')").fetchone()[0]
    with client.transaction():
        # Before the action's first write: the action is registered then, the write finds it.
        client.execute("SELECT sidecar.set_context(why => 'first thought', confidence => 0.4)")
        client.execute("UPDATE tickets SET status = 'pending' WHERE id = 43")
        client.execute("SELECT sidecar.set_context(confidence => 0.9, extra => '{\"model\": \"m1\"}')")
        txid = client.execute("SELECT txid_current()").fetchone()[0]
    key = f"tx:{txid}"
    assert _context(tickets, run_id, key) == {"why": "first thought", "confidence": 0.9, "model": "m1"}
    # One action: the write and the context share it.
    assert tickets.execute("SELECT count(*) FROM sidecar.actions WHERE run_id = %s", (run_id,)).fetchone()[0] == 1
    assert tickets.execute("SELECT a.key FROM sidecar.statements s JOIN sidecar.actions a USING (action_id) "
                           "WHERE s.run_id = %s", (run_id,)).fetchone()[0] == key


def test_set_context_behind_a_transaction_pooler_with_set_local(tickets, make_conn, sc):
    run_id = sc.execute("SELECT gen_random_uuid()").fetchone()[0]
    pooled = make_conn(application_name="pooled-agent")
    with pooled.transaction():
        pooled.execute("SELECT set_config('sidecar.run_id', %s, true)", (str(run_id),))
        pooled.execute("SET LOCAL sidecar.action = 'reply:ticket-43'")
        pooled.execute("UPDATE tickets SET status = 'answered' WHERE id = 43")
        pooled.execute("SELECT sidecar.set_context(why => 'answered the reset question')")
    # Nothing of the tagging outlives the transaction.
    assert pooled.execute("SELECT current_setting('sidecar.run_id', true)").fetchone()[0] == ""
    assert _context(tickets, run_id, "reply:ticket-43") == {"why": "answered the reset question"}
    assert tickets.execute("SELECT automation FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0] == \
        "pooled-agent"


@pytest.mark.parametrize("call, field", [
    ("sidecar.set_context(confidence => 1.5)", "confidence"),
    ("sidecar.set_context(confidence => -0.1)", "confidence"),
    ("sidecar.set_context(confidence => 'NaN')", "confidence"),
    ("sidecar.set_context(read => '{\"table\": \"tickets\"}')", "read"),
    ("sidecar.set_context(read => '[42]')", "read"),
    ("sidecar.set_context(read => '[{\"table\": \"tickets\"}]')", "read"),
    ("sidecar.set_context(extra => '[1, 2]')", "extra"),
    ("sidecar.set_context(extra => '{\"confidence\": \"high\"}')", "confidence"),
    ("sidecar.set_context(extra => '{\"why\": 7}')", "why"),
    ("sidecar.set_context(read => jsonb_build_array(repeat('x', 5000)))", "read, item 1"),
    ("sidecar.set_context(why => repeat('x', 70000))", "over the limit"),
])
def test_bad_context_is_refused_naming_the_field_and_nothing_lands(tickets, bot, call, field):
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    bot.execute("SET sidecar.action = 'close:ticket-42'")
    with pytest.raises(psycopg.Error) as err:
        with bot.transaction():
            bot.execute("SELECT " + call)
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")
    assert err.value.sqlstate == "SC010", str(err.value)
    message = err.value.diag.message_primary
    assert message.startswith("sidecar: ") and "\n" not in message and field in message
    assert tickets.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "open"
    assert tickets.execute("SELECT count(*) FROM sidecar.actions WHERE context IS NOT NULL").fetchone()[0] == 0


def test_context_over_the_limit_when_merged_is_refused_and_the_first_part_stays(tickets, bot):
    bot.execute("SELECT sidecar.start_run('ticket-bot')")
    bot.execute("SET sidecar.action = 'a'")
    bot.execute("SELECT sidecar.set_context(why => repeat('x', 40000))")
    with pytest.raises(psycopg.Error) as err:
        bot.execute("SELECT sidecar.set_context(extra => jsonb_build_object('notes', repeat('y', 40000)))")
    assert err.value.sqlstate == "SC010" and "would be" in err.value.diag.message_primary
    assert len(tickets.execute("SELECT context ->> 'why' FROM sidecar.actions WHERE key = 'a'").fetchone()[0]) == 40000


def test_set_context_without_a_run_says_so(tickets, make_conn):
    with pytest.raises(psycopg.Error) as err:
        make_conn().execute("SELECT sidecar.set_context(why => 'x')")
    assert err.value.sqlstate == "SC005" and "no run is active" in err.value.diag.message_primary


@pytest.mark.parametrize("kwargs, field", [
    ({"confidence": 62}, "confidence"),
    ({"confidence": "high"}, "confidence"),
    ({"confidence": True}, "confidence"),
    ({"confidence": float("nan")}, "confidence"),
    ({"read": "tickets #42"}, "read"),
    ({"why": ["a"]}, "why"),
    ({"read": ["x" * 5000]}, "read, item 1"),
])
def test_python_bad_context_raises_before_the_block_runs(tickets, bot, kwargs, field):
    ran = False
    with pytest.raises(ContextError, match=field):
        with sidecar.Run(bot, "ticket-bot") as run:
            with run.action("close:ticket-42", **kwargs):
                ran = True
                bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")
    assert not ran
    assert tickets.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "open"
    assert tickets.execute("SELECT status FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone()[0] == \
        "failed"


def test_step_and_steps_carry_context_a_callable_per_item(tickets, make_conn):
    bot = make_conn(autocommit=False)
    with sidecar.Run(bot, "ticket-bot") as run:
        with run.step("note:ticket-42", why="needs a note", confidence=0.8) as step:
            assert not step.skip
            bot.execute("UPDATE tickets SET status = 'noted' WHERE id = 42")
            step.context(confidence=0.85)
        for ticket_id in run.steps([43], key=lambda t: f"close:ticket-{t}",
                                   why=lambda t: f"ticket {t} answered", read=lambda t: [sidecar.row("tickets", t)],
                                   confidence=0.7):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (ticket_id,))
    assert _context(tickets, run.run_id, "note:ticket-42") == {"why": "needs a note", "confidence": 0.85}
    assert _context(tickets, run.run_id, "close:ticket-43") == {
        "why": "ticket 43 answered", "read": [{"table": "tickets", "key": 43}], "confidence": 0.7}
    # The step's completion names the action that carries the context.
    assert tickets.execute("SELECT a.context ->> 'why' FROM sidecar.steps s JOIN sidecar.actions a USING (action_id) "
                           "WHERE s.key = 'close:ticket-43'").fetchone()[0] == "ticket 43 answered"


def test_context_is_stored_as_given(tickets, bot):
    reason = "<script>alert('x')</script> & \"quoted\"\nsecond line"
    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("a", why=reason, read=["<b>bold</b>"]):
            bot.execute("UPDATE tickets SET status = 'x' WHERE id = 42")
    assert _context(tickets, run.run_id, "a") == {"why": reason, "read": ["<b>bold</b>"]}
    assert json.loads(json.dumps(_context(tickets, run.run_id, "a")))["why"] == reason


def test_undo_and_undo_of_undo_keep_the_original_context_readable(tickets, bot, cli):
    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("close:ticket-42", why="customer confirmed", confidence=0.7):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")
    undone = cli("undo", str(run.run_id), "--yes")
    assert undone.exit_code == 0, undone.output
    undo_run = tickets.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone()[0]
    assert cli("undo", str(undo_run), "--yes").exit_code == 0
    shown = cli("show", str(run.run_id)).output
    assert "Action close:ticket-42\n  Why: customer confirmed\n  Confidence: 0.7" in shown
    assert _context(tickets, run.run_id, "close:ticket-42") == {"why": "customer confirmed", "confidence": 0.7}


def test_a_purge_drops_the_context_with_the_images_and_keeps_the_action(tickets, bot):
    from datetime import datetime, timedelta, timezone

    import sidecar.ops.retention

    with sidecar.Run(bot, "ticket-bot") as run:
        with run.action("close:ticket-42", why="read the customer's mail", read=["email: my card number is ..."]):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")
    sidecar.ops.retention.purge(tickets, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert tickets.execute("SELECT key, context FROM sidecar.actions WHERE run_id = %s",
                           (run.run_id,)).fetchall() == [("close:ticket-42", None)]


def test_a_reruns_steps_carry_their_own_context(tickets, make_conn, cli):
    first = make_conn(autocommit=False)
    with pytest.raises(RuntimeError):
        with sidecar.Run(first, "ticket-bot") as run:
            for ticket in run.steps([42, 43], key=lambda t: f"close:ticket-{t}", why=lambda t: f"first try {t}"):
                if ticket == 43:
                    raise RuntimeError("model timed out")
                first.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (ticket,))
    opened = cli("rerun", str(run.run_id))
    assert opened.exit_code == 0, opened.output
    rerun_id = opened.output.split("Rerun ")[1].split(":")[0]
    again = make_conn(autocommit=False)
    with sidecar.Run(again, "ticket-bot", run_id=rerun_id) as rerun:
        for ticket in rerun.steps([42, 43], key=lambda t: f"close:ticket-{t}", why=lambda t: f"second try {t}",
                                  confidence=0.9):
            again.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (ticket,))
    assert _context(tickets, run.run_id, "close:ticket-42") == {"why": "first try 42"}
    assert _context(tickets, rerun.run_id, "close:ticket-43") == {"why": "second try 43", "confidence": 0.9}
    # The step done by the first run is skipped: the rerun gives it no context of its own.
    assert tickets.execute("SELECT count(*) FROM sidecar.actions WHERE run_id = %s AND key = 'close:ticket-42'",
                           (rerun.run_id,)).fetchone()[0] == 0
