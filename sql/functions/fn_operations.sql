-- Operator operations whose bookkeeping writes history: undo and rerun.
-- They are SECURITY DEFINER so that operators (sidecar_undoer,
-- sidecar_rerunner) need no write grants on the history tables, and
-- automations cannot call them (sql/privileges.sql). Re-applied by
-- `sidecar install` whenever this file changes.
--
-- SQLSTATE SC008: an undo that is refused (run already undone).

-- Open an undo of p_run: checks it may be undone, registers the undo as a run
-- (undo_of) and tags the rest of the caller's transaction with it.
CREATE OR REPLACE FUNCTION sidecar._undo_begin(p_run uuid, p_scope jsonb)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_undo_begin$
DECLARE
    v_undo    uuid := gen_random_uuid();
    r_run     record;
BEGIN
    -- One undo of a run at a time; a second waits, then sees the first's result.
    PERFORM pg_advisory_xact_lock(hashtext('sidecar.undo'), hashtext(p_run::text));
    SELECT r.run_id, r.undone_by, u.started_at AS undone_at, u.undone_by AS undo_undone INTO r_run
    FROM sidecar.runs r LEFT JOIN sidecar.runs u ON u.run_id = r.undone_by
    WHERE r.run_id = p_run;
    IF r_run.run_id IS NULL THEN
        RAISE EXCEPTION 'sidecar: run % is not known', p_run USING ERRCODE = 'SC008';
    END IF;
    IF EXISTS (SELECT FROM sidecar.runs WHERE run_id = p_run AND purged_at IS NOT NULL) THEN
        RAISE EXCEPTION 'sidecar: the history of run % was purged, so it can no longer be undone', p_run
            USING ERRCODE = 'SC008';
    END IF;
    IF p_scope ->> 'scope' = 'run' AND r_run.undone_by IS NOT NULL AND r_run.undo_undone IS NULL THEN
        RAISE EXCEPTION 'sidecar: run % was already undone by run % at %', p_run, r_run.undone_by,
                        to_char(r_run.undone_at, 'YYYY-MM-DD HH24:MI:SS TZ')
            USING ERRCODE = 'SC008',
                  HINT = format('To put its changes back, undo that run: sidecar undo %s', left(r_run.undone_by::text, 8));
    END IF;
    INSERT INTO sidecar.runs (run_id, automation, meta, undo_of, lineage, backend_pid)
    VALUES (v_undo, 'sidecar undo', p_scope, p_run, v_undo, pg_backend_pid());
    PERFORM set_config('sidecar.run_id', v_undo::text, true);
    PERFORM set_config('sidecar.action', 'undo:' || coalesce(p_scope ->> 'scope', 'run'), true);
    RETURN v_undo;
END
$_undo_begin$;

-- Close an undo opened by _undo_begin: the undo run succeeded, the original
-- is marked undone (whole-run scope) and the event trail says what happened.
CREATE OR REPLACE FUNCTION sidecar._undo_finish(p_undo uuid, p_summary text, p_detail jsonb)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_undo_finish$
DECLARE
    r_undo record;
BEGIN
    SELECT * INTO STRICT r_undo FROM sidecar.runs WHERE run_id = p_undo AND undo_of IS NOT NULL;
    UPDATE sidecar.runs SET status = 'succeeded', finished_at = clock_timestamp() WHERE run_id = p_undo;
    IF r_undo.meta ->> 'scope' = 'run' THEN
        UPDATE sidecar.runs SET undone_by = p_undo WHERE run_id = r_undo.undo_of;
        PERFORM sidecar._gate_moved();  -- the undone run's next write is refused
    END IF;
    PERFORM sidecar._log_event('undo', r_undo.undo_of, p_summary, p_detail || jsonb_build_object('undo_run', p_undo));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'undo', 'run', r_undo.undo_of, 'undo_run', p_undo,
                                                    'summary', left(p_summary, 300))::text);
    IF coalesce((p_detail ->> 'conflicts')::bigint, 0) > 0 THEN  -- rows it skipped, for `sidecar notify`
        PERFORM pg_notify('sidecar', jsonb_build_object('event', 'conflict', 'run', r_undo.undo_of,
                                                        'undo_run', p_undo, 'rows', (p_detail ->> 'conflicts')::bigint)::text);
    END IF;
    PERFORM set_config('sidecar.run_id', '', true);
    PERFORM set_config('sidecar.action', '', true);
END
$_undo_finish$;

-- Open a rerun of p_original: a new run in the same lineage; p_blocked maps
-- step keys the rerun must not redo to the reason.
CREATE OR REPLACE FUNCTION sidecar._rerun_open(p_original uuid, p_meta jsonb, p_blocked jsonb,
                                               p_summary text, p_detail jsonb)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_rerun_open$
DECLARE
    v_rerun uuid := gen_random_uuid();
    r_orig  record;
BEGIN
    SELECT * INTO STRICT r_orig FROM sidecar.runs WHERE run_id = p_original;
    INSERT INTO sidecar.runs (run_id, automation, meta, rerun_of, lineage)
    VALUES (v_rerun, r_orig.automation, p_meta, p_original, r_orig.lineage);
    INSERT INTO sidecar.step_blocks (run_id, key, reason)
    SELECT v_rerun, b.key, b.value #>> '{}' FROM jsonb_each(coalesce(p_blocked, '{}')) b;
    PERFORM sidecar._log_event('rerun', p_original, p_summary, p_detail || jsonb_build_object('rerun', v_rerun));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'rerun', 'run', p_original, 'rerun', v_rerun)::text);
    RETURN v_rerun;
END
$_rerun_open$;
