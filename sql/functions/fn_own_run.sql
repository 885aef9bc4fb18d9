-- An automation asks about its own run: its held writes, its pauses. Open to
-- PUBLIC (privileges.sql), for the caller's own run only, so an automation
-- needs no read grant on sidecar's tables. Re-applied by `sidecar install`
-- whenever this file changes.
--
--   SELECT * FROM sidecar.run_held();      -- this session's run
--   SELECT * FROM sidecar.run_paused();    -- empty: not paused
--
-- A run is the caller's own when it is the session's run (sidecar.run_id),
-- was started or attached in this session, or was started by this role.
-- SQLSTATE SC005: no run active, or not the caller's run.

CREATE OR REPLACE FUNCTION sidecar._own_run(p_run uuid)
RETURNS uuid LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_own_run$
DECLARE
    v_current text := coalesce(current_setting('sidecar.run_id', true), '');
    v_run     uuid;
BEGIN
    IF p_run IS NULL THEN
        RETURN sidecar._current_run();
    END IF;
    IF v_current = p_run::text THEN
        RETURN p_run;
    END IF;
    SELECT r.run_id INTO v_run FROM sidecar.runs r
    WHERE r.run_id = p_run
      AND (r.started_by = session_user OR r.backend_pid = pg_backend_pid());
    IF v_run IS NULL THEN
        RAISE EXCEPTION 'sidecar: run % is not a run of this session or role', p_run USING ERRCODE = 'SC005',
              HINT = 'An automation asks about its own run; operators read sidecar queue and sidecar status.';
    END IF;
    RETURN v_run;
END
$_own_run$;

-- The run's writes a hold rule held, with their queue ids and decisions
-- (status pending, conflict, approved, rejected), oldest first.
CREATE OR REPLACE FUNCTION sidecar.run_held(p_run uuid DEFAULT NULL)
RETURNS TABLE (pending_id bigint, action text, table_name text, op text, key jsonb, status text,
               reason text, held_at timestamptz, decided_by name, decided_at timestamptz, decided_why text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $run_held$
    SELECT p.pending_id, a.key, sidecar._qualname(t.relid),
           CASE p.op WHEN 'I' THEN 'insert' WHEN 'U' THEN 'update' ELSE 'delete' END,
           p.key, p.status, p.reason, p.held_at, p.decided_by, p.decided_at, p.decided_why
    FROM sidecar.pending p
    JOIN sidecar.actions a ON a.action_id = p.action_id
    JOIN sidecar.tracked t ON t.tracked_id = p.tracked_id
    WHERE p.run_id = sidecar._own_run(p_run)
    ORDER BY p.pending_id
$run_held$;

-- The pauses that stop the run's writes now (none: not paused): its
-- automation's, every automation's ('*'), and tables paused for every
-- automation (those stop only writes to that table).
CREATE OR REPLACE FUNCTION sidecar.run_paused(p_run uuid DEFAULT NULL)
RETURNS TABLE (scope text, target text, reason text, paused_by name, paused_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $run_paused$
    WITH own AS (
        SELECT coalesce(r.automation, nullif(current_setting('sidecar.automation', true), '')) AS automation
        FROM (SELECT sidecar._own_run(p_run) AS run_id) o LEFT JOIN sidecar.runs r ON r.run_id = o.run_id
    )
    SELECT p.scope,
           CASE p.scope WHEN 'table' THEN (SELECT sidecar._qualname(t.relid) FROM sidecar.tracked t
                                           WHERE t.tracked_id::text = p.target)
                        ELSE p.target END,
           p.reason, p.paused_by, p.paused_at
    FROM sidecar.pauses p, own
    WHERE (p.scope = 'automation' AND p.target IN (own.automation, '*')) OR p.scope = 'table'
    ORDER BY p.scope, p.target = '*', p.paused_at
$run_paused$;

-- Attach this session to a run opened for it (`sidecar rerun` opens one and
-- the automation attaches): tags the session, and marks the run as held by
-- this session, so that it reads running, not waiting.
CREATE OR REPLACE FUNCTION sidecar.attach_run(p_run uuid, p_automation text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $attach_run$
DECLARE
    v_automation text;
    v_status     text;
BEGIN
    SELECT automation, status INTO v_automation, v_status FROM sidecar.runs WHERE run_id = p_run;
    IF v_automation IS NOT NULL AND v_status <> 'running' THEN
        RAISE EXCEPTION 'sidecar: run % has finished (%); it takes no more writes', p_run, v_status
            USING ERRCODE = 'SC011',
                  DETAIL = jsonb_build_object('run_id', p_run, 'status', v_status)::text,
                  HINT = 'Start a new run, or open a rerun of it: sidecar rerun RUN.';
    END IF;
    PERFORM set_config('sidecar.automation', coalesce(v_automation, p_automation, ''), false);
    IF v_automation IS NULL THEN
        PERFORM sidecar._register_run(p_run);  -- a run id made by the automation, first seen here
    END IF;
    UPDATE sidecar.runs SET backend_pid = pg_backend_pid(),
           backend_start = (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid())
    WHERE run_id = p_run;
    PERFORM set_config('sidecar.run_id', p_run::text, false);
END
$attach_run$;
