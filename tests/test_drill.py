"""The failure drill: the launch checklist on a scratch copy, never on the live rows.

It passes on a healthy install, leaves nothing behind (no scratch schema, no
drill runs in `sidecar runs`), and fails naming the check when a piece is
broken: the table's capture trigger disabled, an operator role missing, a
trigger that would write outside the copy.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql

import sidecar
from tests.fix_sidecar import snapshot, track

CHECKS = ["roles", "copy", "capture", "pause", "record", "batch", "rerun", "trail"]


@pytest.fixture
def billing(sc):
    """Tickets with a last_update trigger, and billing notes (identity key, FK to tickets), both tracked."""
    sc.execute(
        """
        CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL,
                              last_update timestamptz NOT NULL DEFAULT now());
        CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN NEW.last_update := now(); RETURN NEW; END $$;
        CREATE TRIGGER tickets_stamp BEFORE UPDATE ON tickets FOR EACH ROW EXECUTE FUNCTION stamp();
        CREATE TABLE billing_notes (
            id         int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ticket_id  int NOT NULL REFERENCES tickets,
            note       text NOT NULL CHECK (note <> ''),
            amount     numeric(10, 2),
            total      numeric GENERATED ALWAYS AS (coalesce(amount, 0) * 2) STORED,
            edited_at  timestamptz
        );
        CREATE FUNCTION stamp_note() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN NEW.edited_at := '2026-01-01'; RETURN NEW; END $$;
        CREATE TRIGGER notes_stamp BEFORE UPDATE ON billing_notes FOR EACH ROW EXECUTE FUNCTION stamp_note();
        INSERT INTO tickets (id, status) SELECT g, 'open' FROM generate_series(1, 12) g;
        INSERT INTO billing_notes (ticket_id, note, amount)
            SELECT g, 'note ' || g, g * 10 FROM generate_series(1, 12) g;
        """
    )
    track(sc, "tickets", "billing_notes", owner="billing-team", risk="high", kind="final")
    return sc


def drill(cli, *args):
    result = cli("drill", "--table", "billing_notes", *args, "--json")
    report = json.loads(result.output)["drill"]
    return result.exit_code, report, {c["name"]: c for c in report["checks"]}


def nothing_left_behind(sc):
    assert sc.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sidecar\\_drill\\_%'").fetchone()[0] == 0
    assert sc.execute("SELECT count(*) FROM sidecar.runs WHERE automation IN ('sidecar-drill', 'sidecar undo')"
                      ).fetchone()[0] == 0
    assert sc.execute("SELECT count(*) FROM sidecar.tracked t WHERE NOT EXISTS "
                      "(SELECT FROM pg_class c WHERE c.oid = t.relid)").fetchone()[0] == 0
    assert sc.execute("SELECT count(*) FROM sidecar.pauses").fetchone()[0] == 0


def test_drill_passes_on_a_healthy_install_and_leaves_nothing_behind(billing, run_bot, cli):
    run_bot("UPDATE billing_notes SET note = 'checked' WHERE id = 3", automation="billing-bot")
    before = snapshot(billing, "billing_notes"), snapshot(billing, "tickets")
    events_before = billing.execute("SELECT count(*) FROM sidecar.events").fetchone()[0]

    code, report, checks = drill(cli, "--automation", "billing-bot")

    assert code == 0, json.dumps(report, indent=2)
    assert list(checks) == CHECKS
    assert report["passed"] is True and report["automation"] == "billing-bot"
    assert all(c["passed"] and c["seconds"] >= 0 for c in checks.values())
    assert "SC001" in checks["pause"]["detail"]
    assert "exactly once" in checks["rerun"]["detail"]
    assert "started: sidecar-drill" in checks["trail"]["detail"]
    assert "failed: step drill:item-2" in checks["trail"]["detail"]
    assert "notes_stamp" in checks["copy"]["detail"] and "billing_notes_ticket_id_fkey" in checks["copy"]["detail"]

    # The live rows are untouched, the scratch schema and the drill's runs are gone.
    assert (snapshot(billing, "billing_notes"), snapshot(billing, "tickets")) == before
    nothing_left_behind(billing)
    runs = json.loads(cli("runs", "--json").output)["runs"]
    assert [r["automation"] for r in runs] == ["billing-bot"]
    # What stays is one 'drill' event, which the inventory shows.
    events = billing.execute("SELECT kind, summary, detail FROM sidecar.events WHERE event_id > 0 "
                             "ORDER BY event_id OFFSET %s", (events_before,)).fetchall()
    assert [e[0] for e in events] == ["drill"]
    assert events[0][1] == "Drill on public.billing_notes: 8 of 8 checks passed"
    inventory = json.loads(cli("inventory", "--json").output)["inventory"]
    notes = next(t for t in inventory["tables"] if t["table"] == "public.billing_notes")
    assert notes["last_drill"]["passed"] is True


def test_drill_text_is_a_pass_fail_table_with_times(billing, cli):
    result = cli("drill", "--table", "billing_notes")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Failure drill on public.billing_notes: scratch copy in schema sidecar_drill_")
    for name in CHECKS:
        assert any(line.split()[:2] == [name, "pass"] and line.split()[2].endswith("s") for line in lines), name
    assert "8 of 8 checks passed." in result.output
    assert "removed (its result is kept as one 'drill' event)" in result.output


def test_drill_fails_naming_capture_when_the_tables_trigger_is_disabled(billing, cli):
    billing.execute("ALTER TABLE billing_notes DISABLE TRIGGER sidecar_capture_update")
    code, report, checks = drill(cli)
    assert code == 1
    assert not checks["capture"]["passed"]
    assert "sidecar_capture_update is disabled" in checks["capture"]["detail"]
    assert "sidecar track public.billing_notes" in checks["capture"]["detail"]
    # The copy mirrors the table, so the gate and the restores fail the same way; the copy itself is faithful.
    assert checks["copy"]["passed"] and checks["roles"]["passed"]
    assert not checks["pause"]["passed"] and not checks["record"]["passed"]
    nothing_left_behind(billing)
    text = cli("drill", "--table", "billing_notes")
    assert text.exit_code == 1
    assert any(line.split()[:2] == ["capture", "FAIL"] for line in text.output.splitlines())
    assert "failed: capture, pause, record, batch" in text.output


def test_drill_fails_naming_roles_when_an_operator_role_is_missing(billing, cli):
    hidden = f"sidecar_rerunner_away_{uuid.uuid4().hex[:6]}"
    billing.execute(sql.SQL("ALTER ROLE sidecar_rerunner RENAME TO {}").format(sql.Identifier(hidden)))
    try:
        code, report, checks = drill(cli)
    finally:
        billing.execute(sql.SQL("ALTER ROLE {} RENAME TO sidecar_rerunner").format(sql.Identifier(hidden)))
    assert code == 1
    assert [name for name, c in checks.items() if not c["passed"]] == ["roles"]
    assert "role sidecar_rerunner is missing" in checks["roles"]["detail"]
    nothing_left_behind(billing)


def test_drill_fails_when_a_grant_is_missing(billing, cli):
    billing.execute("REVOKE EXECUTE ON FUNCTION sidecar.pause(text, text) FROM sidecar_pauser")
    code, _, checks = drill(cli)
    assert code == 1
    assert "role sidecar_pauser lacks EXECUTE on sidecar.pause(text,text)" in checks["roles"]["detail"]


def test_drill_of_an_untracked_table_fails_capture(sc, cli):
    sc.execute("CREATE TABLE billing_notes (id int PRIMARY KEY, note text);"
               "INSERT INTO billing_notes SELECT g, 'n' FROM generate_series(1, 5) g")
    code, _, checks = drill(cli)
    assert code == 1
    assert "public.billing_notes is not tracked" in checks["capture"]["detail"]
    nothing_left_behind(sc)


def test_drill_rolls_back_a_copied_trigger_that_writes_outside_the_copy(billing, cli):
    billing.execute(
        """
        CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
        CREATE FUNCTION audit_note() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN INSERT INTO public.audit (what) VALUES (TG_OP); RETURN NULL; END $$;
        CREATE TRIGGER notes_audit AFTER INSERT OR UPDATE OR DELETE ON billing_notes
            FOR EACH ROW EXECUTE FUNCTION audit_note();
        """
    )
    code, _, checks = drill(cli)
    assert code == 1
    assert "wrote to public.audit outside the scratch schema; the drill rolled that back" in checks["capture"]["detail"]
    assert billing.execute("SELECT count(*) FROM audit").fetchone()[0] == 0
    nothing_left_behind(billing)


def test_drill_needs_rows_and_a_table(sc, cli):
    sc.execute("CREATE TABLE billing_notes (id int PRIMARY KEY, note text)")
    track(sc, "billing_notes")
    code, _, checks = drill(cli)
    assert code == 1
    assert "has no rows to copy" in checks["copy"]["detail"]
    assert checks["rerun"]["detail"] == "not run: the scratch copy could not be made"
    nothing_left_behind(sc)
    missing = cli("drill", "--table", "nope")
    assert missing.exit_code == 2 and "table nope does not exist" in missing.output


def test_drill_removes_the_leftovers_of_an_interrupted_drill(billing, cli, dsn):
    # A drill killed half-way leaves its scratch schema, tracked copy and runs.
    billing.execute("CREATE SCHEMA sidecar_drill_dead; "
                    "CREATE TABLE sidecar_drill_dead.billing_notes (id int PRIMARY KEY, note text); "
                    "INSERT INTO sidecar_drill_dead.billing_notes VALUES (1, 'a')")
    track(billing, "sidecar_drill_dead.billing_notes")
    bot = psycopg.connect(dsn, autocommit=True)
    with sidecar.Run(bot, "sidecar-drill", meta={"drill": "sidecar_drill_dead"}):
        bot.execute("UPDATE sidecar_drill_dead.billing_notes SET note = 'b'")
    bot.close()
    code, report, _ = drill(cli)
    assert code == 0, report
    assert "removed the leftovers of an interrupted drill (schema sidecar_drill_dead)" in report["notes"]
    nothing_left_behind(billing)
    assert json.loads(cli("runs", "--json").output)["runs"] == []


def test_drill_on_a_small_mixed_case_table_with_a_composite_key(sc, cli):
    # Nothing here can be edited freely (key and unique columns only): the drill deletes and puts back instead.
    sc.execute('CREATE SCHEMA "Shop"; CREATE TABLE "Shop"."Order Items" (order_id int, line int, sku text UNIQUE, '
               "PRIMARY KEY (order_id, line));"
               """INSERT INTO "Shop"."Order Items" VALUES (1, 1, 'a'), (1, 2, 'b'), (2, 1, 'c')""")
    track(sc, '"Shop"."Order Items"')
    before = snapshot(sc, '"Shop"."Order Items"')
    result = cli("drill", "--table", '"Shop"."Order Items"', "--json")
    report = json.loads(result.output)["drill"]
    assert result.exit_code == 0, json.dumps(report, indent=2)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["capture"]["detail"].startswith('deleted "Shop"."Order Items" (order_id 1, line 1)')
    assert "item 2 of 2 failed; the rerun redid item 2" in checks["rerun"]["detail"]
    assert any("deletes rows instead of editing them" in n for n in report["notes"])
    assert snapshot(sc, '"Shop"."Order Items"') == before
    nothing_left_behind(sc)
