-- Who may do what, re-applied at the end of every `sidecar install`.
--
-- The installing role owns the sidecar schema, its history and functions.
-- Automations (PUBLIC) may only tag their writes and mark steps: they cannot
-- read, write or forge history, pause or resume, undo, approve or rerun.
-- Operators get these group roles (NOLOGIN), granted by the DBA:
--   sidecar_viewer    read runs, history, events
--   sidecar_pauser    + pause and resume
--   sidecar_undoer    + undo: through each tracked table's undo function
--                     (sidecar.undo_<id>, fn_undo.sql), which restores rows
--                     from history with the table owner's rights; no
--                     privilege on the tables themselves
--   sidecar_approver  + approve and reject held writes
--   sidecar_rerunner  + open reruns

DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['sidecar_viewer', 'sidecar_pauser', 'sidecar_undoer',
                                  'sidecar_approver', 'sidecar_rerunner'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'sidecar: cannot create role % (this role lacks CREATEROLE)', v_role
                    USING HINT = format('Ask a superuser to run: CREATE ROLE %I NOLOGIN; then sidecar install again.', v_role);
            END;
        END IF;
        IF v_role <> 'sidecar_viewer' AND EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('GRANT sidecar_viewer TO %I', v_role);
            EXCEPTION WHEN insufficient_privilege OR undefined_object THEN
                NULL;  -- membership is a convenience; every grant below is explicit anyway
            END;
        END IF;
    END LOOP;
END
$roles$;

REVOKE ALL ON ALL TABLES IN SCHEMA sidecar FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA sidecar FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA sidecar FROM PUBLIC;
GRANT USAGE ON SCHEMA sidecar TO PUBLIC;

-- What automations call.
GRANT EXECUTE ON FUNCTION
    sidecar.start_run(text, jsonb, text),
    sidecar.finish_run(text, text, uuid, text),
    sidecar.attach_run(uuid, text),
    sidecar.run_held(uuid),
    sidecar.run_paused(uuid),
    sidecar.begin_step(text, boolean),
    sidecar.end_step(),
    sidecar.fail_step(text, text, text),
    sidecar.plan_steps(jsonb),
    sidecar.step_done(text),
    sidecar.set_context(text, jsonb, float8, jsonb),
    sidecar._qualname(regclass)
TO PUBLIC;
-- Writes statement rows of row-mode history from its heads, nothing else
-- (fn_settle.sql): any reader may need it, and it reveals nothing.
GRANT EXECUTE ON FUNCTION sidecar._settle(int) TO PUBLIC;

-- The rest is granted per role, where the role exists.
DO $grants$
DECLARE
    v_role text;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_viewer') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO sidecar_viewer;
    END IF;
    -- Reading: every operator role.
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('sidecar_viewer', 'sidecar_pauser', 'sidecar_undoer', 'sidecar_approver', 'sidecar_rerunner')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION sidecar.run_counts(uuid), sidecar.run_rows(uuid, bigint), sidecar._shapes_watched(), sidecar.table_writers_ever(), '
                       'sidecar.table_rows_written(int, text[]), sidecar._history_from(int, bigint, bigint) TO %I', v_role);
        -- Every command makes history partitions ahead when due (fn_partitions.sql).
        EXECUTE format('GRANT EXECUTE ON FUNCTION sidecar._partitions_ahead() TO %I', v_role);
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_pauser') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO sidecar_pauser;
        GRANT EXECUTE ON FUNCTION sidecar.pause(text, text), sidecar.resume(text),
                                  sidecar.pause_table(regclass, text), sidecar.resume_table(regclass)
        TO sidecar_pauser;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_undoer') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO sidecar_undoer;
        GRANT EXECUTE ON FUNCTION sidecar._undo_begin(uuid, jsonb), sidecar._undo_finish(uuid, text, jsonb),
                                  sidecar._sync_shape(int), sidecar._reject_undone(uuid),
                                  sidecar._held_in_scope(uuid, jsonb), sidecar._pk_columns(regclass)
        TO sidecar_undoer;
        -- Each tracked table's undo function (owned by the table's owner).
        FOR v_role IN
            SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'sidecar'::regnamespace AND p.proname ~ '^undo_[0-9]+$'
        LOOP
            BEGIN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sidecar_undoer', v_role);
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;  -- its owner granted it when tracking the table
            END;
        END LOOP;
    END IF;
    -- The internal functions each undo function calls, for its owner: those
    -- added since the table was tracked (sidecar._render_undo grants them then).
    FOR v_role IN
        SELECT DISTINCT pg_catalog.pg_get_userbyid(p.proowner) FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'sidecar'::regnamespace AND p.proname ~ '^undo_[0-9]+$' AND p.proowner <> (
            SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'sidecar')
    LOOP
        BEGIN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I',
                           array_to_string(sidecar._undo_internals(), ', '), v_role);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_rerunner') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO sidecar_rerunner;
        GRANT EXECUTE ON FUNCTION sidecar._rerun_open(uuid, jsonb, jsonb, text, jsonb),
                                  sidecar._row_fingerprint(regclass, jsonb)
        TO sidecar_rerunner;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_approver') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA sidecar TO sidecar_approver;
        GRANT EXECUTE ON FUNCTION sidecar.approve(bigint, text), sidecar.approve_action(uuid, text, text),
                                  sidecar.reject(bigint, text), sidecar.reject_action(uuid, text, text)
        TO sidecar_approver;
    END IF;
END
$grants$;
