"""sidecar undo: put back what a run changed, row by row, without trampling later edits."""

import json

import psycopg
import pytest

import sidecar.steps.runs
import sidecar.undo.restore
from sidecar.errors import UsageError
from tests.fix_sidecar import snapshot, track, undo


@pytest.fixture
def support(sc):
    """A small support database: customers, their tickets, with the app's own trigger."""
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
    sc.execute(
        "CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL, "
        "customer_id int REFERENCES customers, last_update timestamptz NOT NULL DEFAULT '2024-01-01 00:00+00')"
    )
    sc.execute(
        """
        CREATE FUNCTION stamp_last_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.last_update := now(); RETURN NEW; END $$
        """
    )
    sc.execute("CREATE TRIGGER tickets_stamp BEFORE UPDATE ON tickets FOR EACH ROW EXECUTE FUNCTION stamp_last_update()")
    sc.execute("INSERT INTO customers VALUES (1, 'Northwind Solar'), (2, 'Northwind Systems'), (3, 'Contoso')")
    sc.execute(
        "INSERT INTO tickets (id, status, customer_id) VALUES "
        "(40, 'open', 1), (41, 'open', 1), (42, 'needs review', 1), (43, 'open', 2), (44, 'waiting', 3)"
    )
    track(sc, "customers", label_column="name")
    track(sc, "tickets")
    sc.execute("SET timezone = 'UTC'")
    return sc


def _state(conn):
    return snapshot(conn, "customers", "id") + snapshot(conn, "tickets", "id")


def _status(conn, ticket_id):
    row = conn.execute("SELECT status FROM tickets WHERE id = %s", (ticket_id,)).fetchone()
    return row and row[0]


# -- the whole run --------------------------------------------------------------------------


def test_undo_of_a_run_restores_every_row_by_net_effect(support, cli, run_bot):
    before = _state(support)
    run_id = run_bot(
        # inserted, then updated: must be deleted
        "INSERT INTO tickets (id, status, customer_id) VALUES (50, 'new', 2)",
        "UPDATE tickets SET status = 'triaged' WHERE id = 50",
        # updated several times: back to the first before-image
        "UPDATE tickets SET status = 'resolved', customer_id = 2 WHERE id = 42",
        "UPDATE tickets SET status = 'closed' WHERE id = 42",
        # deleted, then inserted again with other values: as it was
        "DELETE FROM tickets WHERE id = 43",
        "INSERT INTO tickets (id, status, customer_id) VALUES (43, 'reopened', 3)",
        # inserted and deleted within the run: nothing to do
        "INSERT INTO tickets (id, status, customer_id) VALUES (51, 'spam', 1)",
        "DELETE FROM tickets WHERE id = 51",
        # plain delete and a parent row changed
        "DELETE FROM tickets WHERE id = 44",
        "UPDATE customers SET name = 'Northwind Solar Inc.' WHERE id = 1",
    )
    assert _state(support) != before

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert _state(support) == before
    out = result.stdout
    assert out.startswith(f"Undid run {run_id} as run ")
    assert "  customers: 1 restored" in out
    assert "  tickets: 1 put back, 2 restored, 1 removed" in out


def test_undo_restores_values_despite_the_tables_own_update_trigger(support, run_bot):
    before = snapshot(support, "tickets", "id")
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    assert support.execute("SELECT count(*) FROM tickets WHERE last_update > '2024-01-01 00:00+00'").fetchone()[0] == 2

    undo(support, run_id)

    # last_update is as it was, not stamped with the time of the undo...
    assert snapshot(support, "tickets", "id") == before
    # ...and the app's trigger is enabled again afterwards.
    assert support.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'tickets_stamp'").fetchone()[0] == "O"
    support.execute("UPDATE tickets SET status = 'x' WHERE id = 40")
    assert support.execute("SELECT last_update > '2024-01-01 00:00+00' FROM tickets WHERE id = 40").fetchone()[0]


def test_the_undo_leaves_the_callers_settings_as_they_were(support, run_bot):
    """The undo tunes search_path, text formats and the planner, and tags its writes with
    the undo run, for its own work only: a library user's session, or the transaction the
    user has open around the call, keeps its own settings."""
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    second = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    settings = "SELECT array_agg(coalesce(current_setting(n, true), '') ORDER BY n) FROM unnest(%s::text[]) AS n"
    names = ["work_mem", "default_statistics_target", "random_page_cost", "search_path", "datestyle", "sidecar.run_id"]
    mine = support.execute(settings, (names,)).fetchone()[0]

    undo(support, first)
    assert support.execute(settings, (names,)).fetchone()[0] == mine

    with support.transaction():
        support.execute("SET LOCAL search_path = public")
        support.execute("SET LOCAL datestyle = 'German'")
        in_mine = support.execute(settings, (names,)).fetchone()[0]
        undo(support, second)
        assert support.execute(settings, (names,)).fetchone()[0] == in_mine
        # Unqualified names still find the caller's tables, and writes are not the undo run's.
        support.execute("UPDATE tickets SET status = 'closed' WHERE id = 44")
    assert (_status(support, 41), _status(support, 42), _status(support, 44)) == ("open", "needs review", "closed")
    assert support.execute(
        "SELECT count(*) FROM sidecar.statements s JOIN sidecar.runs r USING (run_id) WHERE r.undo_of IS NOT NULL"
    ).fetchone()[0] == 2


def test_undo_of_one_update_that_changed_keys_puts_the_old_keys_back(support, run_bot):
    before = _state(support)
    run_id = run_bot("UPDATE tickets SET id = id + 100, status = 'moved' WHERE id IN (40, 41)")

    result = undo(support, run_id)

    assert _state(support) == before
    assert result.tables["public.tickets"]["insert"] == 2 and result.tables["public.tickets"]["delete"] == 2


@pytest.mark.pg_version(min=15)
def test_upserts_and_merge_are_shown_and_undone_like_plain_writes(support, cli, run_bot):
    """Bots write with INSERT ... ON CONFLICT DO UPDATE and MERGE: one statement that fires the
    INSERT, UPDATE and DELETE triggers, each with its own transition tables (before 15, the
    same through a writable CTE: tests/test_versions.py)."""
    before = _state(support)
    run_id = run_bot(
        "INSERT INTO tickets (id, status, customer_id) VALUES (42, 'resolved', 2), (60, 'new', 3) "
        "ON CONFLICT (id) DO UPDATE SET status = excluded.status, customer_id = excluded.customer_id",
        """MERGE INTO tickets t
           USING (VALUES (41, 'closed'), (44, 'spam'), (61, 'new')) AS s(id, status) ON t.id = s.id
           WHEN MATCHED AND s.status = 'spam' THEN DELETE
           WHEN MATCHED THEN UPDATE SET status = s.status
           WHEN NOT MATCHED THEN INSERT (id, status, customer_id) VALUES (s.id, s.status, 1)""",
    )
    assert _status(support, 42) == "resolved" and _status(support, 44) is None and _status(support, 61) == "new"

    shown = cli("show", str(run_id))
    assert shown.exit_code == 0, shown.output
    for change in ("tickets #42: status 'needs review' -> 'resolved', customer_id customer Northwind Solar (#1) -> "
                   "customer Northwind Systems (#2)",
                   "tickets #60: added (status 'new', customer_id customer Contoso (#3)",
                   "tickets #41: status 'open' -> 'closed'",
                   "tickets #44: deleted (was status 'waiting', customer_id customer Contoso (#3)",
                   "tickets #61: added (status 'new', customer_id customer Northwind Solar (#1)"):
        assert change in shown.stdout, shown.stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert _state(support) == before
    assert "  tickets: 1 put back, 2 restored, 2 removed" in result.stdout


def test_rows_a_foreign_key_cascades_to_and_rows_copied_in_are_the_runs_and_undone(sc, cli, bot, run_bot):
    """ON DELETE / ON UPDATE CASCADE change child rows in the run's session, and COPY
    fires the INSERT triggers like an INSERT: all of it is the run's, and its undo's."""
    sc.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL)")
    sc.execute("CREATE TABLE orders (id int PRIMARY KEY, account_id int NOT NULL "
               "REFERENCES accounts ON DELETE CASCADE ON UPDATE CASCADE, item text NOT NULL)")
    sc.execute("INSERT INTO accounts VALUES (1, 'Acme'), (2, 'Globex')")
    sc.execute("INSERT INTO orders VALUES (10, 1, 'anvil'), (11, 1, 'rope'), (12, 2, 'widget')")
    track(sc, "accounts", "orders")
    before = snapshot(sc, "accounts", "id") + snapshot(sc, "orders", "id")

    with sidecar.steps.runs.Run(bot, "ledger-bot") as run:
        bot.execute("DELETE FROM accounts WHERE id = 1")
        bot.execute("UPDATE accounts SET id = 200 WHERE id = 2")
        with bot.cursor().copy("COPY orders (id, account_id, item) FROM STDIN") as copy:
            copy.write_row((20, 200, "gear"))
    assert sc.execute("SELECT id, account_id FROM orders ORDER BY id").fetchall() == [(12, 200), (20, 200)]

    shown = cli("show", str(run.run_id))
    assert "changed     7 rows in accounts (3), orders (4)" in shown.stdout, shown.stdout
    for change in ("orders #10: deleted (was account_id 1, item 'anvil')",
                   "orders #12: account_id 2 -> account Globex (#200)",
                   "orders #20: added (account_id account Globex (#200), item 'gear')"):
        assert change in shown.stdout, shown.stdout

    result = cli("undo", str(run.run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "accounts", "id") + snapshot(sc, "orders", "id") == before


def test_a_table_no_longer_tracked_is_restored_and_the_undo_says_it_is_not_recorded(support, cli, run_bot):
    before = _state(support)
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42",
                     "UPDATE customers SET name = 'Contoso Ltd' WHERE id = 3")
    assert cli("untrack", "tickets").exit_code == 0  # history kept
    note = ("note: public.tickets is not tracked any more: its rows are restored, but this undo of them is "
            "not recorded and cannot itself be undone (sidecar track public.tickets first records it)")
    assert note in cli("undo", str(run_id), "--preview").stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert note in result.stdout
    assert _state(support) == before
    # Only what was tracked is the undo run's own history.
    undo_run = result.stdout.split(" as run ")[1].split()[0]
    assert "changed     1 row in customers (1)" in cli("show", undo_run).stdout


def test_a_run_undone_while_its_automation_runs_takes_no_more_writes(support, bot, cli):
    """Its next write would land under a run that reads as undone, outside what the undo did."""
    run_id = bot.execute("SELECT sidecar.start_run('ticket-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    assert cli("undo", str(run_id), "--yes").exit_code == 0

    with pytest.raises(psycopg.Error) as refused:
        bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    assert refused.value.sqlstate == "SC009"
    assert f"run {run_id} was undone by run " in str(refused.value)
    assert "Nothing of this statement was written" in refused.value.diag.message_hint
    assert (_status(support, 41), _status(support, 42)) == ("open", "needs review")

    # Once that undo is undone in turn, the run's changes are back and it may write on.
    undo_run = support.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0]
    assert cli("undo", str(undo_run), "--yes").exit_code == 0
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 41")
    assert (_status(support, 41), _status(support, 42)) == ("resolved", "resolved")


def test_a_run_that_changed_nothing_has_nothing_to_undo(support, cli, run_bot):
    run_id = run_bot("UPDATE customers SET name = 'Contoso' WHERE id = 3")
    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    assert "nothing to undo" in result.stdout


# -- conflicts --------------------------------------------------------------------------------


def test_a_row_changed_by_a_person_since_is_skipped_listed_and_exits_3(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    # A support agent edits ticket 42 after the bot.
    support.execute("UPDATE tickets SET status = 'escalated' WHERE id = 42")
    agent_row = snapshot(support, "tickets", "id")[2]

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert _status(support, 41) == "open"
    assert snapshot(support, "tickets", "id")[2] == agent_row
    out = result.stdout
    assert "  tickets: 1 restored, 1 skipped (conflict)" in out
    assert ("  conflict: tickets #42: changed since by someone outside any run "
            "(status 'resolved' is now 'escalated'") in out
    assert "left as it is" in out


def test_force_restores_conflicting_rows_anyway(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    support.execute("UPDATE tickets SET status = 'escalated' WHERE id = 42")

    result = cli("undo", str(run_id), "--yes", "--force")

    assert result.output and _status(support, 42) == "needs review" and _status(support, 41) == "open"
    assert "restored anyway (--force)" in result.stdout
    assert result.exit_code == 0, result.output


def test_conflict_kinds_row_gone_and_row_back(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42", "DELETE FROM tickets WHERE id = 44")
    support.execute("DELETE FROM tickets WHERE id = 42")
    support.execute("INSERT INTO tickets (id, status, customer_id) VALUES (44, 'recreated by hand', 3)")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3
    assert "conflict: tickets #42: changed since by someone outside any run (the row is gone)" in result.stdout
    assert "conflict: tickets #44: changed since by someone outside any run (the row is back)" in result.stdout
    assert _status(support, 42) is None and _status(support, 44) == "recreated by hand"


def test_a_row_changed_since_by_another_run_names_that_run(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    later = run_bot("UPDATE tickets SET status = 'closed' WHERE id = 42", automation="closer-bot")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3
    assert f"conflict: tickets #42: changed since by run {str(later)[:8]}" in result.stdout
    assert _status(support, 42) == "closed"


def test_a_row_put_back_by_hand_counts_as_already_done(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    support.execute("UPDATE tickets SET status = 'needs review', last_update = '2024-01-01 00:00+00' WHERE id = 42")
    support.execute("UPDATE tickets SET last_update = '2024-01-01 00:00+00' WHERE id = 42")  # undo the stamp
    support.execute("ALTER TABLE tickets DISABLE TRIGGER tickets_stamp")
    support.execute("UPDATE tickets SET last_update = '2024-01-01 00:00+00' WHERE id = 42")
    support.execute("ALTER TABLE tickets ENABLE TRIGGER tickets_stamp")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert "tickets: 1 already as before" in result.stdout


def test_a_child_row_added_by_a_person_keeps_the_runs_parent(support, cli, run_bot):
    run_id = run_bot("INSERT INTO customers VALUES (9, 'Fabrikam')")
    support.execute("INSERT INTO tickets (id, status, customer_id) VALUES (60, 'open', 9)")

    # The preview says so too, rather than promising a delete that will not happen.
    preview = cli("undo", str(run_id), "--preview")
    assert "Total: 0 rows to restore, 1 conflict" in preview.stdout, preview.output
    assert ('  conflict: customers "Fabrikam" (#9): added by the run, and rows changed since still refer to it; '
            "left as it is") in preview.stdout
    assert "remove" not in preview.stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert support.execute("SELECT name FROM customers WHERE id = 9").fetchone()[0] == "Fabrikam"
    assert "  customers: 1 skipped (conflict)" in result.stdout
    assert ('  conflict: customers "Fabrikam" (#9): added by the run, and rows changed since still refer to it; '
            "left as it is") in result.stdout


def test_a_preview_counts_the_references_the_undo_itself_takes_away(support, cli, run_bot):
    """The run added a customer and moved a ticket to it: the undo moves the ticket back,
    so nothing refers to the customer any more and it goes, in the preview as in the undo.
    A ticket a person added under a cascading key keeps its customer, and is not deleted."""
    support.execute("ALTER TABLE tickets DROP CONSTRAINT tickets_customer_id_fkey, ADD FOREIGN KEY (customer_id) "
                    "REFERENCES customers ON DELETE CASCADE")
    run_id = run_bot("INSERT INTO customers VALUES (9, 'Fabrikam'), (10, 'Tailspin')",
                     "UPDATE tickets SET customer_id = 9 WHERE id = 44",
                     "INSERT INTO tickets (id, status, customer_id) VALUES (61, 'new', 9)")
    support.execute("INSERT INTO tickets (id, status, customer_id) VALUES (60, 'open', 10)")  # a person, since

    preview = cli("undo", str(run_id), "--preview")
    assert "Total: 3 rows to restore, 1 conflict" in preview.stdout, preview.output
    assert 'remove customers "Fabrikam" (#9) (added by the run)' in preview.stdout
    assert 'conflict: customers "Tailspin" (#10): added by the run, and rows changed since still refer to it' \
        in preview.stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert "  customers: 1 removed, 1 skipped (conflict)" in result.stdout
    assert support.execute("SELECT id FROM customers WHERE id >= 9").fetchall() == [(10,)]
    assert support.execute("SELECT id, customer_id FROM tickets WHERE id IN (44, 60, 61) ORDER BY id").fetchall() == [
        (44, 3), (60, 10)]


@pytest.fixture
def users(sc):
    sc.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL)")
    sc.execute("INSERT INTO users VALUES (1, 'ann@example.com', 'Ann'), (2, 'bob@example.com', 'Bob'), "
               "(3, 'cy@example.com', 'Cy')")
    track(sc, "users")
    return sc


@pytest.mark.parametrize("statements", [
    # The bot gave Ann's address to a new user: the new user goes before Ann gets it back.
    ("UPDATE users SET email = 'ann.old@example.com' WHERE id = 1",
     "INSERT INTO users VALUES (4, 'ann@example.com', 'Ann B.')"),
    # The bot replaced Bob by a new row with the same address.
    ("DELETE FROM users WHERE id = 2", "INSERT INTO users VALUES (5, 'bob@example.com', 'Robert')"),
])
@pytest.mark.parametrize("kind", ["undo", "sql"])
def test_a_run_that_moved_a_unique_value_to_a_new_row_is_undone(users, cli, run_bot, statements, kind):
    before = snapshot(users, "users", "id")
    run_id = run_bot(*statements)

    if kind == "undo":
        result = cli("undo", str(run_id), "--yes")
        assert result.exit_code == 0, result.output
    else:  # the script a DBA reviews and runs with psql does the same, in the same order
        script = cli("undo", str(run_id), "--sql").output
        writes = [line.split()[0] for line in script.splitlines() if line.startswith(("DELETE", "INSERT", "UPDATE"))]
        assert writes[0] == "DELETE" and len(writes) == 2, script
        users.execute(script)
    assert snapshot(users, "users", "id") == before


def test_the_undo_of_such_an_undo_gives_the_value_back_to_the_new_row(users, cli, run_bot):
    """Undone again, the new user is put back with the address the old user holds until it is
    restored in turn: parents-first order would break the key, so the restores go first."""
    run_id = run_bot("UPDATE users SET email = 'ann.old@example.com' WHERE id = 1",
                     "INSERT INTO users VALUES (4, 'ann@example.com', 'Ann B.')")
    after = snapshot(users, "users", "id")
    undo_run = undo(users, run_id).undo_run_id

    result = cli("undo", str(undo_run), "--yes")

    assert result.exit_code == 0, result.output
    assert "  users: 1 put back, 1 restored" in result.stdout
    assert snapshot(users, "users", "id") == after


def test_a_unique_value_a_person_took_since_is_a_conflict(users, cli, run_bot):
    run_id = run_bot("UPDATE users SET email = 'ann.old@example.com' WHERE id = 1",
                     "DELETE FROM users WHERE id = 3",
                     "UPDATE users SET name = 'Robert' WHERE id = 2")
    users.execute("UPDATE users SET email = 'ann@example.com' WHERE id = 2")  # a person, since
    users.execute("INSERT INTO users VALUES (6, 'cy@example.com', 'Cyrus')")

    preview = cli("undo", str(run_id), "--preview")
    assert "Total: 0 rows to restore, 3 conflicts" in preview.stdout, preview.output
    taken = "another row holds its old value of a unique key now, so it cannot be restored as it was"
    for row in ('users "Ann" (#1)', "users #3"):  # named by its name column; #3 is gone, so by its key
        assert f"conflict: {row}: {taken}; left as it is" in preview.stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert "  users: 3 skipped (conflict)" in result.stdout
    assert users.execute("SELECT id, email FROM users ORDER BY id").fetchall() == [
        (1, "ann.old@example.com"), (2, "ann@example.com"), (6, "cy@example.com")]


def test_unique_expressions_and_partial_unique_indexes_are_checked_too(sc, cli, run_bot):
    sc.execute("CREATE TABLE handles (id int PRIMARY KEY, handle text NOT NULL, active bool NOT NULL)")
    sc.execute("CREATE UNIQUE INDEX handles_lower ON handles (lower(handle)) WHERE active")
    sc.execute("INSERT INTO handles VALUES (1, 'Ann', true), (2, 'zed', true), (3, 'old', false), (4, 'Bob', true)")
    track(sc, "handles")
    run_id = run_bot("UPDATE handles SET handle = handle || '2' WHERE id IN (1, 4)")
    sc.execute("UPDATE handles SET handle = 'ANN' WHERE id = 2")  # active: takes Ann's old handle
    sc.execute("UPDATE handles SET handle = 'BOB' WHERE id = 3")  # inactive: outside the index

    preview = cli("undo", str(run_id), "--preview")
    assert "Total: 1 row to restore, 1 conflict" in preview.stdout, preview.output
    assert ("conflict: handles #1: another row holds its old value of a unique key now, so it cannot be "
            "restored as it was; left as it is") in preview.stdout

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert sc.execute("SELECT id, handle FROM handles ORDER BY id").fetchall() == [
        (1, "Ann2"), (2, "ANN"), (3, "BOB"), (4, "Bob")]


def test_values_the_run_traded_between_rows_fail_the_undo_whole_naming_the_key(users, cli, run_bot):
    run_id = run_bot("UPDATE users SET email = 'tmp' WHERE id = 1",
                     "UPDATE users SET email = 'ann@example.com' WHERE id = 2",
                     "UPDATE users SET email = 'bob@example.com' WHERE id = 1",
                     "UPDATE users SET name = 'Cyrus' WHERE id = 3")
    after = snapshot(users, "users", "id")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 1
    assert "restoring public.users would break its key users_email_key (Key (email)=" in result.stderr
    assert "nothing was changed" in result.stderr
    assert snapshot(users, "users", "id") == after


def test_a_row_whose_old_parent_was_deleted_since_is_a_conflict(support, cli, run_bot):
    # The bot moves ticket 44 from Contoso to Northwind Systems; later a person deletes Contoso.
    run_id = run_bot("UPDATE tickets SET customer_id = 2 WHERE id = 44",
                     "UPDATE tickets SET status = 'resolved' WHERE id = 42")
    support.execute("DELETE FROM customers WHERE id = 3")
    state_44 = snapshot(support, "tickets", "id")[4]

    result = cli("undo", str(run_id), "--yes", "--force")

    # The rest is undone; ticket 44 cannot point at Contoso again, so it is left and listed.
    assert result.exit_code == 3, result.output
    assert _status(support, 42) == "needs review"
    assert snapshot(support, "tickets", "id")[4] == state_44
    assert ("  conflict: tickets #44: a row it referred to before the run was deleted since, "
            "so it cannot be restored as it was; left as it is") in result.stdout


# -- preview ---------------------------------------------------------------------------------


def test_preview_lists_rows_and_conflicts_and_changes_nothing(support, cli, run_bot):
    run_id = run_bot(
        "UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)",
        "INSERT INTO customers VALUES (9, 'Fabrikam')",
        "DELETE FROM tickets WHERE id = 44",
    )
    support.execute("UPDATE tickets SET status = 'escalated' WHERE id = 42")
    state = _state(support)
    runs_before = support.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0]

    result = cli("undo", str(run_id), "--preview")

    assert result.exit_code == 0, result.output
    assert _state(support) == state
    assert support.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == runs_before
    assert support.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0] is None
    out = result.stdout
    assert out.startswith(f"Preview: undo of run {run_id} (nothing is changed)")
    assert "  remove customers \"Fabrikam\" (#9) (added by the run)" in out
    assert "  restore tickets #41: status 'resolved' -> 'open'" in out
    assert "  put back tickets #44 (deleted by the run)" in out
    assert "  conflict: tickets #42: changed since by someone outside any run" in out
    assert "Total: 3 rows to restore, 1 conflict" in out


def test_preview_json(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    support.execute("UPDATE tickets SET status = 'escalated' WHERE id = 42")

    result = cli("undo", str(run_id), "--preview", "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["preview"]
    assert doc["applied"] is False and doc["run_id"] == str(run_id)
    assert doc["tables"]["public.tickets"]["update"] == 1
    assert doc["conflict_count"] == 1
    (conflict,) = doc["conflicts"]
    assert conflict["key"] == {"id": 42} and conflict["now"]["status"] == "escalated"
    assert conflict["run_left"]["status"] == "resolved"


def test_without_yes_and_without_a_terminal_undo_refuses(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    state = _state(support)

    result = cli("undo", str(run_id))

    assert result.exit_code == 2
    assert "not undoing without confirmation; add --yes" in result.stderr
    assert "restore tickets #42" in result.stdout  # the preview was shown
    assert _state(support) == state
    assert support.execute("SELECT count(*) FROM sidecar.runs").fetchone()[0] == 1


# -- scope: one action, some rows ------------------------------------------------------------


def test_undo_of_one_action(support, cli, bot):
    with sidecar.steps.runs.Run(bot, "ticket-bot") as run:
        with run.action("close:ticket-41"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
        with run.action("close:ticket-42"):
            bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 42")

    result = cli("undo", str(run.run_id), "--action", "close:ticket-42", "--yes")

    assert result.exit_code == 0, result.output
    assert (_status(support, 41), _status(support, 42)) == ("closed", "needs review")
    assert result.stdout.startswith(f"Undid actions of run {run.run_id}")
    # Scoped undos do not mark the run undone: the rest can still be undone.
    assert support.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run.run_id,)).fetchone()[0] is None
    assert cli("undo", str(run.run_id), "--yes").exit_code == 0
    assert (_status(support, 41), _status(support, 42)) == ("open", "needs review")


def test_undo_of_an_unknown_action_exits_2(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'closed' WHERE id = 41")
    result = cli("undo", str(run_id), "--action", "nope", "--yes")
    assert result.exit_code == 2
    assert "has no action 'nope'" in result.stderr
    assert _status(support, 41) == "closed"


def test_undo_of_single_rows(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'closed' WHERE id IN (40, 41, 42)",
                     "UPDATE customers SET name = 'X' WHERE id IN (1, 2)")

    result = cli("undo", str(run_id), "--row", "tickets:42", "--row", "public.tickets:40", "--row", "customers:2",
                 "--yes")

    assert result.exit_code == 0, result.output
    assert [_status(support, i) for i in (40, 41, 42)] == ["open", "closed", "needs review"]
    assert [r[0] for r in support.execute("SELECT name FROM customers WHERE id IN (1, 2) ORDER BY id")] \
        == ["X", "Northwind Systems"]


def test_undo_of_a_row_with_a_composite_key(sc, cli, run_bot):
    sc.execute('CREATE TABLE "Order Items" (order_id int, line int, qty int, PRIMARY KEY (order_id, line))')
    sc.execute('INSERT INTO "Order Items" VALUES (1, 1, 5), (1, 2, 6), (2, 1, 7)')
    track(sc, '"Order Items"')
    run_id = run_bot('UPDATE "Order Items" SET qty = 0')

    result = cli("undo", str(run_id), "--row", '"Order Items":{"order_id": 1, "line": 2}', "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, '"Order Items"', "order_id, line") == ["(1,1,0)", "(1,2,6)", "(2,1,0)"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tickets", "--row 'tickets' is not TABLE:KEY"),
        ("tickets:", "--row 'tickets:' is not TABLE:KEY"),
        (":42", "--row ':42' is not TABLE:KEY"),
        ('tickets:{"id": 42', "the composite key is not valid JSON"),
        ('tickets:{"id" 42}', "the composite key is not valid JSON"),
        ("tickets:[42]", "changed no row of public.tickets with id [42]"),
        ("tickets:41", "changed no row of public.tickets with id 41; sidecar show"),
        ('tickets:{"status": "x"}', "the key of public.tickets is (id), not (status)"),
        ("nosuchtable:1", "table nosuchtable does not exist"),
    ],
)
def test_malformed_row_exits_2_and_changes_nothing(support, cli, run_bot, spec, message):
    run_id = run_bot("UPDATE tickets SET status = 'closed' WHERE id = 42")
    result = cli("undo", str(run_id), "--row", spec, "--yes")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert _status(support, 42) == "closed"


def test_row_of_a_composite_key_given_as_a_plain_value_is_refused(sc, cli, run_bot):
    sc.execute("CREATE TABLE order_items (order_id int, line int, qty int, PRIMARY KEY (order_id, line))")
    sc.execute("INSERT INTO order_items VALUES (1, 1, 5)")
    track(sc, "order_items")
    run_id = run_bot("UPDATE order_items SET qty = 0")
    result = cli("undo", str(run_id), "--row", "order_items:1", "--yes")
    assert result.exit_code == 2
    assert "has a composite key (order_id, line); give it as JSON" in result.stderr


# -- foreign keys, identity, generated and changed columns -----------------------------------


def test_parents_are_put_back_before_children_and_children_removed_first(support, cli, run_bot):
    before = _state(support)
    run_id = run_bot(
        # the bot merges customer 2 into a new customer 7: new parent, child moved, old parent gone
        "INSERT INTO customers VALUES (7, 'Northwind Group')",
        "UPDATE tickets SET customer_id = 7 WHERE customer_id = 2",
        "INSERT INTO tickets (id, status, customer_id) VALUES (70, 'merge note', 7)",
        "DELETE FROM customers WHERE id = 2",
        "DELETE FROM tickets WHERE customer_id = 3",
        "DELETE FROM customers WHERE id = 3",
    )

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert _state(support) == before


def test_self_referencing_table(sc, cli, run_bot):
    sc.execute("CREATE TABLE staff (id int PRIMARY KEY, name text, manager_id int REFERENCES staff)")
    sc.execute("INSERT INTO staff VALUES (1, 'Ada', NULL), (2, 'Bob', 1), (3, 'Cy', 2)")
    track(sc, "staff")
    before = snapshot(sc, "staff", "id")
    run_id = run_bot(
        "INSERT INTO staff VALUES (10, 'New boss', NULL), (11, 'New hire', 10)",
        "UPDATE staff SET manager_id = 11 WHERE id = 3",
        "DELETE FROM staff WHERE id = 3",
        "DELETE FROM staff WHERE id = 2",
    )

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "staff", "id") == before


def test_deferrable_foreign_keys_in_a_cycle(sc, cli, run_bot):
    sc.execute("CREATE TABLE a (id int PRIMARY KEY, b_id int)")
    sc.execute("CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a DEFERRABLE INITIALLY IMMEDIATE)")
    sc.execute("ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b DEFERRABLE INITIALLY IMMEDIATE")
    sc.execute("BEGIN")
    sc.execute("SET CONSTRAINTS ALL DEFERRED")
    sc.execute("INSERT INTO a VALUES (1, 1)")
    sc.execute("INSERT INTO b VALUES (1, 1)")
    sc.execute("COMMIT")
    track(sc, "a", "b")
    before = snapshot(sc, "a") + snapshot(sc, "b")
    with sidecar.steps.runs.Run(sc, "cleanup-bot") as run:
        with sc.transaction():
            sc.execute("SET CONSTRAINTS ALL DEFERRED")
            sc.execute("DELETE FROM a")
            sc.execute("DELETE FROM b")

    result = cli("undo", str(run.run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "a") + snapshot(sc, "b") == before


def test_rows_added_in_a_cycle_of_deferrable_keys_are_removed(sc, cli, run_bot):
    sc.execute("CREATE TABLE a (id int PRIMARY KEY, b_id int)")
    sc.execute("CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a DEFERRABLE INITIALLY DEFERRED)")
    sc.execute("ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b DEFERRABLE INITIALLY DEFERRED")
    track(sc, "a", "b")
    with sidecar.steps.runs.Run(sc, "setup-bot") as run:
        with sc.transaction():
            sc.execute("INSERT INTO a VALUES (1, 1)")
            sc.execute("INSERT INTO b VALUES (1, 1)")

    result = cli("undo", str(run.run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "a") + snapshot(sc, "b") == []


def test_identity_generated_always_keeps_its_values(sc, cli, run_bot):
    sc.execute("CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
               "seq bigint GENERATED ALWAYS AS IDENTITY, body text)")
    sc.execute("INSERT INTO notes (body) VALUES ('a'), ('b'), ('c')")
    sc.execute("DELETE FROM notes WHERE id = 2")  # a gap, so values really must be kept
    track(sc, "notes")
    before = snapshot(sc, "notes", "id")
    run_id = run_bot("DELETE FROM notes WHERE id = 3", "UPDATE notes SET body = 'A'", "INSERT INTO notes (body) VALUES ('d')")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "notes", "id") == before == ["(1,1,a)", "(3,3,c)"]


@pytest.mark.pg_version(min=12)
def test_generated_columns_are_left_to_the_database(sc, cli, run_bot):
    sc.execute("CREATE TABLE lines (id int PRIMARY KEY, qty int, price numeric(8,2), "
               "total numeric GENERATED ALWAYS AS (qty * price) STORED)")
    sc.execute("INSERT INTO lines VALUES (1, 2, 3.50), (2, 1, 10)")
    track(sc, "lines")
    before = snapshot(sc, "lines", "id")
    run_id = run_bot("UPDATE lines SET qty = 100", "DELETE FROM lines WHERE id = 2")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "lines", "id") == before == ["(1,2,3.50,7.00)", "(2,1,10.00,10.00)"]


def test_a_column_added_since_the_run_is_left_alone(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    support.execute("ALTER TABLE tickets ADD COLUMN priority int")
    support.execute("ALTER TABLE tickets DISABLE TRIGGER tickets_stamp")
    support.execute("UPDATE tickets SET priority = 1")
    support.execute("ALTER TABLE tickets ENABLE TRIGGER tickets_stamp")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert support.execute("SELECT status, priority FROM tickets WHERE id = 42").fetchone() == ("needs review", 1)
    assert "note: public.tickets: column priority was added since the run started; left as it is" in result.stdout


def test_a_column_dropped_since_the_run_is_ignored_and_said(support, cli, run_bot):
    support.execute("ALTER TABLE tickets ADD COLUMN note text")
    run_id = run_bot("UPDATE tickets SET status = 'resolved', note = 'bot was here' WHERE id = 42")
    support.execute("ALTER TABLE tickets DROP COLUMN note")

    refused = cli("undo", str(run_id), "--yes")

    # The run's values of the dropped column cannot come back: said, and nothing done without --force.
    assert refused.exit_code == 2
    assert "column note was dropped since the run; its old values cannot be put back" in refused.output
    assert "add --force" in refused.output
    assert _status(support, 42) == "resolved"
    result = cli("undo", str(run_id), "--yes", "--force")
    assert result.exit_code == 0, result.output
    assert _status(support, 42) == "needs review"
    assert "note: public.tickets: column note was dropped since the run; its old values cannot be put back" in result.stdout


def test_a_renamed_column_is_still_restored(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    support.execute("ALTER TABLE tickets RENAME COLUMN status TO state")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert support.execute("SELECT state FROM tickets WHERE id = 42").fetchone()[0] == "needs review"


def test_a_renamed_key_column_is_still_matched(sc, cli, run_bot):
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text)")
    sc.execute("INSERT INTO tickets VALUES (42, 'needs review')")
    track(sc, "tickets")
    run_id = run_bot("UPDATE tickets SET status = 'resolved'", "INSERT INTO tickets VALUES (43, 'new')")
    sc.execute("ALTER TABLE tickets RENAME COLUMN id TO ticket_id")

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 0, result.output
    assert snapshot(sc, "tickets") == ['(42,"needs review")']
    # Capture and reading history carry on under the new name.
    later = run_bot("UPDATE tickets SET status = 'closed'")
    assert "tickets #42: status 'needs review' -> 'closed'" in cli("show", str(later)).stdout


def test_an_undoer_with_no_rights_on_the_table_undoes_despite_its_trigger(support, dsn, run_bot):
    """sidecar_undoer alone is enough: the table's undo function restores with its owner's
    rights, the app's trigger off for the restore only (tests/test_undo_rights.py tells
    the whole story on a server with no superuser)."""
    from psycopg.conninfo import make_conninfo

    before = snapshot(support, "tickets", "id")
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    support.execute("CREATE ROLE operator LOGIN")
    support.execute("GRANT sidecar_undoer TO operator")
    try:
        with psycopg.connect(make_conninfo(dsn, user="operator"), autocommit=True) as op:
            undo(op, run_id)
        assert snapshot(support, "tickets", "id") == before  # last_update not stamped by the undo
        assert support.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'tickets_stamp'").fetchone()[0] == "O"
    finally:
        support.execute("DROP OWNED BY operator")
        support.execute("DROP ROLE operator")


# -- the undo is a run ------------------------------------------------------------------------


def test_the_undo_is_a_run_and_undoing_it_puts_the_changes_back(support, cli, run_bot):
    before = _state(support)
    run_id = run_bot(
        "UPDATE tickets SET status = 'resolved' WHERE id = 42",
        "INSERT INTO customers VALUES (9, 'Fabrikam')",
        "DELETE FROM tickets WHERE id = 44",
    )
    after = _state(support)

    first = undo(support, run_id)
    assert _state(support) == before
    undo_run = first.undo_run_id
    assert support.execute("SELECT automation, status, undo_of FROM sidecar.runs WHERE run_id = %s",
                           (undo_run,)).fetchone() == ("sidecar undo", "succeeded", run_id)
    assert support.execute("SELECT undone_by FROM sidecar.runs WHERE run_id = %s", (run_id,)).fetchone()[0] == undo_run

    # runs and show say so.
    listing = cli("runs").stdout
    assert f"(undone by {str(undo_run)[:8]})" in listing
    assert f"(undo of {str(run_id)[:8]})" in listing
    shown = cli("show", str(run_id)).stdout
    assert "  status      undone" in shown and f"  undone by   {undo_run}" in shown

    redo = cli("undo", str(undo_run), "--yes")
    assert redo.exit_code == 0, redo.output
    assert _state(support) == after

    # ...and that can be undone too.
    redo_run = support.execute("SELECT run_id FROM sidecar.runs WHERE undo_of = %s", (undo_run,)).fetchone()[0]
    assert cli("undo", str(redo_run), "--yes").exit_code == 0
    assert _state(support) == before


def test_undoing_a_run_twice_is_refused(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    first = cli("undo", str(run_id), "--yes")
    assert first.exit_code == 0
    support.execute("UPDATE tickets SET status = 'something else' WHERE id = 42")

    again = cli("undo", str(run_id), "--yes")

    assert again.exit_code == 2
    assert f"run {run_id} was already undone by run" in again.stderr
    assert "to put its changes back, undo that run: sidecar undo" in again.stderr
    assert _status(support, 42) == "something else"


def test_each_undo_is_logged_with_who_scope_counts_and_why(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    support.execute("UPDATE tickets SET status = 'escalated' WHERE id = 42")

    result = cli("undo", str(run_id), "--yes", "--reason", "bot matched the wrong customer")

    assert result.exit_code == 3
    actor, kind, summary, detail = support.execute(
        "SELECT actor, kind, summary, detail FROM sidecar.events WHERE run_id = %s AND kind = 'undo'", (run_id,)
    ).fetchone()
    assert actor == "postgres"
    assert summary == (f"Undid run {str(run_id)[:8]}: restored 1 row, skipped 1 conflicting row "
                       "(bot matched the wrong customer)")
    assert detail["scope"]["scope"] == "run" and detail["scope"]["reason"] == "bot matched the wrong customer"
    assert detail["tables"]["public.tickets"]["update"] == 1
    assert detail["conflicts"] == 1
    # And `show` of the run reads it out.
    assert f"postgres: Undid run {str(run_id)[:8]}: restored 1 row" in cli("show", str(run_id)).stdout


def test_undo_json(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    result = cli("undo", str(run_id), "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["undo"]
    assert doc["applied"] is True and doc["run_id"] == str(run_id)
    assert doc["tables"]["public.tickets"]["update"] == 1
    assert doc["undo_run_id"]


def test_library_undo_of_an_unknown_table_row(support, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    with pytest.raises(UsageError, match="changed no row of table public.customers"):
        undo(support, run_id, rows=["customers:1"])
    assert sidecar.undo.restore.parse_row("tickets:42") == ("tickets", "42")


def test_conflict_names_the_newest_later_run_however_far_back_it_wrote(support, cli, run_bot):
    """Issue 25: conflict attribution searches history newest first in widening windows; a
    later writer far behind the newest statements is still found, and the newest one wins."""
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id IN (41, 42)")
    first = run_bot("UPDATE tickets SET status = 'first' WHERE id = 42", automation="first-bot")
    second = run_bot("UPDATE tickets SET status = 'second' WHERE id IN (41, 42)", automation="second-bot")
    # 100,000 statement ids later (other tables, other runs), a write to another ticket.
    support.execute("SELECT setval('sidecar.stmt_seq', nextval('sidecar.stmt_seq') + 100000)")
    noise = run_bot("UPDATE tickets SET status = 'noise' WHERE id = 44", automation="noise-bot")
    assert support.execute("SELECT min(stmt_id) FROM sidecar.statements WHERE run_id = %s", (noise,)).fetchone()[0] \
        > support.execute("SELECT max(stmt_id) FROM sidecar.statements WHERE run_id = %s", (second,)).fetchone()[0] + 100000

    result = cli("undo", str(run_id), "--preview")

    out = result.stdout
    assert f"tickets #42: changed since by run {str(second)[:8]}" in out, out
    assert f"tickets #41: changed since by run {str(second)[:8]}" in out, out
    assert str(first)[:8] not in out
