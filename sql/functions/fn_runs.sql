-- Run tagging: what automations call. Re-applied by `sidecar install`
-- whenever this file changes.

-- Signatures of earlier releases (an upgrade must not leave overloads behind).
DROP FUNCTION IF EXISTS sidecar.start_run(text, jsonb);
DROP FUNCTION IF EXISTS sidecar.finish_run(text, text, uuid);

-- Start a run of an automation and tag this session's writes with it.
-- Fails (SC001) while the automation, or every automation, is paused.
-- p_key, an idempotency key ('nightly-2026-12-03'): the first run of the
-- automation with that key owns it; a later start_run with the same key
-- opens a rerun of that run's lineage instead, so its steps done once are
-- skipped (a scheduler that fires twice does the work once).
CREATE OR REPLACE FUNCTION sidecar.start_run(p_automation text, p_meta jsonb DEFAULT '{}', p_key text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $start_run$
DECLARE
    v_run      uuid := gen_random_uuid();
    v_lineage  uuid := v_run;
    v_prev     uuid;
    r_first    record;
BEGIN
    IF coalesce(btrim(p_automation), '') = '' THEN
        RAISE EXCEPTION 'sidecar: start_run needs the automation''s name' USING ERRCODE = 'SC005',
              HINT = 'For example: SELECT sidecar.start_run(''ticket-bot'', ''{"prompt": "v3"}'');';
    END IF;
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        RAISE EXCEPTION 'sidecar: run metadata must be a JSON object, not %', jsonb_typeof(p_meta)
            USING ERRCODE = 'SC005';
    END IF;
    IF p_key IS NOT NULL AND btrim(p_key) = '' THEN
        RAISE EXCEPTION 'sidecar: a run key must not be empty' USING ERRCODE = 'SC005',
              HINT = 'Pass NULL for a run without a key, or a key such as ''nightly-2026-12-03''.';
    END IF;
    PERFORM sidecar._gate(p_automation, NULL, 'No run was started.');
    -- History partitions ahead of the statement sequence (fn_partitions.sql),
    -- when due and start_run is its transaction's first statement (so the
    -- DEFAULT partition's lock that making them takes is not held through a
    -- run's long transaction); else only when a single empty one is left.
    IF (SELECT pg_sequence_last_value('sidecar.stmt_seq'::regclass)
               - (CASE WHEN statement_timestamp() = transaction_timestamp() THEN 0 ELSE p.width END)
               >= p.refill_at
        FROM sidecar.partitioning p WHERE p.one) THEN
        PERFORM sidecar._partitions_ahead();
    END IF;
    IF p_key IS NOT NULL THEN
        -- Two starts with one key at once: the second waits, then joins the first's lineage.
        PERFORM pg_advisory_xact_lock(hashtext('sidecar.run_key'), hashtext(p_automation || '/' || p_key));
        SELECT r.run_id, r.lineage INTO r_first FROM sidecar.runs r
        WHERE r.automation = p_automation AND r.run_key = p_key;
        IF FOUND THEN
            v_lineage := r_first.lineage;
            SELECT r.run_id INTO v_prev FROM sidecar.runs r
            WHERE r.lineage = v_lineage AND r.undo_of IS NULL ORDER BY r.started_at DESC, r.run_id LIMIT 1;
        END IF;
    END IF;
    INSERT INTO sidecar.runs (run_id, automation, meta, lineage, rerun_of, run_key, backend_pid, backend_start)
    VALUES (v_run, p_automation,
            coalesce(p_meta, '{}') || CASE WHEN p_key IS NULL THEN '{}'::jsonb
                                          ELSE jsonb_build_object('run_key', p_key) END,
            v_lineage, v_prev, CASE WHEN v_prev IS NULL THEN p_key END, pg_backend_pid(),
            (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()));
    IF v_prev IS NOT NULL THEN
        PERFORM sidecar._log_event('rerun', v_prev,
            format('Run %s started with key %s again: it reruns run %s, and skips the steps done',
                   left(v_run::text, 8), quote_literal(p_key), left(v_prev::text, 8)),
            jsonb_build_object('rerun', v_run, 'run_key', p_key));
    END IF;
    PERFORM set_config('sidecar.run_id', v_run::text, false);
    PERFORM set_config('sidecar.automation', p_automation, false);
    RETURN v_run;
END
$start_run$;

-- Finish this session's run (or the one named) and untag the session.
-- p_error is one line (people read it in `sidecar runs`); p_detail the full
-- diagnostics, for operators (`sidecar show --json`). A failed run sends
-- NOTIFY sidecar {"event": "failed", "run", "automation", "error"}.
CREATE OR REPLACE FUNCTION sidecar.finish_run(p_status text DEFAULT 'succeeded', p_error text DEFAULT NULL,
                                              p_run_id uuid DEFAULT NULL, p_detail text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $finish_run$
DECLARE
    v_current text := coalesce(current_setting('sidecar.run_id', true), '');
    v_run     uuid := coalesce(p_run_id, nullif(v_current, '')::uuid);
    v_automation text;
BEGIN
    IF v_run IS NULL THEN
        RAISE EXCEPTION 'sidecar: no run is active in this session' USING ERRCODE = 'SC005',
              HINT = 'Call sidecar.start_run() first, or pass the run id.';
    END IF;
    IF p_status NOT IN ('succeeded', 'failed') THEN
        RAISE EXCEPTION 'sidecar: a run finishes as succeeded or failed, not %', quote_literal(p_status)
            USING ERRCODE = 'SC005';
    END IF;
    UPDATE sidecar.runs SET status = p_status, error = p_error, error_detail = p_detail, finished_at = clock_timestamp()
    WHERE run_id = v_run
    RETURNING automation INTO v_automation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sidecar: run % is not known', v_run USING ERRCODE = 'SC005';
    END IF;
    IF p_status = 'failed' THEN  -- for `sidecar notify` and the console
        PERFORM pg_notify('sidecar', jsonb_build_object('event', 'failed', 'run', v_run, 'automation',
                                                        left(v_automation, 200), 'error', left(p_error, 300))::text);
    END IF;
    IF v_current = v_run::text THEN
        PERFORM set_config('sidecar.run_id', '', false);
        PERFORM set_config('sidecar.action', '', false);
    END IF;
    -- The capture trigger's per-transaction note of the run: a later write
    -- tagged with this run looks it up again (and finds it finished).
    PERFORM set_config('sidecar._tag_for', '', true);
END
$finish_run$;
