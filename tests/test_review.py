"""Hold rules and the review queue: risky automation writes wait for a person."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import sidecar.review.held
import sidecar.steps.runs
from tests.fix_sidecar import counting_calls, snapshot, track, undo


@pytest.fixture
def billing(sc):
    """Invoices the refund bot works on; refunds over 500 need a person."""
    sc.execute(
        "CREATE TABLE invoices (id int PRIMARY KEY, customer text NOT NULL, "
        "refund_amount numeric NOT NULL DEFAULT 0, status text NOT NULL DEFAULT 'open')"
    )
    sc.execute("INSERT INTO invoices (id, customer) SELECT g, 'customer ' || g FROM generate_series(1, 20) g")
    track(sc, "invoices", display_name="invoice")
    return sc


def _hold_refunds(cli, *extra: str):
    result = cli("rule", "add", "invoices", "--when", "NEW.refund_amount > 500", "--hold",
                 "--reason", "refund over limit", *extra)
    assert result.exit_code == 0, result.output
    return result


def _refund(invoice_id: int, amount: int) -> str:
    return f"UPDATE invoices SET refund_amount = {amount}, status = 'refunded' WHERE id = {invoice_id}"


def _action(key: str) -> str:
    return f"SELECT set_config('sidecar.action', '{key}', false)"


def _row(conn, invoice_id: int):
    return conn.execute("SELECT refund_amount, status FROM invoices WHERE id = %s", (invoice_id,)).fetchone()


def _triggers(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY 1", (table,))]


def _status_of(conn, pending_id: int) -> str:
    return conn.execute("SELECT status FROM sidecar.pending WHERE pending_id = %s", (pending_id,)).fetchone()[0]


# -- holding ----------------------------------------------------------------------------------


def test_held_row_is_absent_from_the_table_and_waits_in_the_queue(billing, bot, cli, run_bot):
    _hold_refunds(cli)

    with sidecar.steps.runs.Run(bot, "refund-bot") as run:
        bot.execute(_action("refund:17"))
        cur = bot.execute("UPDATE invoices SET refund_amount = CASE id WHEN 17 THEN 900 ELSE 100 END, "
                          "status = 'refunded' WHERE id IN (17, 18)")
        # The automation's statement succeeded; only the small refund landed.
        assert cur.rowcount == 1

    assert _row(billing, 17) == (0, "open")
    assert _row(billing, 18) == (100, "refunded")

    shown = cli("queue")
    assert shown.exit_code == 0, shown.output
    assert "Set refund amount of invoice #17 from 0 to 900 and status from 'open' to 'refunded' " \
           "(rule: refund over limit)" in shown.stdout
    assert f"refund-bot  run {str(run.run_id)[:8]}  action refund:17" in shown.stdout

    items = json.loads(cli("queue", "--json").stdout)["queue"]
    assert len(items) == 1
    item = items[0]
    assert item["run_id"] == str(run.run_id)
    assert item["action"] == "refund:17"
    assert item["automation"] == "refund-bot"
    assert item["op"] == "U"
    assert item["key"] == {"id": 17}
    assert item["old_row"] == {"id": 17, "customer": "customer 17", "refund_amount": 0, "status": "open"}
    # The full proposed row, not only the changed columns.
    assert item["new_row"] == {"id": 17, "customer": "customer 17", "refund_amount": 900, "status": "refunded"}
    assert item["reason"] == "refund over limit"
    assert item["status"] == "pending"


def test_held_insert_and_delete(billing, cli, run_bot):
    cli("rule", "add", "invoices", "--when", "OLD.status = 'paid'", "--reason", "paid invoices stay")
    _hold_refunds(cli)
    billing.execute("UPDATE invoices SET status = 'paid' WHERE id = 3")

    run_bot("INSERT INTO invoices VALUES (30, 'new customer', 700, 'refunded'), (31, 'other', 0, 'open')",
            "DELETE FROM invoices WHERE id IN (3, 4)")

    assert billing.execute("SELECT id FROM invoices WHERE id IN (3, 4, 30, 31) ORDER BY id").fetchall() == [(3,), (31,)]
    lines = [i.text for i in sidecar.review.held.queue(billing)]
    assert lines == [
        "Add invoice #30 (customer 'new customer', refund amount 700, status 'refunded') (rule: refund over limit)",
        "Delete invoice #3 (was customer 'customer 3', refund amount 0, status 'paid') (rule: paid invoices stay)",
    ]


def test_untagged_writes_and_undo_runs_are_not_held(billing, cli, run_bot):
    _hold_refunds(cli)
    billing.execute(_refund(5, 800))  # a person, outside any run
    assert _row(billing, 5) == (800, "refunded")

    run_id = run_bot("UPDATE invoices SET refund_amount = 50 WHERE id = 5")
    result = undo(billing, run_id)  # puts 800 back: an undo is the operator's repair

    assert result.restored == 1
    assert _row(billing, 5) == (800, "refunded")
    assert sidecar.review.held.queue(billing) == []


def test_untagged_writes_do_not_call_the_hold_function(billing, cli, run_bot, make_conn):
    """A person's or an app's write passes the hold trigger's WHEN clause without a call of
    the rule function per row; a tagged write still calls it and is held."""
    person, calls = counting_calls(billing, make_conn, application_name="psql")
    _hold_refunds(cli)
    with person.transaction():
        before = calls("hold%")
        person.execute("UPDATE invoices SET refund_amount = 900 WHERE id <= 10")
        assert calls("hold%") == before
    assert _row(billing, 3) == (900, "open")

    run_bot(_refund(12, 800))
    assert _row(billing, 12) == (0, "open")
    assert len(sidecar.review.held.queue(billing)) == 1


def test_tagged_rows_no_rule_can_match_do_not_call_the_hold_function(billing, cli, make_conn):
    """The hold triggers' WHEN clauses carry the rules' predicates: a tagged write of rows no
    rule matches lands without a call of the rule function per row; a matching row is held."""
    bot, calls = counting_calls(billing, make_conn, application_name="refund-bot")
    _hold_refunds(cli)
    with sidecar.steps.runs.Run(bot, "refund-bot"), bot.transaction():
        before = calls("hold%")
        bot.execute("UPDATE invoices SET status = 'checked' WHERE id <= 10")
        bot.execute("INSERT INTO invoices (id, customer, refund_amount) VALUES (21, 'new customer', 100)")
        assert calls("hold%") == before
        bot.execute(_refund(12, 800))
        assert calls("hold%") == before + 1
    assert _row(billing, 3) == (0, "checked")
    assert _row(billing, 21) == (100, "open")
    assert _row(billing, 12) == (0, "open")
    assert [p.op for p in sidecar.review.held.queue(billing)] == ["U"]


def test_a_rule_naming_the_old_row_still_holds_inserts(billing, cli, run_bot):
    """An INSERT trigger's WHEN cannot name OLD: for that event every tagged row calls the
    function, which evaluates the predicate with OLD NULL, as a rule author expects."""
    added = cli("rule", "add", "invoices", "--when",
                "OLD.status IS DISTINCT FROM 'refunded' AND NEW.refund_amount > 500",
                "--hold", "--reason", "refund over limit")
    assert added.exit_code == 0, added.output

    run_bot("INSERT INTO invoices (id, customer, refund_amount) VALUES (21, 'new customer', 900)",
            "INSERT INTO invoices (id, customer, refund_amount) VALUES (22, 'new customer', 100)",
            _refund(5, 700), _refund(6, 50))

    assert _row(billing, 21) is None
    assert _row(billing, 22) == (100, "open")
    assert _row(billing, 5) == (0, "open")
    assert _row(billing, 6) == (50, "refunded")
    assert sorted(p.op for p in sidecar.review.held.queue(billing)) == ["I", "U"]


def test_a_paused_automation_cannot_slip_a_write_into_the_queue(billing, bot, cli):
    _hold_refunds(cli)
    with sidecar.steps.runs.Run(bot, "refund-bot"):
        billing.execute("SELECT sidecar.pause('refund-bot', 'wrong refunds')")
        with pytest.raises(psycopg.Error) as caught:
            bot.execute(_refund(17, 900))
        assert caught.value.diag.sqlstate == "SC001"
    assert sidecar.review.held.queue(billing) == []


# -- approving --------------------------------------------------------------------------------


def test_approve_applies_the_row_under_the_original_run_and_undo_reverses_it(billing, cli, run_bot):
    _hold_refunds(cli)
    run_id = run_bot(_action("refund:17"), _refund(17, 900))
    pending_id = sidecar.review.held.queue(billing)[0].pending_id

    result = cli("approve", str(pending_id))

    assert result.exit_code == 0, result.output
    assert f"approved #{pending_id}: Set refund amount of invoice #17 from 0 to 900" in result.stdout
    assert f"undo with: sidecar undo {str(run_id)[:8]} --action refund:17" in result.stdout
    assert _row(billing, 17) == (900, "refunded")
    assert _status_of(billing, pending_id) == "approved"
    assert cli("queue").stdout.strip() == "No held changes wait for review."
    # Captured under the original run and action, by the person who approved.
    captured = billing.execute(
        "SELECT s.run_id, a.key FROM sidecar.statements s JOIN sidecar.actions a USING (action_id)").fetchall()
    assert captured == [(run_id, "refund:17")]
    event = billing.execute("SELECT kind, run_id, summary FROM sidecar.events WHERE kind = 'approve'").fetchone()
    assert event[:2] == ("approve", run_id) and f"held change {pending_id}" in event[2]

    done = undo(billing, run_id)

    assert done.restored == 1
    assert _row(billing, 17) == (0, "open")


def test_approve_is_refused_when_the_row_changed_since_it_was_held(billing, cli, run_bot):
    _hold_refunds(cli)
    run_bot(_refund(17, 900))
    pending_id = sidecar.review.held.queue(billing)[0].pending_id
    billing.execute("UPDATE invoices SET status = 'disputed' WHERE id = 17")  # a person, meanwhile
    before = snapshot(billing, "invoices", "id")

    result = cli("approve", str(pending_id))

    assert result.exit_code == 1
    assert "approval refused, nothing was applied" in result.stderr
    assert f"#{pending_id}: invoice #17 changed since it was held (status 'open' is now 'disputed')" in result.stderr
    assert snapshot(billing, "invoices", "id") == before
    waiting = sidecar.review.held.queue(billing)
    assert [(i.pending_id, i.status) for i in waiting] == [(pending_id, "conflict")]
    assert "approval was refused" in cli("queue").stdout

    # Once the row is back as it was, the same change can be approved.
    billing.execute("UPDATE invoices SET status = 'open' WHERE id = 17")
    assert cli("approve", str(pending_id)).exit_code == 0
    assert _row(billing, 17) == (900, "refunded")


def test_approve_of_a_held_insert_is_refused_when_the_key_exists_now(billing, cli, run_bot):
    _hold_refunds(cli)
    run_bot("INSERT INTO invoices VALUES (40, 'new customer', 900, 'refunded')")
    pending_id = sidecar.review.held.queue(billing)[0].pending_id
    billing.execute("INSERT INTO invoices (id, customer) VALUES (40, 'someone else')")

    result = cli("approve", str(pending_id))

    assert result.exit_code == 1
    assert "invoice #40 exists now: it was added since the insert was held" in result.stderr
    assert billing.execute("SELECT customer FROM invoices WHERE id = 40").fetchone() == ("someone else",)


def test_an_upsert_is_held_as_the_change_it_makes(billing, cli, run_bot, pg_major):
    """INSERT ... ON CONFLICT DO UPDATE and MERGE fire the INSERT triggers for rows that exist
    already; what would land there is an update of the row (or nothing), and that is what is
    held, approved and applied, not an insert that could never be approved."""
    _hold_refunds(cli)
    billing.execute("UPDATE invoices SET status = 'paid' WHERE id = 9")  # a person, outside any run
    statements = [
        "INSERT INTO invoices (id, customer, refund_amount, status) "
        "VALUES (17, 'customer 17', 900, 'refunded'), (30, 'new customer', 800, 'refunded') "
        "ON CONFLICT (id) DO UPDATE SET refund_amount = excluded.refund_amount, status = excluded.status",
        # Nothing to hold: the row exists, so the statement leaves it alone.
        "INSERT INTO invoices (id, customer, refund_amount) VALUES (9, 'customer 9', 999) ON CONFLICT DO NOTHING",
    ]
    if pg_major >= 15:
        statements.append(
            "MERGE INTO invoices i USING (VALUES (18, 700), (31, 600)) AS s(id, amount) ON i.id = s.id "
            "WHEN MATCHED THEN UPDATE SET refund_amount = s.amount "
            "WHEN NOT MATCHED THEN INSERT (id, customer, refund_amount) VALUES (s.id, 'merged', s.amount)")
    run_bot(*statements)

    assert billing.execute("SELECT count(*) FROM invoices WHERE id >= 30").fetchone()[0] == 0
    assert _row(billing, 17) == (0, "open") and _row(billing, 9) == (0, "paid")
    lines = [i.text for i in sidecar.review.held.queue(billing)]
    expected = [
        "Set refund amount of invoice #17 from 0 to 900 and status from 'open' to 'refunded' (rule: refund over limit)",
        "Add invoice #30 (customer 'new customer', refund amount 800, status 'refunded') (rule: refund over limit)",
    ]
    if pg_major >= 15:
        expected += [
            "Set refund amount of invoice #18 from 0 to 700 (rule: refund over limit)",
            "Add invoice #31 (customer 'merged', refund amount 600, status 'open') (rule: refund over limit)",
        ]
    assert sorted(lines) == sorted(expected)

    for item in sidecar.review.held.queue(billing):
        result = cli("approve", str(item.pending_id))
        assert result.exit_code == 0, result.output
    assert _row(billing, 17) == (900, "refunded") and _row(billing, 30) == (800, "refunded")
    if pg_major >= 15:
        assert _row(billing, 18) == (700, "open") and _row(billing, 31) == (600, "open")


def test_a_plain_insert_of_a_key_that_exists_fails_as_it_would_untracked(billing, cli, run_bot):
    _hold_refunds(cli)
    with pytest.raises(psycopg.errors.UniqueViolation):
        run_bot("INSERT INTO invoices (id, customer, refund_amount) VALUES (17, 'again', 900)")
    assert sidecar.review.held.queue(billing) == []
    assert _row(billing, 17) == (0, "open")


def test_a_foreign_keys_action_on_a_row_a_rule_holds_refuses_the_whole_statement(sc, cli, run_bot):
    """PostgreSQL lets a BEFORE trigger skip a foreign key's ON DELETE CASCADE or SET NULL: a
    hold there would leave rows that refer to nothing. The statement is refused instead."""
    sc.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL)")
    sc.execute("CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts "
               "ON DELETE CASCADE ON UPDATE CASCADE, status text NOT NULL)")
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, account_id int REFERENCES accounts ON DELETE SET NULL, "
               "body text NOT NULL)")
    sc.execute("INSERT INTO accounts VALUES (1, 'Acme'), (2, 'Globex'), (3, 'Initech')")
    sc.execute("INSERT INTO orders VALUES (10, 1, 'paid'), (11, 1, 'open'), (20, 2, 'paid'), (30, 3, 'open')")
    sc.execute("INSERT INTO notes VALUES (1, 3, 'call back')")
    track(sc, "orders", "notes")  # the parent need not be tracked
    for table, predicate in (("orders", "OLD.status = 'paid'"), ("notes", "OLD.account_id IS NOT NULL")):
        assert cli("rule", "add", table, "--when", predicate, "--hold", "--reason", "keep").exit_code == 0
    before = snapshot(sc, "accounts", "id") + snapshot(sc, "orders", "id") + snapshot(sc, "notes", "id")

    for statement in ("DELETE FROM accounts WHERE id = 1",          # cascades to a paid order
                      "UPDATE accounts SET id = 200 WHERE id = 2",  # ON UPDATE CASCADE
                      "DELETE FROM accounts WHERE id = 3"):         # SET NULL on a note
        with pytest.raises(psycopg.Error) as caught:
            run_bot(statement)
        assert caught.value.sqlstate == "SC023", caught.value
        assert "is changed by a foreign key's action" in str(caught.value)
        assert "Nothing of this statement was written" in caught.value.diag.message_hint

    assert "public.orders {\"id\": 10} is changed by a foreign key's action (a delete of the row it refers to), " \
           "and hold rule 1 holds it: keep" in str(_refused(run_bot, "DELETE FROM accounts WHERE id = 1"))
    assert snapshot(sc, "accounts", "id") + snapshot(sc, "orders", "id") + snapshot(sc, "notes", "id") == before
    assert sidecar.review.held.queue(sc) == []

    # A cascade to rows no rule holds goes through; the automation's own writes are still held.
    sc.execute("UPDATE orders SET status = 'open' WHERE id = 20")
    run_bot("UPDATE accounts SET id = 200 WHERE id = 2", "DELETE FROM orders WHERE id = 10")
    assert sc.execute("SELECT id, account_id FROM orders ORDER BY id").fetchall() == [(10, 1), (11, 1), (20, 200), (30, 3)]
    assert [i.text for i in sidecar.review.held.queue(sc)] == [
        "Delete orders #10 (was account id 1, status 'paid') (rule: keep)"]


def _refused(run_bot, statement: str) -> psycopg.Error:
    try:
        run_bot(statement)
    except psycopg.Error as exc:
        return exc
    raise AssertionError(f"{statement} was not refused")


def test_undoing_a_run_or_an_action_rejects_its_held_changes(billing, cli, run_bot):
    """Approved after the undo, a held change would land under a run that reads as undone."""
    _hold_refunds(cli)
    first = run_bot(_action("refund:17"), _refund(17, 900), _action("refund:18"), _refund(18, 700), _refund(19, 50))
    second = run_bot(_action("refund:20"), _refund(20, 800), _action("refund:16"), _refund(16, 600))
    held = {i.action: i.pending_id for i in sidecar.review.held.queue(billing)}
    assert set(held) == {"refund:17", "refund:18", "refund:20", "refund:16"}

    preview = cli("undo", str(first), "--preview")
    assert "The undo also rejects 2 held changes of it still waiting for review" in preview.stdout
    result = cli("undo", str(first), "--yes")
    assert result.exit_code == 0, result.output
    assert "  rejected 2 held changes of what was undone, which had not landed" in result.stdout
    assert _row(billing, 19) == (0, "open")

    result = cli("undo", str(second), "--action", "refund:20", "--yes")
    assert result.exit_code == 0, result.output
    assert "  rejected 1 held change of what was undone" in result.stdout

    assert [i.pending_id for i in sidecar.review.held.queue(billing)] == [held["refund:16"]]
    assert {pid: _status_of(billing, pid) for pid in held.values()} == {
        held["refund:17"]: "rejected", held["refund:18"]: "rejected", held["refund:20"]: "rejected",
        held["refund:16"]: "pending"}
    refused = cli("approve", str(held["refund:17"]))
    assert refused.exit_code != 0 and "already rejected" in refused.stderr
    assert _row(billing, 17) == (0, "open")
    why = billing.execute("SELECT decided_why FROM sidecar.pending WHERE pending_id = %s",
                          (held["refund:17"],)).fetchone()[0]
    assert why.startswith("what it belongs to was undone (undo run ")


def test_approve_is_refused_when_another_row_took_a_unique_value_since(sc, cli, run_bot):
    sc.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE)")
    sc.execute("INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'bob@example.com')")
    track(sc, "users")
    assert cli("rule", "add", "users", "--when", "NEW.email LIKE '%@rival.com'", "--hold",
               "--reason", "rival domain").exit_code == 0
    run_bot("UPDATE users SET email = 'ann@rival.com' WHERE id = 1", "INSERT INTO users VALUES (3, 'cy@rival.com')")
    sc.execute("UPDATE users SET email = 'ann@rival.com' WHERE id = 2")  # a person, meanwhile
    sc.execute("INSERT INTO users VALUES (4, 'cy@rival.com')")
    before = snapshot(sc, "users", "id")

    for item, key in zip(sidecar.review.held.queue(sc), ("users #1", "users #3")):
        result = cli("approve", str(item.pending_id))
        assert result.exit_code == 1
        assert (f"#{item.pending_id}: {key} cannot take its new values: another row holds one of a unique key "
                "now (Key (email)=(") in result.stderr
        assert _status_of(sc, item.pending_id) == "conflict"
    assert snapshot(sc, "users", "id") == before


def test_approve_twice_or_an_unknown_id_is_bad_input(billing, cli, run_bot):
    _hold_refunds(cli)
    run_bot(_refund(17, 900))
    pending_id = sidecar.review.held.queue(billing)[0].pending_id
    assert cli("approve", str(pending_id)).exit_code == 0

    again = cli("approve", str(pending_id))
    assert again.exit_code == 2
    assert f"held change {pending_id} was already approved by" in again.stderr
    unknown = cli("approve", "999")
    assert unknown.exit_code == 2
    assert "there is no held change 999" in unknown.stderr


# -- rejecting --------------------------------------------------------------------------------


def test_reject_drops_the_change_and_logs_why(billing, cli, run_bot):
    _hold_refunds(cli)
    run_id = run_bot(_refund(17, 900))
    pending_id = sidecar.review.held.queue(billing)[0].pending_id

    assert cli("reject", str(pending_id)).exit_code == 2  # --reason is required
    result = cli("reject", str(pending_id), "--reason", "customer was refunded by phone")

    assert result.exit_code == 0, result.output
    assert f"rejected #{pending_id}: Set refund amount of invoice #17" in result.stdout
    assert _row(billing, 17) == (0, "open")
    assert _status_of(billing, pending_id) == "rejected"
    assert sidecar.review.held.queue(billing) == []
    kind, run, summary, detail = billing.execute(
        "SELECT kind, run_id, summary, detail FROM sidecar.events WHERE kind = 'reject'").fetchone()
    assert run == run_id
    assert summary.endswith(": customer was refunded by phone")
    assert detail["why"] == "customer was refunded by phone" and detail["pending_ids"] == [pending_id]


# -- whole actions ----------------------------------------------------------------------------


def test_approving_an_action_applies_all_its_held_rows_together(billing, cli, run_bot):
    _hold_refunds(cli)
    run_id = run_bot(_action("refunds:batch-1"), _refund(11, 600), _refund(12, 700),
                     _action("refunds:batch-2"), _refund(13, 800))
    assert len(sidecar.review.held.queue(billing)) == 3

    result = cli("approve", "--action", "refunds:batch-1", "--run", str(run_id)[:8])

    assert result.exit_code == 0, result.output
    assert [_row(billing, i)[0] for i in (11, 12, 13)] == [600, 700, 0]
    assert [i.action for i in sidecar.review.held.queue(billing)] == ["refunds:batch-2"]

    rejected = cli("reject", "--action", "refunds:batch-2", "--run", str(run_id), "--reason", "duplicate")
    assert rejected.exit_code == 0, rejected.output
    assert sidecar.review.held.queue(billing) == []
    assert _row(billing, 13) == (0, "open")


def test_an_action_with_one_conflicting_row_applies_none(billing, cli, run_bot):
    _hold_refunds(cli)
    run_id = run_bot(_action("refunds:batch-1"), _refund(11, 600), _refund(12, 700))
    billing.execute("UPDATE invoices SET customer = 'renamed' WHERE id = 12")

    result = cli("approve", "--action", "refunds:batch-1", "--run", str(run_id))

    assert result.exit_code == 1
    assert "invoice #12 changed since it was held (customer 'customer 12' is now 'renamed')" in result.stderr
    assert _row(billing, 11) == (0, "open")
    assert sorted(i.status for i in sidecar.review.held.queue(billing)) == ["conflict", "pending"]


def test_action_without_run_is_bad_input(billing, cli):
    result = cli("approve", "--action", "refunds:batch-1")
    assert result.exit_code == 2
    assert "--action needs --run RUN_ID" in result.stderr


# -- rule kinds -------------------------------------------------------------------------------


def test_a_rule_for_one_automation_holds_only_its_writes(billing, cli, run_bot):
    _hold_refunds(cli, "--automation", "refund-bot")

    run_bot(_refund(1, 900), automation="refund-bot")
    run_bot(_refund(2, 900), automation="finance-script")

    assert _row(billing, 1) == (0, "open")
    assert _row(billing, 2) == (900, "refunded")
    assert [(i.automation, i.key) for i in sidecar.review.held.queue(billing)] == [("refund-bot", {"id": 1})]


def test_more_than_n_rows_in_one_statement_holds_the_rows_past_n(billing, cli, run_bot):
    result = cli("rule", "add", "invoices", "--max-rows", "5", "--reason", "bulk change")
    assert result.exit_code == 0, result.output
    assert "hold more than 5 rows in one statement" in result.stdout

    run_bot("UPDATE invoices SET status = 'archived' WHERE id <= 8",
            "UPDATE invoices SET status = 'archived' WHERE id BETWEEN 9 AND 13")  # exactly 5: all land

    archived = [r[0] for r in billing.execute("SELECT id FROM invoices WHERE status = 'archived' ORDER BY id")]
    assert archived == [1, 2, 3, 4, 5, 9, 10, 11, 12, 13]
    held = sidecar.review.held.queue(billing)
    assert [i.key["id"] for i in held] == [6, 7, 8]
    assert {i.reason for i in held} == {"bulk change"}
    billing.execute("UPDATE invoices SET status = 'x'")  # untagged: never counted
    assert billing.execute("SELECT count(*) FROM invoices WHERE status = 'x'").fetchone()[0] == 20


def test_row_limit_with_a_predicate_counts_matching_rows_only(billing, cli, run_bot):
    assert cli("rule", "add", "invoices", "--max-rows", "1", "--when", "NEW.status = 'void'",
               "--reason", "voiding").exit_code == 0

    run_bot("UPDATE invoices SET status = CASE WHEN id <= 3 THEN 'void' ELSE 'checked' END WHERE id <= 6")

    assert billing.execute("SELECT count(*) FROM invoices WHERE status IN ('void', 'checked')").fetchone()[0] == 4
    assert len(sidecar.review.held.queue(billing)) == 2


# -- predicates -------------------------------------------------------------------------------


@pytest.mark.parametrize("predicate, message", [
    ("1=1; DROP TABLE invoices", "--when must be one expression, not 2 statements separated by ';'"),
    ("NEW.refund_amount > (SELECT max(refund_amount) FROM invoices)", "--when must not contain a subquery"),
    ("NEW.id IN (SELECT id FROM invoices)", "--when may use IN with a list of values only"),
    ("pg_sleep(1) IS NULL", "--when must not call function pg_sleep()"),
    ("random() < 0.5", "--when must not call function random();"),
    ("NEW.refund_amout > 500", "--when: table public.invoices has no column refund_amout"),
    ("refund_amount > 500", "--when: write NEW.refund_amount or OLD.refund_amount"),
    ("CAST(NEW.customer AS regclass) IS NULL", "--when must not cast to REGCLASS"),
    ("NEW.customer = 'x\\' OR true", "--when must not contain a backslash"),
    ("NEW.refund_amount > 'lots'", "predicate does not compile against public.invoices"),
])
def test_unsafe_or_wrong_predicates_are_refused_at_rule_add(billing, cli, predicate, message):
    result = cli("rule", "add", "invoices", "--when", predicate, "--reason", "x")

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert billing.execute("SELECT count(*) FROM sidecar.rules").fetchone()[0] == 0
    assert _triggers(billing, "invoices") == [
        "sidecar_capture_delete", "sidecar_capture_insert", "sidecar_capture_update", "sidecar_refuse_truncate"]
    assert billing.execute("SELECT to_regclass('invoices')").fetchone()[0] is not None


def test_predicate_is_compiled_with_quoted_columns(sc, cli, run_bot):
    sc.execute('CREATE TABLE "Refunds" (id int PRIMARY KEY, "Amount Due" numeric)')
    sc.execute('INSERT INTO "Refunds" VALUES (1, 0), (2, 0)')
    track(sc, '"Refunds"')

    result = cli("rule", "add", '"Refunds"', "--when", 'NEW."Amount Due" > 10 AND lower(\'X\') = \'x\'',
                 "--reason", "big")
    assert result.exit_code == 0, result.output
    assert 'hold when NEW."Amount Due" > 10 AND LOWER(\'X\') = \'x\'' in result.stdout

    run_bot('UPDATE "Refunds" SET "Amount Due" = id * 10')
    assert sc.execute('SELECT "Amount Due" FROM "Refunds" ORDER BY id').fetchall() == [(10,), (0,)]


# -- triggers and notifications ---------------------------------------------------------------


def test_a_table_without_rules_has_no_hold_trigger(billing, sc, cli):
    sc.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    track(sc, "notes")
    _hold_refunds(cli)

    assert {"sidecar_hold_insert", "sidecar_hold_update", "sidecar_hold_delete"} <= set(_triggers(sc, "invoices"))
    assert not [t for t in _triggers(sc, "notes") if "hold" in t]
    rule_id = sc.execute("SELECT rule_id FROM sidecar.rules").fetchone()[0]

    dropped = cli("rule", "drop", str(rule_id))

    assert dropped.exit_code == 0, dropped.output
    assert not [t for t in _triggers(sc, "invoices") if "hold" in t]
    assert sc.execute("SELECT to_regproc('sidecar.hold_1')").fetchone()[0] is None
    assert "No hold rules" in cli("rule", "list").stdout


def test_listeners_hear_of_each_held_change(billing, cli, run_bot, make_conn):
    _hold_refunds(cli)
    listener = make_conn()
    listener.execute("LISTEN sidecar")

    run_id = run_bot(_action("refund:17"), _refund(17, 900))

    payloads = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert payloads and payloads[0]["event"] == "held"
    assert payloads[0]["run_id"] == str(run_id)
    assert payloads[0]["action"] == "refund:17"
    assert payloads[0]["table"] == "public.invoices"
    assert payloads[0]["key"] == {"id": 17}
    assert payloads[0]["reason"] == "refund over limit"

    cli("approve", str(payloads[0]["pending_id"]))
    decided = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert decided[0]["event"] == "approved" and decided[0]["pending_ids"] == [payloads[0]["pending_id"]]


def test_rule_list_shows_rules(billing, cli):
    _hold_refunds(cli, "--automation", "refund-bot")
    shown = cli("rule", "list")
    assert shown.exit_code == 0
    assert ('#1  public.invoices  hold when NEW."refund_amount" > 500 (automation refund-bot only)  '
            "(reason: refund over limit;") in shown.stdout


def test_approved_insert_keeps_identity_and_leaves_generated_columns_to_the_table(sc, cli, run_bot):
    sc.execute("CREATE TABLE refunds (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount numeric NOT NULL, "
               "doubled numeric GENERATED ALWAYS AS (amount * 2) STORED)")
    track(sc, "refunds")
    assert cli("rule", "add", "refunds", "--when", "NEW.amount > 500", "--reason", "big").exit_code == 0

    run_id = run_bot("INSERT INTO refunds (amount) VALUES (10), (900)")
    pending_id = sidecar.review.held.queue(sc)[0].pending_id

    assert cli("approve", str(pending_id)).exit_code == 0
    assert sc.execute("SELECT id, amount, doubled FROM refunds ORDER BY id").fetchall() == [(1, 10, 20), (2, 900, 1800)]
    undo(sc, run_id)
    assert sc.execute("SELECT count(*) FROM refunds").fetchone()[0] == 0


# -- privileges -------------------------------------------------------------------------------


@pytest.fixture
def bot_role(billing, dsn):
    """The automation's own login role: it may write invoices, and nothing of sidecar's."""
    role = f"bot_{uuid.uuid4().hex[:8]}"
    billing.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    billing.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO {}").format(sql.Identifier(role)))
    with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as conn:
        yield conn
    billing.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    billing.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_automation_role_is_held_and_cannot_approve_or_skip_its_own_hold(billing, cli, bot_role):
    _hold_refunds(cli)

    with sidecar.steps.runs.Run(bot_role, "refund-bot"):
        bot_role.execute(_refund(17, 900))
        # A forged approval marker does not let the write through.
        bot_role.execute("SELECT set_config('sidecar._approving', '1', false)")
        bot_role.execute(_refund(18, 900))
        for attempt in ("SELECT sidecar.approve(1)", "UPDATE sidecar.pending SET status = 'approved'",
                        "SELECT sidecar.reject(1, 'mine')", "DELETE FROM sidecar.pending"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bot_role.execute(attempt)

    assert _row(billing, 17) == (0, "open") and _row(billing, 18) == (0, "open")
    assert [i.status for i in sidecar.review.held.queue(billing)] == ["pending", "pending"]


def test_tracking_a_table_again_keeps_its_hold_rules(billing, cli, run_bot):
    _hold_refunds(cli)
    track(billing, "invoices", label_column="customer")

    run_bot(_refund(17, 900))

    assert _row(billing, 17) == (0, "open")


def test_rule_refresh_restores_holds_a_dba_dropped(billing, cli, run_bot):
    _hold_refunds(cli)
    billing.execute("DROP TRIGGER sidecar_hold_update ON invoices")  # by hand, say in a migration
    listed = cli("rule", "list")
    assert "public.invoices has rules but is missing hold triggers" in listed.stderr

    refreshed = cli("rule", "refresh")

    assert refreshed.exit_code == 0, refreshed.output
    assert "recompiled hold trigger of public.invoices" in refreshed.stdout
    run_bot(_refund(17, 900))
    assert _row(billing, 17) == (0, "open")
