-- Steps: what automations call around each unit of work; reruns use them to
-- redo only what failed. Re-applied by `sidecar install` when this file changes.
--
-- SQLSTATEs: SC005 no run active; SC007 step misuse (no step open, bad plan);
-- SC012 step conflict (one key for two pieces of work).
--
--   BEGIN;
--   SELECT sidecar.begin_step('note:ticket-42');   -- false: already done, skip it
--   INSERT INTO billing_notes ...;
--   SELECT sidecar.end_step();
--   COMMIT;

CREATE OR REPLACE FUNCTION sidecar._current_run()
RETURNS uuid LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_current_run$
DECLARE
    v_run text := coalesce(current_setting('sidecar.run_id', true), '');
BEGIN
    IF v_run = '' THEN
        RAISE EXCEPTION 'sidecar: no run is active in this session' USING ERRCODE = 'SC005',
              HINT = 'Call sidecar.start_run() or SET sidecar.run_id first.';
    END IF;
    RETURN v_run::uuid;
END
$_current_run$;

-- A fingerprint of one row (NULL when the row does not exist), for the rerun check.
CREATE OR REPLACE FUNCTION sidecar._row_fingerprint(p_table regclass, p_key jsonb)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_row_fingerprint$
DECLARE
    v_pk   name[];
    v_cond text;
    v_hash text;
BEGIN
    SELECT pk_columns INTO v_pk FROM sidecar.tracked WHERE relid = p_table;
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'sidecar: step target % is not a tracked table', p_table USING ERRCODE = 'SC007';
    END IF;
    -- Key values are typed by the table's own row type.
    SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') INTO v_cond FROM unnest(v_pk) AS c;
    EXECUTE format('SELECT md5(t::text) FROM %s t, jsonb_populate_record(NULL::%s, $1) k WHERE %s',
                   p_table, p_table, v_cond)
        INTO v_hash USING p_key;
    RETURN v_hash;
END
$_row_fingerprint$;

-- Declare the steps of this run: a JSON array of keys, or of objects
-- {"key": "note:ticket-42", "touches": [{"table": "billing_notes", "key": {"id": 981}}]}.
CREATE OR REPLACE FUNCTION sidecar.plan_steps(p_steps jsonb)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $plan_steps$
DECLARE
    v_run     uuid := sidecar._current_run();
    r_step    record;
    v_key     text;
    v_targets jsonb;
    v_count   int := 0;
BEGIN
    IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'sidecar: plan_steps takes a JSON array of step keys or {"key", "touches"} objects'
            USING ERRCODE = 'SC007';
    END IF;
    FOR r_step IN SELECT value, ordinality FROM jsonb_array_elements(p_steps) WITH ORDINALITY LOOP
        IF jsonb_typeof(r_step.value) = 'string' THEN
            v_key := r_step.value #>> '{}';
            v_targets := '[]';
        ELSE
            v_key := r_step.value ->> 'key';
            SELECT coalesce(jsonb_agg(t.value || jsonb_build_object(
                       'fingerprint', sidecar._row_fingerprint((t.value ->> 'table')::regclass, t.value -> 'key'),
                       'table', sidecar._qualname((t.value ->> 'table')::regclass))), '[]')
              INTO v_targets
            FROM jsonb_array_elements(coalesce(r_step.value -> 'touches', '[]')) t;
        END IF;
        IF coalesce(v_key, '') = '' THEN
            RAISE EXCEPTION 'sidecar: step % has no key', r_step.ordinality USING ERRCODE = 'SC007';
        END IF;
        IF EXISTS (SELECT FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS o(value, n)
                   WHERE o.n < r_step.ordinality
                     AND coalesce(o.value ->> 'key', CASE WHEN jsonb_typeof(o.value) = 'string'
                                                           THEN o.value #>> '{}' END) = v_key) THEN
            RAISE EXCEPTION 'sidecar: step key % appears twice in the plan: the second would be skipped',
                            quote_literal(v_key)
                USING ERRCODE = 'SC012', DETAIL = jsonb_build_object('key', v_key)::text,
                      HINT = 'Give each piece of work its own key (or plan the key once if it is the same work).';
        END IF;
        INSERT INTO sidecar.step_plan (run_id, key, ord, targets)
        VALUES (v_run, v_key, r_step.ordinality, v_targets)
        ON CONFLICT (run_id, key) DO UPDATE SET ord = EXCLUDED.ord, targets = EXCLUDED.targets;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$plan_steps$;

-- Signatures of earlier releases (an upgrade must not leave overloads behind).
DROP FUNCTION IF EXISTS sidecar.begin_step(text);
DROP FUNCTION IF EXISTS sidecar.fail_step(text, text);

-- Open a step in this transaction. False: the step is already done in the
-- run's lineage (or a rerun blocked it) and must be skipped. Concurrent
-- attempts of one step wait for each other here; the loser then sees it done.
-- A key this very run completed already is refused (SC012): two pieces of
-- work mapped to one key by mistake would skip the second in silence.
-- p_same_work => true says it is the same work again: then it is skipped.
CREATE OR REPLACE FUNCTION sidecar.begin_step(p_key text, p_same_work boolean DEFAULT false)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $begin_step$
DECLARE
    v_run      uuid := sidecar._current_run();
    v_lineage  uuid;
    r_done     record;
    v_blocked  text;
BEGIN
    IF coalesce(p_key, '') = '' THEN
        RAISE EXCEPTION 'sidecar: a step needs a key, e.g. ''note:ticket-42''' USING ERRCODE = 'SC007';
    END IF;
    SELECT lineage INTO v_lineage FROM sidecar.runs WHERE run_id = v_run;
    IF v_lineage IS NULL THEN
        PERFORM sidecar._register_run(v_run);  -- a run id set by hand and not seen yet
        v_lineage := v_run;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('sidecar.step:' || v_lineage), hashtext(p_key));
    SELECT s.run_id, s.completed_at INTO r_done FROM sidecar.steps s WHERE s.lineage = v_lineage AND s.key = p_key;
    IF FOUND THEN
        IF r_done.run_id = v_run AND NOT coalesce(p_same_work, false) THEN
            RAISE EXCEPTION 'sidecar: step % was already done by this run at %; a second piece of work under one key would be skipped',
                            quote_literal(p_key), to_char(r_done.completed_at, 'YYYY-MM-DD HH24:MI:SS TZ')
                USING ERRCODE = 'SC012',
                      DETAIL = jsonb_build_object('key', p_key, 'run_id', r_done.run_id,
                                                  'done_at', r_done.completed_at)::text,
                      HINT = 'Give each piece of work its own key; if it is the same work again, say so: '
                             'begin_step(key, p_same_work => true) (Python: run.step(key, same_work=True)).';
        END IF;
        RAISE NOTICE 'sidecar: step % was already done by run % at %; skipped', p_key, r_done.run_id, r_done.completed_at;
        RETURN false;
    END IF;
    SELECT reason INTO v_blocked FROM sidecar.step_blocks WHERE run_id = v_run AND key = p_key;
    IF FOUND THEN
        RAISE NOTICE 'sidecar: step % skipped: %', p_key, v_blocked;
        RETURN false;
    END IF;
    PERFORM set_config('sidecar._step', p_key, true);
    PERFORM set_config('sidecar.action', p_key, true);
    RETURN true;
END
$begin_step$;

-- Who completed a step of this run's lineage, and when (no row: not done).
CREATE OR REPLACE FUNCTION sidecar.step_done(p_key text)
RETURNS TABLE (run_id uuid, completed_at timestamptz) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $step_done$
    SELECT s.run_id, s.completed_at FROM sidecar.steps s
    WHERE s.lineage = (SELECT r.lineage FROM sidecar.runs r WHERE r.run_id = sidecar._current_run())
      AND s.key = p_key
$step_done$;

-- Mark the open step done, in the same transaction as its writes.
CREATE OR REPLACE FUNCTION sidecar.end_step()
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $end_step$
DECLARE
    v_run     uuid := sidecar._current_run();
    v_key     text := coalesce(current_setting('sidecar._step', true), '');
    v_lineage uuid;
BEGIN
    IF v_key = '' THEN
        RAISE EXCEPTION 'sidecar: no step is open in this transaction' USING ERRCODE = 'SC007',
              HINT = 'Call sidecar.begin_step(key) in the same transaction first.';
    END IF;
    SELECT lineage INTO v_lineage FROM sidecar.runs WHERE run_id = v_run;
    -- Row-mode capture leaves the step's action to be made from its
    -- statements' heads (fn_settle.sql): made now, in this transaction.
    IF NOT EXISTS (SELECT FROM sidecar.actions a WHERE a.run_id = v_run AND a.key = v_key) THEN
        PERFORM sidecar._settle();
    END IF;
    -- The primary key (lineage, key) is the last guard: a second completion
    -- of one step fails, and its writes with it.
    INSERT INTO sidecar.steps (lineage, key, run_id, action_id)
    VALUES (v_lineage, v_key, v_run,
            (SELECT a.action_id FROM sidecar.actions a WHERE a.run_id = v_run AND a.key = v_key));
    PERFORM set_config('sidecar._step', '', true);
    PERFORM set_config('sidecar.action', '', true);
END
$end_step$;

-- Record a failed attempt (call after rolling the step's transaction back):
-- p_error one line, p_detail the full diagnostics (for operators).
CREATE OR REPLACE FUNCTION sidecar.fail_step(p_key text, p_error text DEFAULT NULL, p_detail text DEFAULT NULL)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fail_step$
    INSERT INTO sidecar.step_failures (run_id, key, error, detail)
    VALUES (sidecar._current_run(), p_key, p_error, p_detail)
$fail_step$;
