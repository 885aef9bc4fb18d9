-- Hold rules and the review queue: rendering a table's hold trigger, holding
-- a row, and the operator's decisions. Re-applied by `sidecar install`
-- whenever this file changes (CREATE OR REPLACE only).
--
-- SQLSTATEs raised here (listed in the README):
--   SC020 rule refused (table not tracked, bad options, predicate that does
--         not compile against the table)
--   SC021 review decision refused (unknown item, already decided, no reason)
--   SC022 approval conflict: the row changed since it was held. Raised and
--         caught inside sidecar._approve, which then applies nothing and
--         returns the conflicts; callers see a result, not this error.
--   SC023 a rule would hold a row that a foreign key's action (ON DELETE
--         CASCADE, SET NULL...) changes: the statement is refused, whole
--
-- NOTIFY on channel 'sidecar', JSON payloads:
--   {"event": "held", "pending_id", "run_id", "action", "table", "op", "key", "rule_id", "reason"}
--   {"event": "approved" | "rejected" | "conflict", "pending_ids", "run_ids", "why"}
--
-- Privileges: the hold path (_hold, the rendered hold_N, _hold_reset) and the
-- decisions (approve*, reject*) are SECURITY DEFINER, so automations need no
-- grant on sidecar.pending and approvers none on the tables. add_rule,
-- drop_rule and _render_hold are deliberately SECURITY INVOKER, like
-- sidecar.track(): a rule's predicate is compiled into a definer function,
-- so only a role that may write sidecar.rules and create functions in the
-- sidecar schema (its owner) can add one. The predicate is validated by the
-- sidecar library (sidecar/rules.py, sqlglot) before it gets here; add_rule
-- also compiles it against the table and refuses the dollar-quote tag.

-- The transaction-local setting that counts a 'rows' rule's rows in the
-- current statement.
CREATE OR REPLACE FUNCTION sidecar._hold_counter(p_rule_id int)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_hold_counter$
    SELECT 'sidecar._hold_rows_' || p_rule_id
$_hold_counter$;

-- BEFORE STATEMENT trigger of a table with 'rows' rules: each tagged
-- statement starts counting from 0. Trigger arguments: the rules' ids.
--
-- Why a counter and not the statement's transition table: the rows must be
-- held BEFORE they land, and only row triggers can stop a row. So "more than
-- N rows in one statement" means: the first N rows of the statement land,
-- and every row past the N-th is held for review. No statement of a held
-- automation writes more than N rows unreviewed; the operator sees the rest
-- in the queue (approve or reject them as one action) and can undo the
-- first N with `sidecar undo RUN --action KEY`. A nested statement on the
-- same table (a trigger writing back to it) restarts the count: it can only
-- hold more, never less, than the outer statement alone would.
CREATE OR REPLACE FUNCTION sidecar._hold_reset()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_hold_reset$
DECLARE
    v_i int;
BEGIN
    -- Only tagged statements get here (the trigger's WHEN clause).
    FOR v_i IN 0 .. TG_NARGS - 1 LOOP
        PERFORM set_config(sidecar._hold_counter(TG_ARGV[v_i]::int), '0', true);
    END LOOP;
    RETURN NULL;
END
$_hold_reset$;

-- (Re)create a table's hold function and triggers from its active rules, or
-- remove them when it has none. Returns whether the table now holds.
CREATE OR REPLACE FUNCTION sidecar._render_hold(p_tracked_id int)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_render_hold$
DECLARE
    r_tracked  record;
    r_rule     record;
    v_func     text := format('sidecar.%I', 'hold_' || p_tracked_id);
    v_checks   text := '';
    v_check    text;
    v_counted  text[] := '{}';
    v_body     text;
    v_tagged   text := $w$pg_catalog.current_setting('sidecar.run_id', true) <> ''$w$;
    v_match    text;
    v_event    text;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    -- sidecar_hold_row is the one row trigger for all three events that
    -- earlier versions made.
    FOR v_event IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = r_tracked.relid AND NOT t.tgisinternal
          AND t.tgname IN ('sidecar_hold_row', 'sidecar_hold_insert', 'sidecar_hold_update',
                           'sidecar_hold_delete', 'sidecar_hold_statement')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_event, r_tracked.relid);
    END LOOP;
    IF NOT r_tracked.active
       OR NOT EXISTS (SELECT FROM sidecar.rules WHERE tracked_id = p_tracked_id AND active) THEN
        EXECUTE format('DROP FUNCTION IF EXISTS %s()', v_func);
        RETURN false;
    END IF;

    FOR r_rule IN
        SELECT * FROM sidecar.rules WHERE tracked_id = p_tracked_id AND active ORDER BY rule_id
    LOOP
        IF r_rule.kind = 'row' THEN
            v_check := format('    IF (%s) THEN v_rules := v_rules || %s; END IF;',
                              r_rule.predicate, r_rule.rule_id);
        ELSE
            v_check := format(
                E'v_rows := coalesce(nullif(current_setting(%1$L, true), %2$L), %3$L)::bigint + 1;\n'
                '    PERFORM set_config(%1$L, v_rows::text, true);\n'
                '    IF v_rows > %4$s THEN v_rules := v_rules || %5$s; END IF;',
                sidecar._hold_counter(r_rule.rule_id), '', '0', r_rule.max_rows, r_rule.rule_id);
            IF r_rule.predicate IS NOT NULL THEN
                v_check := format(E'    IF (%s) THEN\n        %s\n    END IF;', r_rule.predicate,
                                  replace(v_check, E'\n    ', E'\n        '));
            ELSE
                v_check := '    ' || v_check;
            END IF;
            v_counted := v_counted || r_rule.rule_id::text;
        END IF;
        v_checks := v_checks || format(E'    -- rule %s\n', r_rule.rule_id) || v_check || E'\n';
    END LOOP;

    -- A predicate is an expression inside the function's dollar quotes: the
    -- closing tag must not appear in it (sidecar/rules.py refuses it first).
    IF position('$hold$' IN v_checks) > 0 THEN
        RAISE EXCEPTION 'sidecar: a hold rule of % contains the text $hold$, which cannot be compiled', r_tracked.relid
            USING ERRCODE = 'SC020';
    END IF;

    SELECT body INTO STRICT v_body FROM sidecar.templates WHERE name = 'hold';
    v_body := replace(v_body, '@FUNC@', v_func);
    v_body := replace(v_body, '@TRACKED_ID@', p_tracked_id::text);
    v_body := replace(v_body, '@CHECKS@', rtrim(v_checks, E'\n'));
    EXECUTE v_body;

    -- Rules hold only tagged writes, and only rows that match a predicate
    -- (or that a --max-rows rule without one counts): the WHEN clauses say
    -- so, which spares every other row a call of the function (an untagged
    -- bulk UPDATE of a table with rules cost about twice the UPDATE, a tagged
    -- one 1.5x). One trigger per event: an INSERT trigger's WHEN cannot name
    -- OLD, nor a DELETE trigger's NEW. Where an event's WHEN cannot hold the
    -- predicates (such a reference, or a rule added by hand with what a WHEN
    -- does not allow), that event's rows all call the function, which
    -- evaluates the predicates with the missing row NULL, as it always did.
    IF NOT EXISTS (SELECT FROM sidecar.rules
                   WHERE tracked_id = p_tracked_id AND active AND predicate IS NULL) THEN
        v_match := (SELECT string_agg(format('(%s)', predicate), ' OR ' ORDER BY rule_id)
                    FROM sidecar.rules WHERE tracked_id = p_tracked_id AND active);
    END IF;
    FOREACH v_event IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        BEGIN
            -- The predicates first: a comparison of the row's values costs
            -- less than reading the setting.
            EXECUTE format('CREATE TRIGGER %I BEFORE %s ON %s FOR EACH ROW WHEN ((%s) AND %s) EXECUTE FUNCTION %s()',
                           'sidecar_hold_' || v_event, upper(v_event), r_tracked.relid,
                           coalesce(v_match, 'true'), v_tagged, v_func);
            -- A WHEN clause runs as the writer, the rule function as its
            -- owner: a predicate added by hand that calls a function (or an
            -- operator's) the public may not execute stays in the function.
            IF EXISTS (SELECT FROM pg_catalog.pg_trigger t
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_trigger'::regclass AND d.objid = t.oid
                       LEFT JOIN pg_catalog.pg_operator o
                              ON d.refclassid = 'pg_catalog.pg_operator'::regclass AND o.oid = d.refobjid
                       WHERE t.tgrelid = r_tracked.relid AND t.tgname = 'sidecar_hold_' || v_event
                         AND (d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid <> v_func::regproc
                              OR o.oid IS NOT NULL)
                         AND NOT has_function_privilege('public', coalesce(o.oprcode::oid, d.refobjid), 'EXECUTE')) THEN
                RAISE EXCEPTION USING ERRCODE = 'feature_not_supported';
            END IF;
        EXCEPTION WHEN invalid_object_definition OR feature_not_supported THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE %s ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s()',
                           'sidecar_hold_' || v_event, upper(v_event), r_tracked.relid, v_tagged, v_func);
        END;
    END LOOP;
    IF cardinality(v_counted) > 0 THEN
        EXECUTE format('CREATE TRIGGER sidecar_hold_statement BEFORE INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH STATEMENT WHEN (%s) EXECUTE FUNCTION sidecar._hold_reset(%s)',
                       r_tracked.relid, v_tagged,
                       (SELECT string_agg(format('%L', c), ', ') FROM unnest(v_counted) AS c));
    END IF;
    RETURN true;
END
$_render_hold$;

-- Add a hold rule to a tracked table and compile it into the table's hold
-- trigger. p_predicate is an expression over NEW."col" / OLD."col" as
-- validated by the sidecar library. Returns the rule id.
CREATE OR REPLACE FUNCTION sidecar.add_rule(p_table regclass, p_predicate text, p_reason text,
                                            p_automation text DEFAULT NULL, p_max_rows int DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $add_rule$
DECLARE
    v_tracked  int;
    v_rule     int;
BEGIN
    SELECT tracked_id INTO v_tracked FROM sidecar.tracked WHERE relid = p_table AND active;
    IF v_tracked IS NULL THEN
        RAISE EXCEPTION 'sidecar: table % is not tracked, so its writes cannot be held', p_table
            USING ERRCODE = 'SC020', HINT = format('Track it first: sidecar track %s', p_table);
    END IF;
    IF coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'sidecar: a hold rule needs a reason: reviewers read it next to each held change'
            USING ERRCODE = 'SC020';
    END IF;
    IF p_predicate IS NULL AND p_max_rows IS NULL THEN
        RAISE EXCEPTION 'sidecar: a hold rule needs a predicate (--when) or a row limit (--max-rows)'
            USING ERRCODE = 'SC020';
    END IF;
    IF p_max_rows < 0 THEN
        RAISE EXCEPTION 'sidecar: --max-rows must be 0 or more, not %', p_max_rows USING ERRCODE = 'SC020';
    END IF;
    IF p_automation IS NOT NULL AND btrim(p_automation) = '' THEN
        RAISE EXCEPTION 'sidecar: --automation needs a name' USING ERRCODE = 'SC020';
    END IF;
    IF p_predicate IS NOT NULL THEN
        -- Compile the predicate against the table's row type without running
        -- it: unknown columns, type errors and non-boolean results fail here,
        -- not in an automation's write.
        BEGIN
            EXECUTE format('SELECT CASE WHEN (%s) THEN 1 END FROM %s AS new, %s AS old WHERE false',
                           p_predicate, p_table, p_table);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'sidecar: predicate does not compile against %: %', p_table, SQLERRM
                USING ERRCODE = 'SC020';
        END;
    END IF;

    INSERT INTO sidecar.rules (tracked_id, kind, predicate, max_rows, automation, reason)
    VALUES (v_tracked, CASE WHEN p_max_rows IS NULL THEN 'row' ELSE 'rows' END, p_predicate, p_max_rows,
            nullif(btrim(p_automation), ''), p_reason)
    RETURNING rule_id INTO v_rule;
    PERFORM sidecar._render_hold(v_tracked);
    PERFORM sidecar._log_event('rule', NULL,
        format('Added hold rule %s on %s: %s', v_rule, sidecar._qualname(p_table), p_reason),
        jsonb_build_object('rule_id', v_rule, 'table', sidecar._qualname(p_table), 'predicate', p_predicate,
                           'max_rows', p_max_rows, 'automation', p_automation));
    RETURN v_rule;
END
$add_rule$;

-- Drop a hold rule: writes stop being held by it at once. Items it held stay
-- in the queue. Returns the table it was on.
CREATE OR REPLACE FUNCTION sidecar.drop_rule(p_rule_id int)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $drop_rule$
DECLARE
    r_rule record;
BEGIN
    SELECT r.*, sidecar._qualname(t.relid) AS table_name INTO r_rule
    FROM sidecar.rules r JOIN sidecar.tracked t USING (tracked_id)
    WHERE r.rule_id = p_rule_id AND r.active
    FOR UPDATE OF r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sidecar: there is no active hold rule %', p_rule_id
            USING ERRCODE = 'SC020', HINT = 'sidecar rule list shows the rules.';
    END IF;
    UPDATE sidecar.rules SET active = false WHERE rule_id = p_rule_id;
    PERFORM sidecar._render_hold(r_rule.tracked_id);
    PERFORM sidecar._log_event('rule', NULL,
        format('Dropped hold rule %s on %s (%s)', p_rule_id, r_rule.table_name, r_rule.reason),
        jsonb_build_object('rule_id', p_rule_id, 'table', r_rule.table_name));
    RETURN r_rule.table_name;
END
$drop_rule$;

-- Called by a hold trigger for a tagged row that matched rules p_rules (in
-- rule order): true when the row is held (recorded in sidecar.pending, the
-- trigger skips it), false when it may land. Nothing here is read from a
-- setting the session could forge, except the run id the write is tagged
-- with anyway.
CREATE OR REPLACE FUNCTION sidecar._hold(p_tracked_id int, p_rules int[], p_op text, p_old jsonb, p_new jsonb)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_hold$
DECLARE
    v_approving  text := coalesce(current_setting('sidecar._approving', true), '');
    v_run        uuid;
    r_run        record;
    r_rule       record;
    v_action_key text;
    v_action     bigint;
    v_key        jsonb;
    v_table      text;
    v_pending    bigint;
    v_relid      regclass;
    v_match      text;
    v_exists     boolean;
BEGIN
    -- An approval applies what an operator reviewed: sidecar._approve marks
    -- the item with this transaction's id, which no session can forge.
    IF v_approving ~ '^[0-9]{1,18}$' AND EXISTS (
        SELECT FROM sidecar.pending WHERE pending_id = v_approving::bigint AND applied_txid = txid_current()) THEN
        RETURN false;
    END IF;
    -- The run and action, registered on first sight: when every row of a
    -- statement is held, capture never sees the statement.
    r_run := sidecar._tag();
    -- An undo run is the operator's repair: never held.
    IF r_run.is_undo THEN
        RETURN false;
    END IF;

    SELECT r.rule_id, r.reason INTO r_rule
    FROM sidecar.rules r
    WHERE r.rule_id = ANY (p_rules) AND r.active AND r.tracked_id = p_tracked_id
      AND (r.automation IS NULL OR r.automation = r_run.automation)
    ORDER BY array_position(p_rules, r.rule_id)
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;

    -- The row's key, its table, and the key's match of a row k to a row t.
    SELECT jsonb_object_agg(c, coalesce(p_old, p_new) -> c::text ORDER BY o), sidecar._qualname(t.relid), t.relid,
           string_agg(format('t.%1$I = k.%1$I', c), ' AND ')
      INTO v_key, v_table, v_relid, v_match
    FROM sidecar.tracked t CROSS JOIN LATERAL unnest(t.pk_columns) WITH ORDINALITY AS k(c, o)
    WHERE t.tracked_id = p_tracked_id
    GROUP BY t.relid;

    -- An INSERT of a key the table already has does not add a row: ON
    -- CONFLICT DO UPDATE (and MERGE) update it instead, and their UPDATE
    -- trigger holds that change; DO NOTHING leaves it; a plain INSERT fails
    -- on the key. Held as an insert, it would do what the statement does not,
    -- and its approval could never apply. So it goes on unheld.
    IF p_op = 'INSERT' THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM %1$s t, jsonb_populate_record(NULL::%1$s, $1) k WHERE %2$s)',
                       v_relid, v_match)
            INTO v_exists USING p_new;
        IF v_exists THEN
            RETURN false;
        END IF;
    END IF;

    -- The gate holds for held writes too: a paused automation's write fails.
    PERFORM sidecar._gate(r_run.automation, p_tracked_id, 'Nothing of this statement was written.');
    v_run := r_run.run_id;
    v_action := r_run.action_id;
    v_action_key := coalesce(nullif(current_setting('sidecar.action', true), ''), 'tx:' || txid_current());

    -- A foreign key's action (ON DELETE CASCADE, SET NULL, ON UPDATE CASCADE)
    -- runs inside the write that caused it, and PostgreSQL lets a BEFORE
    -- trigger skip it: held, the row would be left referring to a parent that
    -- is gone. That cannot wait for review, so the whole statement is refused.
    IF p_op <> 'INSERT' AND pg_trigger_depth() > 1 AND sidecar._foreign_key_action(v_relid, p_op, p_old) THEN
        RAISE EXCEPTION 'sidecar: % % is changed by a foreign key''s action (a % of the row it refers to), and hold rule % holds it: %',
                        v_table, v_key, CASE p_op WHEN 'DELETE' THEN 'delete' ELSE 'delete or key change' END,
                        r_rule.rule_id, r_rule.reason
            USING ERRCODE = 'SC023',
                  HINT = 'Nothing of this statement was written: a foreign key''s action cannot wait for review. '
                         'A person can make the change outside any run, or the rule can be narrowed (sidecar rule list).';
    END IF;

    INSERT INTO sidecar.pending (run_id, action_id, tracked_id, op, key, old_row, new_row, rule_id, reason)
    VALUES (v_run, v_action, p_tracked_id, left(p_op, 1), v_key, p_old, p_new, r_rule.rule_id, r_rule.reason)
    RETURNING pending_id INTO v_pending;

    PERFORM pg_notify('sidecar', jsonb_build_object(
        'event', 'held', 'pending_id', v_pending, 'run_id', v_run, 'action', left(v_action_key, 200),
        'table', v_table, 'op', left(p_op, 1),
        'key', CASE WHEN length(v_key::text) <= 1000 THEN v_key END,
        'rule_id', r_rule.rule_id, 'reason', left(r_rule.reason, 200))::text);
    RETURN true;
END
$_hold$;

-- Whether a change of a row of p_relid (p_op: DELETE or UPDATE, p_old its
-- image) is a foreign key's action: the table has a foreign key whose action
-- makes such a change, and the row it referred to is gone. (A parent this
-- role cannot read is taken to be gone: refusing is the safe side.)
CREATE OR REPLACE FUNCTION sidecar._foreign_key_action(p_relid regclass, p_op text, p_old jsonb)
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_foreign_key_action$
DECLARE
    r_fk    record;
    v_gone  boolean;
BEGIN
    FOR r_fk IN
        SELECT con.confrelid::regclass AS parent,
               string_agg(format('p.%I = o.%I', pa.attname, ca.attname), ' AND ' ORDER BY k.ord) AS match,
               string_agg(format('o.%I IS NOT NULL', ca.attname), ' AND ' ORDER BY k.ord) AS referring
        FROM pg_catalog.pg_constraint con
        CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(child_att, parent_att, ord)
        JOIN pg_catalog.pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_att
        JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_att
        WHERE con.conrelid = p_relid AND con.contype = 'f'
          AND CASE WHEN p_op = 'DELETE' THEN con.confdeltype = 'c'
                   ELSE con.confdeltype IN ('n', 'd') OR con.confupdtype IN ('c', 'n', 'd') END
        GROUP BY con.oid, con.confrelid
    LOOP
        IF NOT has_table_privilege(r_fk.parent, 'SELECT') THEN
            RETURN true;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT FROM jsonb_populate_record(NULL::%s, $1) o WHERE %s '
                       'AND NOT EXISTS (SELECT FROM %s p WHERE %s))', p_relid, r_fk.referring, r_fk.parent, r_fk.match)
            INTO v_gone USING p_old;
        IF v_gone THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$_foreign_key_action$;

-- Apply one held item (in sidecar._approve, with the original run and action
-- set): NULL when applied, else the conflict as JSON
-- {"pending_id", "kind": "exists"|"gone"|"changed"|"taken", "columns", "now", "key", "detail"}
-- (taken: another row holds a value of a unique key the change needs).
--
-- The write is made with the rights of the table's owner, through the table's
-- undo function (fn_undo.sql), so an approver needs no right on the table and
-- sidecar's owner need not own it; a table tracked before those functions
-- existed is written with sidecar's owner's rights, as it always was.
CREATE OR REPLACE FUNCTION sidecar._apply_pending(p_pending_id bigint)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_apply_pending$
DECLARE
    v_tracked_id int;
    v_result     jsonb;
BEGIN
    SELECT p.tracked_id INTO STRICT v_tracked_id FROM sidecar.pending p WHERE p.pending_id = p_pending_id;
    IF to_regprocedure(format('sidecar.%I(text, uuid, jsonb)', 'undo_' || v_tracked_id)) IS NULL THEN
        RETURN sidecar._apply_pending_here(p_pending_id);
    END IF;
    -- The undo function returns a count: the conflict, if any, comes back in a setting.
    PERFORM set_config('sidecar._approve_conflict', '', true);
    EXECUTE format('SELECT sidecar.%I($1, NULL, $2)', 'undo_' || v_tracked_id)
        USING 'apply_pending', jsonb_build_object('pending_id', p_pending_id);
    v_result := nullif(current_setting('sidecar._approve_conflict', true), '')::jsonb;
    PERFORM set_config('sidecar._approve_conflict', '', true);
    RETURN v_result;
END
$_apply_pending$;

-- The body of _apply_pending, with the rights of its caller: sidecar's owner,
-- or the table's owner through the table's undo function. Only for an item
-- that sidecar._approve is applying in this very transaction (applied_txid,
-- which only it sets), so no caller applies a held write undecided.
CREATE OR REPLACE FUNCTION sidecar._apply_pending_here(p_pending_id bigint)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_apply_pending_here$
DECLARE
    r_item     record;
    v_match    text;
    v_compare  text;
    v_cols     text;
    v_vals     text;
    v_set      text;
    v_now      jsonb;
    v_changed  text[];
    v_rows     bigint;
    v_key_name text;
    v_detail   text;
BEGIN
    SELECT p.*, t.relid, t.pk_columns INTO STRICT r_item
    FROM sidecar.pending p JOIN sidecar.tracked t USING (tracked_id)
    WHERE p.pending_id = p_pending_id;
    IF r_item.applied_txid IS DISTINCT FROM txid_current() OR r_item.status NOT IN ('pending', 'conflict') THEN
        RAISE EXCEPTION 'sidecar: held change % is not being approved in this transaction', p_pending_id
            USING ERRCODE = 'SC021', HINT = 'Approve it with sidecar approve.';
    END IF;

    -- Key values and images are typed by the table's own row type: text
    -- forms (time zones, float digits) of the held session do not matter.
    SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') INTO v_match FROM unnest(r_item.pk_columns) AS c;

    IF r_item.op = 'I' THEN
        EXECUTE format('SELECT to_jsonb(t) FROM %1$s t, jsonb_populate_record(NULL::%1$s, $1) k WHERE %2$s '
                       'FOR UPDATE OF t', r_item.relid, v_match)
            INTO v_now USING r_item.key;
        IF v_now IS NOT NULL THEN
            RETURN jsonb_build_object('pending_id', p_pending_id, 'kind', 'exists', 'now', v_now);
        END IF;
    ELSE
        -- Compared as text within this one session, so types without an
        -- equality operator (json, point) compare too.
        SELECT coalesce(string_agg(format('CASE WHEN t.%1$I::text IS DISTINCT FROM o.%1$I::text THEN %1$L END',
                                          a.attname), ', ' ORDER BY a.attnum), '')
          INTO v_compare
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = r_item.relid AND a.attnum > 0 AND NOT a.attisdropped AND r_item.old_row ? a.attname;
        EXECUTE format('SELECT to_jsonb(t), array_remove(ARRAY[%3$s]::text[], NULL) '
                       'FROM %1$s t, jsonb_populate_record(NULL::%1$s, $1) k, jsonb_populate_record(NULL::%1$s, $2) o '
                       'WHERE %2$s FOR UPDATE OF t', r_item.relid, v_match, v_compare)
            INTO v_now, v_changed USING r_item.key, r_item.old_row;
        IF v_now IS NULL THEN
            RETURN jsonb_build_object('pending_id', p_pending_id, 'kind', 'gone');
        END IF;
        IF cardinality(v_changed) > 0 THEN
            RETURN jsonb_build_object('pending_id', p_pending_id, 'kind', 'changed', 'columns', to_jsonb(v_changed),
                                      'now', (SELECT jsonb_object_agg(c, v_now -> c) FROM unnest(v_changed) AS c));
        END IF;
    END IF;

    -- Generated columns are the table's to compute; a column added since the
    -- row was held is left to its default (insert) or as it is (update).
    IF r_item.op = 'I' THEN
        SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum),
               string_agg(format('n.%I', a.attname), ', ' ORDER BY a.attnum)
          INTO v_cols, v_vals
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = r_item.relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          AND r_item.new_row ? a.attname;
        BEGIN
            EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_populate_record(NULL::%s, $1) n',
                           r_item.relid, v_cols, v_vals, r_item.relid)
                USING r_item.new_row;
        EXCEPTION WHEN unique_violation OR exclusion_violation THEN
            GET STACKED DIAGNOSTICS v_key_name = CONSTRAINT_NAME, v_detail = PG_EXCEPTION_DETAIL;
            -- Its key added since, or another key's value taken by a row since.
            RETURN jsonb_build_object('pending_id', p_pending_id,
                                      'kind', CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_constraint c
                                                                WHERE c.conrelid = r_item.relid AND c.contype = 'p'
                                                                  AND c.conname = v_key_name)
                                                   THEN 'exists' ELSE 'taken' END,
                                      'key', v_key_name, 'detail', v_detail);
        END;
    ELSIF r_item.op = 'U' THEN
        -- GENERATED ALWAYS identity columns cannot be set by an UPDATE (nor
        -- could the automation's statement have changed them).
        SELECT string_agg(format('%1$I = n.%1$I', a.attname), ', ' ORDER BY a.attnum) INTO v_set
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = r_item.relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          AND a.attidentity <> 'a' AND r_item.new_row ? a.attname;
        BEGIN
            EXECUTE format('UPDATE %1$s t SET %2$s FROM jsonb_populate_record(NULL::%1$s, $1) n, '
                           'jsonb_populate_record(NULL::%1$s, $2) k WHERE %3$s',
                           r_item.relid, v_set, v_match)
                USING r_item.new_row, r_item.key;
        EXCEPTION WHEN unique_violation OR exclusion_violation THEN
            GET STACKED DIAGNOSTICS v_key_name = CONSTRAINT_NAME, v_detail = PG_EXCEPTION_DETAIL;
            RETURN jsonb_build_object('pending_id', p_pending_id, 'kind', 'taken',
                                      'key', v_key_name, 'detail', v_detail);
        END;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> 1 THEN
            RETURN jsonb_build_object('pending_id', p_pending_id, 'kind', 'gone');
        END IF;
    ELSE
        EXECUTE format('DELETE FROM %1$s t USING jsonb_populate_record(NULL::%1$s, $1) k WHERE %2$s',
                       r_item.relid, v_match)
            USING r_item.key;
    END IF;
    RETURN NULL;
END
$_apply_pending_here$;

-- Lock the open items p_ids for a decision; refuses unknown or decided ones.
CREATE OR REPLACE FUNCTION sidecar._lock_open(p_ids bigint[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_lock_open$
DECLARE
    r_item record;
    v_found int := 0;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RAISE EXCEPTION 'sidecar: no held change to decide on' USING ERRCODE = 'SC021';
    END IF;
    FOR r_item IN
        SELECT pending_id, status, decided_by, decided_at FROM sidecar.pending
        WHERE pending_id = ANY (p_ids) ORDER BY pending_id FOR UPDATE
    LOOP
        v_found := v_found + 1;
        IF r_item.status NOT IN ('pending', 'conflict') THEN
            RAISE EXCEPTION 'sidecar: held change % was already % by % at %', r_item.pending_id, r_item.status,
                            r_item.decided_by, to_char(r_item.decided_at, 'YYYY-MM-DD HH24:MI:SS TZ')
                USING ERRCODE = 'SC021', HINT = 'sidecar queue lists the changes still waiting.';
        END IF;
    END LOOP;
    IF v_found < cardinality(p_ids) THEN
        RAISE EXCEPTION 'sidecar: there is no held change %',
                        (SELECT min(i) FROM unnest(p_ids) AS i
                         WHERE NOT EXISTS (SELECT FROM sidecar.pending p WHERE p.pending_id = i))
            USING ERRCODE = 'SC021', HINT = 'sidecar queue lists the held changes and their ids.';
    END IF;
END
$_lock_open$;

-- The open items of one action of a run, in the order they were held.
CREATE OR REPLACE FUNCTION sidecar._open_of_action(p_run uuid, p_action text)
RETURNS bigint[] LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_open_of_action$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(p.pending_id ORDER BY p.pending_id) INTO v_ids
    FROM sidecar.pending p JOIN sidecar.actions a USING (action_id)
    WHERE p.run_id = p_run AND a.key = p_action AND p.status IN ('pending', 'conflict');
    IF v_ids IS NULL THEN
        RAISE EXCEPTION 'sidecar: action % of run % has no held change waiting', quote_literal(p_action), p_run
            USING ERRCODE = 'SC021', HINT = 'sidecar queue lists the held changes by run and action.';
    END IF;
    RETURN v_ids;
END
$_open_of_action$;

-- Approve held items together: all are applied, each under its original run
-- and action (so `sidecar undo` of that run reverses it), or none is. Returns
-- {"applied": [ids], "conflicts": [...]}; items that conflict are marked
-- 'conflict' and stay in the queue.
CREATE OR REPLACE FUNCTION sidecar._approve(p_ids bigint[], p_why text, p_what text)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_approve$
DECLARE
    v_run_was     text := coalesce(current_setting('sidecar.run_id', true), '');
    v_action_was  text := coalesce(current_setting('sidecar.action', true), '');
    r_item        record;
    v_conflict    jsonb;
    v_conflicts   jsonb := '[]';
    v_runs        jsonb;
BEGIN
    PERFORM sidecar._lock_open(p_ids);
    SELECT jsonb_agg(DISTINCT run_id) INTO v_runs FROM sidecar.pending WHERE pending_id = ANY (p_ids);
    BEGIN
        FOR r_item IN
            SELECT p.pending_id, p.run_id, a.key AS action_key
            FROM sidecar.pending p JOIN sidecar.actions a USING (action_id)
            WHERE p.pending_id = ANY (p_ids) ORDER BY p.pending_id
        LOOP
            UPDATE sidecar.pending SET applied_txid = txid_current() WHERE pending_id = r_item.pending_id;
            PERFORM set_config('sidecar._approving', r_item.pending_id::text, true);
            PERFORM set_config('sidecar.run_id', r_item.run_id::text, true);
            PERFORM set_config('sidecar.action', r_item.action_key, true);
            v_conflict := sidecar._apply_pending(r_item.pending_id);
            IF v_conflict IS NOT NULL THEN
                v_conflicts := v_conflicts || v_conflict;
            END IF;
        END LOOP;
        IF jsonb_array_length(v_conflicts) > 0 THEN
            RAISE EXCEPTION 'sidecar: approval conflict' USING ERRCODE = 'SC022';
        END IF;
    EXCEPTION WHEN SQLSTATE 'SC022' THEN
        -- Everything the block did is rolled back (settings included).
        UPDATE sidecar.pending SET status = 'conflict'
        WHERE pending_id IN (SELECT (c ->> 'pending_id')::bigint FROM jsonb_array_elements(v_conflicts) AS c);
        PERFORM sidecar._log_event('approve-refused',
            CASE WHEN jsonb_array_length(v_runs) = 1 THEN (v_runs ->> 0)::uuid END,
            format('Approval of %s refused: %s changed since held; nothing was applied', p_what,
                   CASE jsonb_array_length(v_conflicts) WHEN 1 THEN 'the row' ELSE jsonb_array_length(v_conflicts) || ' rows' END),
            jsonb_build_object('pending_ids', to_jsonb(p_ids), 'conflicts', v_conflicts, 'why', p_why));
        PERFORM pg_notify('sidecar', jsonb_build_object('event', 'conflict', 'pending_ids', to_jsonb(p_ids),
                                                        'run_ids', v_runs)::text);
        RETURN jsonb_build_object('applied', '[]'::jsonb, 'conflicts', v_conflicts);
    END;

    PERFORM set_config('sidecar._approving', '', true);
    PERFORM set_config('sidecar.run_id', v_run_was, true);
    PERFORM set_config('sidecar.action', v_action_was, true);
    UPDATE sidecar.pending
    SET status = 'approved', decided_by = session_user, decided_at = now(), decided_why = p_why
    WHERE pending_id = ANY (p_ids);
    PERFORM sidecar._log_event('approve',
        CASE WHEN jsonb_array_length(v_runs) = 1 THEN (v_runs ->> 0)::uuid END,
        format('Approved %s%s', p_what, coalesce(': ' || nullif(btrim(p_why), ''), '')),
        jsonb_build_object('pending_ids', to_jsonb(p_ids), 'why', p_why));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'approved', 'pending_ids', to_jsonb(p_ids),
                                                    'run_ids', v_runs, 'why', left(p_why, 200))::text);
    RETURN jsonb_build_object('applied', to_jsonb(p_ids), 'conflicts', '[]'::jsonb);
END
$_approve$;

CREATE OR REPLACE FUNCTION sidecar._reject(p_ids bigint[], p_why text, p_what text)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_reject$
DECLARE
    v_runs jsonb;
BEGIN
    IF coalesce(btrim(p_why), '') = '' THEN
        RAISE EXCEPTION 'sidecar: a rejection needs a reason, so that the automation''s owner knows why'
            USING ERRCODE = 'SC021';
    END IF;
    PERFORM sidecar._lock_open(p_ids);
    SELECT jsonb_agg(DISTINCT run_id) INTO v_runs FROM sidecar.pending WHERE pending_id = ANY (p_ids);
    UPDATE sidecar.pending
    SET status = 'rejected', decided_by = session_user, decided_at = now(), decided_why = p_why
    WHERE pending_id = ANY (p_ids);
    PERFORM sidecar._log_event('reject',
        CASE WHEN jsonb_array_length(v_runs) = 1 THEN (v_runs ->> 0)::uuid END,
        format('Rejected %s: %s', p_what, p_why),
        jsonb_build_object('pending_ids', to_jsonb(p_ids), 'why', p_why));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'rejected', 'pending_ids', to_jsonb(p_ids),
                                                    'run_ids', v_runs, 'why', left(p_why, 200))::text);
    RETURN jsonb_build_object('rejected', to_jsonb(p_ids));
END
$_reject$;

-- The held changes still open in what an undo of p_run covers: p_scope is
-- the undo's {"actions": [keys], "rows": [{"table", "key"}]} (neither: the
-- whole run), as sidecar._undo_begin records it in the undo run's meta.
CREATE OR REPLACE FUNCTION sidecar._held_in_scope(p_run uuid, p_scope jsonb)
RETURNS bigint[] LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_held_in_scope$
    SELECT array_agg(p.pending_id ORDER BY p.pending_id)
    FROM sidecar.pending p
    JOIN sidecar.tracked t ON t.tracked_id = p.tracked_id
    LEFT JOIN sidecar.actions a ON a.action_id = p.action_id
    WHERE p.run_id = p_run AND p.status IN ('pending', 'conflict')
      AND (jsonb_array_length(coalesce(p_scope -> 'actions', '[]')) = 0
           OR a.key IN (SELECT jsonb_array_elements_text(p_scope -> 'actions')))
      AND (jsonb_array_length(coalesce(p_scope -> 'rows', '[]')) = 0
           OR EXISTS (SELECT FROM jsonb_array_elements(p_scope -> 'rows') AS r(row)
                      WHERE r.row ->> 'table' = sidecar._qualname(t.relid)
                        AND NOT EXISTS (SELECT FROM jsonb_object_keys(r.row -> 'key') AS k(col)
                                        WHERE (p.key ->> k.col) IS DISTINCT FROM (r.row -> 'key' ->> k.col))))
$_held_in_scope$;

-- Reject the held changes still open in what an undo (p_undo, in its own
-- transaction) undid: the run, its actions or its rows. Approved later, they
-- would land after the undo, under a run that reads as undone. Returns how
-- many were rejected.
CREATE OR REPLACE FUNCTION sidecar._reject_undone(p_undo uuid)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_reject_undone$
DECLARE
    r_undo  record;
    v_ids   bigint[];
BEGIN
    SELECT * INTO STRICT r_undo FROM sidecar.runs WHERE run_id = p_undo AND undo_of IS NOT NULL;
    v_ids := sidecar._held_in_scope(r_undo.undo_of, r_undo.meta);
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM sidecar._reject(v_ids, format('what it belongs to was undone (undo run %s)', p_undo),
                            format('%s held change(s) of run %s', cardinality(v_ids), r_undo.undo_of));
    RETURN cardinality(v_ids);
END
$_reject_undone$;

-- A held item as the event trail names it:
-- held change 12 (update of public.invoices {"id": 17}; rule: refund over limit).
CREATE OR REPLACE FUNCTION sidecar._pending_label(p_pending_id bigint)
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_pending_label$
    -- Named as people read it: held change 4: add refund #1 (ticket_id 41, amount 900.00; rule: ...).
    SELECT format('held change %s: %s %s%s (%srule: %s)', p.pending_id,
                  CASE p.op WHEN 'I' THEN 'add' WHEN 'U' THEN 'change' ELSE 'delete' END,
                  coalesce(t.display_name, sidecar._qualname(t.relid)),
                  CASE WHEN t.label_column IS NOT NULL
                            AND coalesce(p.new_row, p.old_row) ->> t.label_column::text IS NOT NULL
                       THEN format(' "%s"', coalesce(p.new_row, p.old_row) ->> t.label_column::text) ELSE '' END
                  || CASE WHEN (SELECT count(*) FROM jsonb_object_keys(p.key)) = 1
                          THEN format(' #%s', (SELECT v #>> '{}' FROM jsonb_each(p.key) AS e(k, v)))
                          ELSE format(' %s', p.key) END,
                  coalesce((SELECT string_agg(format('%s %s', e.k, e.v #>> '{}'), ', ' ORDER BY e.k)
                            FROM jsonb_each(coalesce(p.new_row, p.old_row)) AS e(k, v)
                            WHERE NOT p.key ? e.k AND e.v <> 'null'::jsonb
                              AND (p.op <> 'U' OR e.v IS DISTINCT FROM p.old_row -> e.k)) || '; ', ''),
                  p.reason)
    FROM sidecar.pending p JOIN sidecar.tracked t USING (tracked_id)
    WHERE p.pending_id = p_pending_id
$_pending_label$;

-- What an operator calls. approve* return {"applied": [...], "conflicts": [...]}.
CREATE OR REPLACE FUNCTION sidecar.approve(p_pending_id bigint, p_why text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $approve$
    SELECT sidecar._approve(ARRAY[p_pending_id], p_why,
                            coalesce(sidecar._pending_label(p_pending_id), format('held change %s', p_pending_id)))
$approve$;

CREATE OR REPLACE FUNCTION sidecar.approve_action(p_run uuid, p_action text, p_why text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $approve_action$
    SELECT sidecar._approve(sidecar._open_of_action(p_run, p_action), p_why,
                            format('the held changes of action %s', p_action))
$approve_action$;

CREATE OR REPLACE FUNCTION sidecar.reject(p_pending_id bigint, p_why text)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reject$
    SELECT sidecar._reject(ARRAY[p_pending_id], p_why,
                           coalesce(sidecar._pending_label(p_pending_id), format('held change %s', p_pending_id)))
$reject$;

CREATE OR REPLACE FUNCTION sidecar.reject_action(p_run uuid, p_action text, p_why text)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reject_action$
    SELECT sidecar._reject(sidecar._open_of_action(p_run, p_action), p_why,
                           format('the held changes of action %s', p_action))
$reject_action$;
