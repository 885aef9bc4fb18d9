-- Run tagging: what automations call. Re-applied by `sidecar install`
-- whenever this file changes.

-- Start a run of an automation and tag this session's writes with it.
-- Fails (SC001) while the automation, or every automation, is paused.
CREATE OR REPLACE FUNCTION sidecar.start_run(p_automation text, p_meta jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $start_run$
DECLARE
    v_run      uuid := gen_random_uuid();
BEGIN
    IF coalesce(btrim(p_automation), '') = '' THEN
        RAISE EXCEPTION 'sidecar: start_run needs the automation''s name' USING ERRCODE = 'SC005',
              HINT = 'For example: SELECT sidecar.start_run(''ticket-bot'', ''{"prompt": "v3"}'');';
    END IF;
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        RAISE EXCEPTION 'sidecar: run metadata must be a JSON object, not %', jsonb_typeof(p_meta)
            USING ERRCODE = 'SC005';
    END IF;
    PERFORM sidecar._gate(p_automation, NULL, 'No run was started.');
    INSERT INTO sidecar.runs (run_id, automation, meta, lineage, backend_pid, backend_start)
    VALUES (v_run, p_automation, coalesce(p_meta, '{}'), v_run, pg_backend_pid(),
            (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()));
    PERFORM set_config('sidecar.run_id', v_run::text, false);
    PERFORM set_config('sidecar.automation', p_automation, false);
    RETURN v_run;
END
$start_run$;

-- Finish this session's run (or the one named) and untag the session. A
-- failed run sends NOTIFY sidecar {"event": "failed", "run", "automation", "error"}.
CREATE OR REPLACE FUNCTION sidecar.finish_run(p_status text DEFAULT 'succeeded', p_error text DEFAULT NULL,
                                              p_run_id uuid DEFAULT NULL)
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
    UPDATE sidecar.runs SET status = p_status, error = p_error, finished_at = clock_timestamp()
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
