"""The deliberate bugs the mutation check plants, one at a time, and the tests that must catch each.

Each mutation replaces one exact piece of text (the `nth` occurrence, or every one with nth=0)
in one file of a scratch copy of the repository. `tests` are pytest arguments (files or node ids,
`-k` expressions) run against the mutated copy: at least one must fail for the mutation to be
"killed". Keep each selection small: the whole check should stay within minutes per area.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str  # pause, hold, capture, steps, conflict, purge, privileges
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    nth: int = 0  # 0: every occurrence; n: only the n-th (1-based)
    why: str = ""


CAPTURE = "triggers/capture.sql"
GATE_SQL = "sql/functions/fn_capture.sql"
STAR = "ARRAY[v_tag.automation, '*', '@TRACKED_ID@']"
EXEMPT = "THEN coalesce(v_tag.is_undo, true) OR NOT EXISTS ("
NOT_EXEMPT = "THEN (coalesce(v_tag.is_undo, true) AND v_tag.is_undo IS NOT TRUE) OR NOT EXISTS ("
OPS = {1: "UPDATE", 2: "INSERT", 3: "DELETE"}
GATE_TESTS = "tests/test_gate.py"

MUTATIONS: list[Mutation] = []

# -- pause ---------------------------------------------------------------------
for n, op in OPS.items():
    MUTATIONS.append(Mutation(
        f"capture ignores pause '*' on {op}", "pause", CAPTURE, STAR, "ARRAY[v_tag.automation, '@TRACKED_ID@']",
        (GATE_TESTS + "::test_a_pause_stops_every_kind_of_write_of_a_session_already_open[every]",), nth=n))
    MUTATIONS.append(Mutation(
        f"capture ignores a table pause on {op}", "pause", CAPTURE, STAR, "ARRAY[v_tag.automation, '*']",
        (GATE_TESTS + "::test_a_pause_stops_every_kind_of_write_of_a_session_already_open[table]",), nth=n))
    MUTATIONS.append(Mutation(
        f"undo loses its exemption from the pause on {op}", "pause", CAPTURE, EXEMPT, NOT_EXEMPT,
        (GATE_TESTS, "-k", "undo_works_under_every_kind_of_pause and run"), nth=n))
MUTATIONS += [
    Mutation("the gate ignores pause '*'", "pause", GATE_SQL,
             "p.target IN (p_automation, '*')", "p.target IN (p_automation)",
             (GATE_TESTS + "::test_a_pause_stops_every_kind_of_write_of_a_session_already_open[every]",)),
    Mutation("the gate ignores table pauses", "pause", GATE_SQL,
             "OR (p.scope = 'table' AND p.target = p_tracked_id::text)", "OR false",
             (GATE_TESTS + "::test_a_pause_stops_every_kind_of_write_of_a_session_already_open[table]",)),
    Mutation("untagged writes are gated", "pause", CAPTURE, EXEMPT, "THEN NOT EXISTS (",
             (GATE_TESTS, "-k", "untagged")),
    Mutation("start_run ignores the pause", "pause", "sql/functions/fn_runs.sql",
             "PERFORM sidecar._gate(p_automation, NULL, 'No run was started.');", "PERFORM 1;",
             (GATE_TESTS, "-k", "cannot_start_a_run")),
    Mutation("resume lifts nothing", "pause", "sql/functions/fn_gate.sql",
             "DELETE FROM sidecar.pauses WHERE scope = p_scope AND target = p_target;",
             "DELETE FROM sidecar.pauses WHERE scope = p_scope AND target = p_target AND false;",
             (GATE_TESTS, "-k", "resume_lets")),
    Mutation("resume lifts every scope", "pause", "sql/functions/fn_gate.sql",
             "DELETE FROM sidecar.pauses WHERE scope = p_scope AND target = p_target;",
             "DELETE FROM sidecar.pauses WHERE target = p_target OR target = '*';",
             (GATE_TESTS, "-k", "resume_lifts_only")),
    Mutation("pause --table pauses the automation named like the table", "pause", "sidecar/review/gate.py",
             "conn.execute(\"SELECT sidecar.pause_table(%s::regclass, %s)\", (name, reason))",
             "conn.execute(\"SELECT sidecar.pause(%s, %s)\", (name, reason))",
             (GATE_TESTS, "-k", "table")),
    Mutation("a paused automation's held write goes to the queue", "pause", "sql/functions/fn_review.sql",
             "PERFORM sidecar._gate(r_run.automation, p_tracked_id, 'Nothing of this statement was written.');",
             "PERFORM 1;", ("tests/test_review.py", "-k", "paused_automation_cannot_slip")),
    Mutation("the shape check path ignores the pause", "pause", CAPTURE,
             "IF NOT coalesce(v_tag.is_undo, true) THEN\n                PERFORM sidecar._gate",
             "IF false THEN\n                PERFORM sidecar._gate",
             (GATE_TESTS, "-k", "schema_change_nothing_watched")),
]

# -- hold ----------------------------------------------------------------------
REVIEW = "tests/test_review.py"
MUTATIONS += [
    Mutation("an undo run is held", "hold", "sql/functions/fn_review.sql",
             "IF r_run.is_undo THEN\n        RETURN false;", "IF false THEN\n        RETURN false;",
             (REVIEW, "-k", "undo_runs_are_not_held")),
    Mutation("a rule for one automation holds every automation", "hold", "sql/functions/fn_review.sql",
             "AND (r.automation IS NULL OR r.automation = r_run.automation)", "AND true",
             (REVIEW, "-k", "rule_for_one_automation")),
    Mutation("an upsert of an existing key is held as an insert", "hold", "sql/functions/fn_review.sql",
             "IF v_exists THEN\n            RETURN false;", "IF false THEN\n            RETURN false;",
             (REVIEW, "-k", "upsert")),
    Mutation("a held row lands anyway", "hold", "triggers/hold.sql",
             "THEN\n        RETURN NULL;", "THEN\n        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;",
             (REVIEW, "-k", "held_row_is_absent")),
    Mutation("the hold trigger never asks", "hold", "triggers/hold.sql",
             "IF cardinality(v_rules) > 0", "IF cardinality(v_rules) > 1",
             (REVIEW, "-k", "held_row_is_absent")),
    Mutation("a foreign key's action is held instead of refused", "hold", "sql/functions/fn_review.sql",
             "IF p_op <> 'INSERT' AND pg_trigger_depth() > 1", "IF false AND pg_trigger_depth() > 1",
             (REVIEW, "-k", "foreign_keys_action")),
]

# -- capture of each statement kind ---------------------------------------------
CAPTURE_TESTS = ("tests/test_capture.py", "-k", "tagged_insert_update_delete_are_captured")
MUTATIONS += [
    Mutation("UPDATE loses its before-images", "capture", CAPTURE,
             "SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE EXISTS (SELECT FROM s)\n        UNION ALL",
             "SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE false\n        UNION ALL", CAPTURE_TESTS),
    Mutation("UPDATE loses its after-images", "capture", CAPTURE,
             "SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE EXISTS (SELECT FROM s);",
             "SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE false;", CAPTURE_TESTS, nth=1),
    Mutation("INSERT loses its images", "capture", CAPTURE,
             "SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE EXISTS (SELECT FROM s);",
             "SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE false;", CAPTURE_TESTS, nth=2),
    Mutation("DELETE loses its images", "capture", CAPTURE,
             "SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE EXISTS (SELECT FROM s);",
             "SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE false;", CAPTURE_TESTS),
    Mutation("an INSERT is recorded as an UPDATE", "capture", CAPTURE,
             "SELECT v_stmt, @TRACKED_ID@, 'I',", "SELECT v_stmt, @TRACKED_ID@, 'U',", CAPTURE_TESTS),
    Mutation("a DELETE is recorded as an UPDATE", "capture", CAPTURE,
             "SELECT v_stmt, @TRACKED_ID@, 'D',", "SELECT v_stmt, @TRACKED_ID@, 'U',", CAPTURE_TESTS),
    Mutation("--capture all records no untagged write", "capture", CAPTURE,
             "ELSIF @TAGGED_ONLY@ THEN", "ELSIF true THEN", ("tests/test_track.py", "tests/test_capture.py")),
    Mutation("a multi-row UPDATE is taken for a no-op", "capture", CAPTURE,
             "                                                  ELSE true END\n",
             "                                                  ELSE false END\n", ("tests/test_capture.py",)),
]

# -- step lineage --------------------------------------------------------------
RERUN = "tests/test_rerun.py"
MUTATIONS += [
    Mutation("begin_step looks only at its own run, not the lineage", "steps", "sql/functions/fn_steps.sql",
             "WHERE s.lineage = v_lineage AND s.key = p_key;", "WHERE s.run_id = v_run AND s.key = p_key;",
             (RERUN, "-k", "does_only_what_is_left")),
    Mutation("step_done names no run of the lineage", "steps", "sql/functions/fn_steps.sql",
             "WHERE s.lineage = (SELECT r.lineage FROM sidecar.runs r",
             "WHERE s.run_id = (SELECT r.run_id FROM sidecar.runs r",
             (RERUN, "-k", "step_done_names")),
    Mutation("two attempts of a step do not wait for each other", "steps", "sql/functions/fn_steps.sql",
             "PERFORM pg_advisory_xact_lock(hashtext('sidecar.step:' || v_lineage), hashtext(p_key));",
             "PERFORM 1;", (RERUN, "-k", "wait_for_each_other or concurrent")),
    Mutation("rerun --step redoes every step", "steps", "sidecar/steps/rerun.py",
             "and (not steps or s.key in steps)]", "]", (RERUN, "-k", "rerun_step_redoes")),
]

# -- conflict check ------------------------------------------------------------
TYPES = "tests/test_conflict_types.py"
PLAN = "sidecar/undo/plan.py"
MUTATIONS += [
    Mutation("columns without equality are left out of the conflict check", "conflict", PLAN,
             "parts.append(sql.SQL(\"{l}.{c}::text IS NOT DISTINCT FROM {r}.{c}::text\").format(\n"
             "                    l=quoted(left), r=quoted(right), c=quoted(c.name)))",
             "parts.append(sql.SQL(\"true\"))", (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("every column compared with =", "conflict", PLAN,
             "            if c.comparable:\n", "            if True:\n",
             (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("json, xml and point compared with = (not as text)", "conflict", PLAN,
             "EXISTS (SELECT FROM pg_opclass oc", "true OR EXISTS (SELECT FROM pg_opclass oc", (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("a numeric's scale compared with =", "conflict", PLAN,
             'LOOSE_EQUALITY = ["numeric", ', "LOOSE_EQUALITY = [", (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("an interval compared with =", "conflict", PLAN,
             '"numeric", "interval", ', '"numeric", ', (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("-0 and 0 the same", "conflict", PLAN,
             '"real", "double precision"]', '"real"]', (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("point arrays compared with =", "conflict", PLAN,
             "el.typname NOT IN ('json', 'xml', 'point')", "el.typname NOT IN ('json', 'xml')",
             (TYPES, "-k", "edit_of_any_type_after_the_run")),
    Mutation("the --sql script's guard compares every column with =", "conflict", "sidecar/undo/script.py",
             "        if not c.comparable:\n", "        if False:\n",
             (TYPES, "-k", "sql_script_guards or sql_script_restores")),
    Mutation("the --sql script's guard compares text columns as equal", "conflict", "sidecar/undo/script.py",
             "value = exp.Literal.string(left[c.name]) if left.get(c.name) is not None else exp.Null()",
             "value = col", (TYPES, "-k", "sql_script_guards or sql_script_restores")),
    Mutation("a conflict exits 0", "conflict", "sidecar/cli/undo.py",
             "        sys.exit(EXIT_CONFLICTS)", "        pass", (TYPES, "-k", "edit_of_any_type_after_the_run")),
]

# -- purge guards --------------------------------------------------------------
RETENTION = "tests/test_retention.py"
MUTATIONS += [
    Mutation("purge ignores held changes waiting", "purge", "sql/functions/fn_retention.sql",
             "AND EXISTS (SELECT FROM sidecar.pending WHERE run_id = p_run AND status = 'pending') THEN",
             "AND false THEN", (RETENTION, "-k", "held_changes")),
    Mutation("purge ignores an undo in progress", "purge", "sql/functions/fn_retention.sql",
             "IF NOT pg_try_advisory_xact_lock(hashtext('sidecar.undo'), hashtext(p_run::text)) THEN",
             "IF false THEN", (RETENTION, "-k", "being_undone")),
    Mutation("purge ignores runs still running", "purge", "sidecar/ops/retention.py",
             'if status == "running":', "if False:", (RETENTION, "-k", "being_undone")),
]

# -- privileges ----------------------------------------------------------------
PRIVS = "sql/functions/privileges.sql"
PRIV_TESTS = ("tests/test_privileges.py",)
MUTATIONS += [
    Mutation("PUBLIC keeps EXECUTE on every sidecar function", "privileges", PRIVS,
             "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA sidecar FROM PUBLIC;", "SELECT 1;", PRIV_TESTS),
    Mutation("automations may resume", "privileges", PRIVS,
             "    sidecar._qualname(regclass)\nTO PUBLIC;", "    sidecar._qualname(regclass),\n    sidecar.resume(text)\nTO PUBLIC;",
             PRIV_TESTS),
    Mutation("pausers may not pause", "privileges", PRIVS,
             "GRANT EXECUTE ON FUNCTION sidecar.pause(text, text), sidecar.resume(text),",
             "GRANT EXECUTE ON FUNCTION sidecar.resume(text),", PRIV_TESTS),
    Mutation("pausers may not resume a table", "privileges", PRIVS,
             "sidecar.pause_table(regclass, text), sidecar.resume_table(regclass)\n        TO sidecar_pauser;",
             "sidecar.pause_table(regclass, text)\n        TO sidecar_pauser;", PRIV_TESTS),
    Mutation("undoers may not begin an undo", "privileges", PRIVS,
             "GRANT EXECUTE ON FUNCTION sidecar._undo_begin(uuid, jsonb), ", "GRANT EXECUTE ON FUNCTION ",
             PRIV_TESTS),
    Mutation("approvers may not approve", "privileges", PRIVS,
             "GRANT EXECUTE ON FUNCTION sidecar.approve(bigint, text), ", "GRANT EXECUTE ON FUNCTION ",
             PRIV_TESTS + ("-k", "approver")),
    Mutation("automations may read history", "privileges", PRIVS,
             "GRANT USAGE ON SCHEMA sidecar TO PUBLIC;",
             "GRANT USAGE ON SCHEMA sidecar TO PUBLIC; GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO PUBLIC;",
             PRIV_TESTS),
]
