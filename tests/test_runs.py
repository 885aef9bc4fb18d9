"""Runs: tagging from Python, and reading runs back with `sidecar runs` and `sidecar show`."""

import json
import uuid

import pytest

import sidecar.capture.history
import sidecar.steps.runs
from sidecar.errors import UsageError
from tests.fix_sidecar import track


@pytest.fixture
def support(sc):
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text, customer_id int REFERENCES customers)")
    sc.execute("INSERT INTO customers VALUES (1, 'Northwind Solar'), (2, 'Northwind Systems')")
    sc.execute("INSERT INTO tickets VALUES (41, 'open', 1), (42, 'needs review', 1)")
    track(sc, "tickets")
    track(sc, "customers", label_column="name")
    return sc


def _run_row(conn, run_id):
    return conn.execute("SELECT automation, status, error, meta, finished_at IS NOT NULL FROM sidecar.runs "
                        "WHERE run_id = %s", (run_id,)).fetchone()


def test_run_context_manager_records_success_and_meta(support, bot):
    meta = {"prompt": "v3", "model": "gpt-x", "ticket": 42}
    with sidecar.steps.runs.Run(bot, "ticket-bot", meta=meta) as run:
        assert bot.execute("SHOW sidecar.run_id").fetchone()[0] == str(run.run_id)
        bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")

    assert _run_row(support, run.run_id) == ("ticket-bot", "succeeded", None, meta, True)
    # The session is untagged again: later writes are not part of the run.
    assert bot.execute("SHOW sidecar.run_id").fetchone()[0] == ""
    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
    assert support.execute("SELECT count(*) FROM sidecar.statements").fetchone()[0] == 1


def test_run_context_manager_records_failure_with_the_exception_text(support, make_conn):
    bot = make_conn(autocommit=False)
    with pytest.raises(ValueError, match="customer not found"):
        with sidecar.steps.runs.Run(bot, "ticket-bot") as run:
            bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
            raise ValueError("customer not found for ticket 42")

    assert _run_row(support, run.run_id) == (
        "ticket-bot", "failed", "ValueError: customer not found for ticket 42", {}, True)
    # The block's uncommitted write was rolled back with it.
    assert support.execute("SELECT status FROM tickets WHERE id = 42").fetchone()[0] == "needs review"


def test_run_that_fails_in_the_database_is_recorded_as_failed(support, make_conn):
    bot = make_conn(autocommit=False)
    with pytest.raises(Exception):
        with sidecar.steps.runs.Run(bot, "ticket-bot") as run:
            bot.execute("UPDATE tickets SET customer_id = 99 WHERE id = 42")  # no such customer
    automation, status, error, _, finished = _run_row(support, run.run_id)
    assert (status, finished) == ("failed", True)
    assert error.startswith("ForeignKeyViolation: ")


def test_start_run_rejects_bad_input(support, bot):
    with pytest.raises(Exception, match="start_run needs the automation's name"):
        bot.execute("SELECT sidecar.start_run('  ')")
    with pytest.raises(Exception, match="run metadata must be a JSON object, not array"):
        bot.execute("SELECT sidecar.start_run('bot', '[1]')")
    with pytest.raises(Exception, match="no run is active in this session"):
        bot.execute("SELECT sidecar.finish_run()")


def test_runs_lists_runs_newest_first_with_rows_per_table(support, cli, run_bot):
    first = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42", automation="ticket-bot")
    second = run_bot("UPDATE customers SET name = 'Northwind Solar Inc.' WHERE id = 1",
                     "UPDATE tickets SET status = 'closed'", automation="crm-sync")

    result = cli("runs")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "automation", "started", "by", "status", "rows", "changed"]
    assert lines[1].startswith(str(second)[:8])
    assert "crm-sync" in lines[1] and "succeeded" in lines[1] and "postgres" in lines[1]
    assert lines[1].endswith("customers 1, tickets 2")
    assert lines[2].startswith(str(first)[:8]) and lines[2].endswith("tickets 1")

    only = cli("runs", "--automation", "ticket-bot")
    assert [line[:8] for line in only.stdout.splitlines()[1:]] == [str(first)[:8]]


def test_rows_changed_counts_each_row_once_and_not_the_rows_left_as_they_were(support, cli, run_bot):
    run_id = run_bot(
        "UPDATE tickets SET status = 'resolved' WHERE id = 42",
        "UPDATE tickets SET status = 'closed' WHERE id = 42",
        "UPDATE tickets SET status = status",  # touches both tickets, changes nothing
        "UPDATE customers SET name = name",
    )
    out = cli("show", str(run_id)).stdout
    assert "  changed     1 row in tickets (1)" in out
    assert json.loads(cli("runs", "--json").stdout)["runs"][0]["rows"] == {"public.tickets": 1}


def test_a_big_running_run_shows_the_rows_it_had_changed_when_last_counted(support, cli, bot, monkeypatch):
    monkeypatch.setattr(sidecar.capture.history, "RECOUNT_MAX", 2)
    run_id = bot.execute("SELECT sidecar.start_run('always-on-bot')").fetchone()[0]
    bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    bot.execute("UPDATE tickets SET status = 'closed' WHERE id = 41")
    assert cli("runs").stdout.splitlines()[1].endswith("running    tickets 2")

    bot.execute("UPDATE customers SET name = 'Northwind Solar Inc.' WHERE id = 1")
    line = cli("runs").stdout.splitlines()[1]
    assert "running    at least tickets 2 (counted 20" in line
    assert "  changed     at least 2 rows in tickets (2) (counted at 20" in cli("show", str(run_id)).stdout
    assert json.loads(cli("runs", "--json").stdout)["runs"][0]["rows_complete"] is False

    bot.execute("SELECT sidecar.finish_run()")
    assert cli("runs").stdout.splitlines()[1].endswith("succeeded  customers 1, tickets 2")


def test_runs_json_is_one_document_with_stable_keys(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42", meta={"prompt": "v3"})

    result = cli("runs", "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (run,) = doc["runs"]
    assert {"automation", "error", "finished_at", "meta", "rows", "run_id", "started_at", "started_by",
            "status", "undo_of", "undone_by"} <= set(run)
    # Stable: every run has the same keys, whatever its state.
    run_bot("UPDATE tickets SET status = 'x' WHERE id = 41", automation="other")
    assert len({tuple(sorted(r)) for r in json.loads(cli("runs", "--json").stdout)["runs"]}) == 1
    assert run["run_id"] == str(run_id)
    assert run["meta"] == {"prompt": "v3"}
    assert run["rows"] == {"public.tickets": 1}
    assert run["status"] == "succeeded"


def test_runs_when_there_are_none(sc, cli):
    result = cli("runs")
    assert result.exit_code == 0
    assert result.stdout.strip() == "No runs yet."
    assert json.loads(cli("runs", "--json").stdout) == {"runs": []}


def test_runs_since_filters_and_rejects_nonsense(support, cli, run_bot):
    run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42")
    assert len(json.loads(cli("runs", "--since", "1h", "--json").stdout)["runs"]) == 1
    assert json.loads(cli("runs", "--since", "2999-01-01T00:00", "--json").stdout)["runs"] == []
    bad = cli("runs", "--since", "yesterday-ish")
    assert bad.exit_code == 2
    assert "--since 'yesterday-ish' is not a time" in bad.stderr


def test_show_lists_actions_and_changes_in_plain_language(support, cli, bot):
    with sidecar.steps.runs.Run(bot, "ticket-bot", meta={"prompt": "v3", "model": "gpt-x"}) as run:
        with run.action("close:ticket-42"):
            bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
        with run.action("fix-customer"):
            bot.execute("UPDATE customers SET name = 'Northwind Solar GmbH' WHERE id = 1")
            bot.execute("INSERT INTO tickets VALUES (43, 'new', 2)")
            bot.execute("DELETE FROM tickets WHERE id = 41")

    result = cli("show", str(run.run_id)[:8])

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"Run {run.run_id}\n")
    assert "  automation  ticket-bot" in out
    assert "  status      succeeded" in out
    assert "  prompt      v3" in out and "  model       gpt-x" in out
    assert "  changed     4 rows in customers (1), tickets (3)" in out
    assert "Action close:ticket-42\n  tickets #42: status 'needs review' -> 'resolved'" in out
    assert "Action fix-customer" in out
    # Records named: a row by its label and key, a foreign key by the row it points at.
    assert "  customers \"Northwind Solar GmbH\" (#1): name 'Northwind Solar' -> 'Northwind Solar GmbH'" in out
    assert "  tickets #43: added (status 'new', customer_id customer Northwind Systems (#2))" in out
    assert "  tickets #41: deleted (was status 'open', customer_id customer Northwind Solar GmbH (#1))" in out


def test_show_json_has_run_actions_and_change_text(support, cli, run_bot):
    run_id = run_bot("UPDATE tickets SET status = 'resolved' WHERE id = 42", meta={"rule": "auto-close"})

    result = cli("show", str(run_id), "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sorted(doc) == ["actions", "events", "held", "more_actions", "run", "summary"]
    assert sorted(doc["summary"]) == ["changed", "failed", "meta", "next", "paused", "paused_by_name", "rerun",
                                      "started", "started_at"]
    assert doc["more_actions"] == 0
    assert doc["run"]["run_id"] == str(run_id) and doc["run"]["meta"] == {"rule": "auto-close"}
    (action,) = doc["actions"]
    assert action["key"].startswith("tx:") and action["context"] is None
    (change,) = action["changes"]
    assert change["text"] == "tickets #42: status 'needs review' -> 'resolved'"
    assert change["op"] == "U" and change["key"] == {"id": 42}
    assert change["before"]["status"] == "needs review" and change["after"]["status"] == "resolved"


def test_show_limits_each_action_and_counts_the_rest_without_no_op_rows(support, cli, run_bot):
    """`--limit N`: the first N changes of each action, and how many more, counted in the
    database as show would list them: a bulk UPDATE's no-op rows are no changes, a moved row is
    a deletion and an addition."""
    support.execute("INSERT INTO tickets SELECT g, 'open', 2 FROM generate_series(1, 30) g")
    run_id = run_bot("SELECT set_config('sidecar.action', 'close', false)",
                     "UPDATE tickets SET status = 'closed' WHERE id <= 30 AND id % 3 <> 0",  # 20 changed
                     "UPDATE tickets SET status = status WHERE id <= 12",                     # no-op rows
                     "SELECT set_config('sidecar.action', 'renumber', false)",
                     "UPDATE tickets SET id = id + 100 WHERE id IN (41, 42)")                 # moved keys

    result = cli("show", str(run_id), "--limit", "3", "--json")

    assert result.exit_code == 0, result.output
    actions = json.loads(result.stdout)["actions"]
    assert [(a["key"], len(a["changes"]), a["more"]) for a in actions] == [("close", 3, 17), ("renumber", 3, 1)]
    assert [c["text"] for c in actions[0]["changes"]] == [
        "tickets #1: status 'open' -> 'closed'", "tickets #2: status 'open' -> 'closed'",
        "tickets #4: status 'open' -> 'closed'"]
    # Keys in order: the old keys 41 and 42 (deleted), then 141 (added); 142 is the one more.
    assert sorted((c["op"], c["key"]["id"]) for c in actions[1]["changes"]) == [("D", 41), ("D", 42), ("I", 141)]
    assert "  … and 17 more changes" in cli("show", str(run_id), "--limit", "3").stdout


def test_show_reads_only_the_first_actions_of_a_run_of_many(support, cli, run_bot):
    """A run left running for days has millions of actions: `--actions N` (100 by default) reads and
    shows the first N, and says how many more there are."""
    run_id = run_bot("UPDATE tickets SET status = 'a' WHERE id = 41",
                     "UPDATE tickets SET status = 'b' WHERE id = 42",
                     "UPDATE customers SET name = 'c' WHERE id = 1",
                     "UPDATE tickets SET status = 'd' WHERE id = 41")

    out = cli("show", str(run_id), "--actions", "2").stdout
    assert "tickets #41: status 'open' -> 'a'" in out and "tickets #42: status 'needs review' -> 'b'" in out
    assert "'c'" not in out and "'d'" not in out
    assert out.count("\nAction tx:") == 2
    assert "… and 2 more actions (--actions 0 shows them all; the console pages through them)" in out
    assert json.loads(cli("show", str(run_id), "--actions", "3", "--json").stdout)["more_actions"] == 1
    everything = cli("show", str(run_id), "--actions", "0").stdout
    assert everything.count("\nAction tx:") == 4 and "more action" not in everything
    assert cli("show", str(run_id)).stdout == everything  # 100 by default
    assert cli("show", str(run_id), "--actions", "-1").exit_code == 2


def test_show_of_a_failed_run_says_why(support, cli, make_conn):
    bot = make_conn()
    with pytest.raises(RuntimeError):
        with sidecar.steps.runs.Run(bot, "ticket-bot") as run:
            bot.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
            raise RuntimeError("model timed out")
    out = cli("show", str(run.run_id)).stdout
    assert "  status      failed (RuntimeError: model timed out)" in out
    # Autocommit writes before the failure did land, and are shown.
    assert "tickets #42: status 'needs review' -> 'resolved'" in out


# -- run id prefixes ------------------------------------------------------------------------


def _run_with_id(conn, run_id: str) -> None:
    conn.execute("SELECT set_config('sidecar.run_id', %s, false)", (run_id,))
    conn.execute("UPDATE tickets SET status = status || '.' WHERE id = 42")
    conn.execute("RESET sidecar.run_id")


def test_a_unique_prefix_of_six_characters_names_a_run(support, cli, bot):
    _run_with_id(bot, "abcdef01-0000-4000-8000-000000000001")
    _run_with_id(bot, "abcdef02-0000-4000-8000-000000000002")

    assert sidecar.steps.runs.resolve(support, "abcdef01") == uuid.UUID("abcdef01-0000-4000-8000-000000000001")
    assert sidecar.steps.runs.resolve(support, "ABCDEF02-0000") == uuid.UUID("abcdef02-0000-4000-8000-000000000002")
    assert cli("show", "abcdef02").stdout.startswith("Run abcdef02-0000-4000-8000-000000000002")


@pytest.mark.parametrize(
    "ref, message",
    [
        ("abcdef", "run id prefix abcdef is ambiguous (2+ runs); give more characters"),
        ("123456", "no run id starts with 123456; sidecar runs lists the runs"),
        ("abc", "run id 'abc' is not a run id or a prefix of at least 6 characters"),
        ("last-run", "run id 'last-run' is not a run id or a prefix of at least 6 characters"),
        ("99999999-0000-4000-8000-000000000009", "run 99999999-0000-4000-8000-000000000009 is not known"),
    ],
    ids=["ambiguous", "unknown", "too-short", "not-hex", "unknown-full"],
)
def test_a_bad_run_reference_exits_2_with_a_clear_message(support, cli, bot, ref, message):
    _run_with_id(bot, "abcdef01-0000-4000-8000-000000000001")
    _run_with_id(bot, "abcdef02-0000-4000-8000-000000000002")

    for command in (["show", ref], ["undo", ref, "--preview"]):
        result = cli(*command)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert result.stdout == ""
    with pytest.raises(UsageError):
        sidecar.steps.runs.resolve(support, ref)
