-- The pause gate: what operators call. The capture triggers read
-- sidecar.pauses on every tagged statement. Re-applied by `sidecar install`
-- whenever this file changes.
--
-- Pause and resume send a NOTIFY on channel 'sidecar' with a JSON payload
-- {"event": "pause"|"resume", "scope": ..., "target": ...} (a pause adds "label" and "reason").

-- Signatures of earlier releases (an upgrade must not leave overloads behind).
DROP FUNCTION IF EXISTS sidecar._pause(text, text, text);
DROP FUNCTION IF EXISTS sidecar._resume(text, text);

-- Tell row-mode sessions that kept a gate answer (triggers/capture_row.sql)
-- to ask again: move sidecar.gate_seq, holding a lock that a session asking
-- again waits for, so that it reads the pause (or undo) once committed.
CREATE OR REPLACE FUNCTION sidecar._gate_moved()
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_gate_moved$
    SELECT pg_advisory_xact_lock(hashtext('sidecar.gate_seq'));
    SELECT nextval('sidecar.gate_seq');
$_gate_moved$;

CREATE OR REPLACE FUNCTION sidecar._pause(p_scope text, p_target text, p_reason text,
                                          p_label text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_pause$
BEGIN
    IF coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'sidecar: a pause needs a reason, so that people know why' USING ERRCODE = 'SC006';
    END IF;
    PERFORM sidecar._gate_moved();
    INSERT INTO sidecar.pauses (scope, target, reason) VALUES (p_scope, p_target, p_reason)
    ON CONFLICT (scope, target) DO UPDATE
        SET reason = EXCLUDED.reason, paused_at = now(), paused_by = session_user;
    PERFORM sidecar._log_event('pause', NULL,
        format('Paused %s: %s', CASE p_scope WHEN 'table' THEN 'table ' || coalesce(p_label, p_target)
                                 WHEN 'automation' THEN CASE p_target WHEN '*' THEN 'every automation'
                                                                      ELSE p_target END END, p_reason),
        jsonb_build_object('scope', p_scope, 'target', p_target, 'reason', p_reason));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'pause', 'scope', p_scope, 'target', p_target,
                                                    'label', p_label, 'reason', left(p_reason, 300))::text);
END
$_pause$;

CREATE OR REPLACE FUNCTION sidecar._resume(p_scope text, p_target text, p_label text DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_resume$
BEGIN
    DELETE FROM sidecar.pauses WHERE scope = p_scope AND target = p_target;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM sidecar._log_event('resume', NULL,
        format('Resumed %s', CASE p_scope WHEN 'table' THEN 'table ' || coalesce(p_label, p_target)
                              ELSE CASE p_target WHEN '*' THEN 'every automation' ELSE p_target END END),
        jsonb_build_object('scope', p_scope, 'target', p_target));
    PERFORM pg_notify('sidecar', jsonb_build_object('event', 'resume', 'scope', p_scope, 'target', p_target)::text);
    RETURN true;
END
$_resume$;

-- Pause an automation ('*': every automation). Its runs cannot start and
-- their next write fails with SC001.
CREATE OR REPLACE FUNCTION sidecar.pause(p_automation text, p_reason text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $pause$
    SELECT sidecar._pause('automation', p_automation, p_reason)
$pause$;

CREATE OR REPLACE FUNCTION sidecar.resume(p_automation text)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $resume$
    SELECT sidecar._resume('automation', p_automation)
$resume$;

-- Pause one tracked table for every automation.
CREATE OR REPLACE FUNCTION sidecar.pause_table(p_table regclass, p_reason text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $pause_table$
DECLARE
    v_id int;
BEGIN
    SELECT tracked_id INTO v_id FROM sidecar.tracked WHERE relid = p_table AND active;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'sidecar: table % is not tracked, so its writes cannot be paused', p_table
            USING ERRCODE = 'SC004', HINT = format('Track it first: sidecar track %s', p_table);
    END IF;
    PERFORM sidecar._pause('table', v_id::text, p_reason, sidecar._qualname(p_table));
END
$pause_table$;

CREATE OR REPLACE FUNCTION sidecar.resume_table(p_table regclass)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $resume_table$
    SELECT sidecar._resume('table', t.tracked_id::text, sidecar._qualname(p_table))
    FROM sidecar.tracked t WHERE t.relid = p_table
$resume_table$;

-- The slow path of a row-mode capture trigger's gate (triggers/capture_row.sql),
-- taken when the session has no answer kept for its run or sidecar.gate_seq
-- moved. false: an untagged write on a table that captures only tagged ones
-- (not captured). sidecar._tag() registers the run and the action, refuses
-- an undone run and makes history partitions ahead when due (start_run()
-- and every command make them too: a session that writes on under one run
-- does not look again); sidecar._gate() raises if a pause applies, after
-- waiting for a pause or undo being committed (sidecar._gate_moved()). The
-- answer is kept for the session unless a table is paused (another table
-- may be next).
CREATE OR REPLACE FUNCTION sidecar._row_gate(p_tracked_id int, p_tagged_only boolean)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_row_gate$
DECLARE
    v_run  text := current_setting('sidecar.run_id', true);
    v_seen bigint;
    v_tag  sidecar.tag;
BEGIN
    IF coalesce(v_run, '') = '' THEN
        RETURN NOT p_tagged_only;
    END IF;
    v_seen := pg_sequence_last_value('sidecar.gate_seq'::regclass);
    PERFORM pg_advisory_lock_shared(hashtext('sidecar.gate_seq')),
            pg_advisory_unlock_shared(hashtext('sidecar.gate_seq'));
    SELECT t.action_id, t.is_undo, t.automation INTO v_tag FROM sidecar._tag() t;
    IF NOT v_tag.is_undo AND EXISTS (
        SELECT FROM sidecar.pauses p WHERE p.target = ANY (ARRAY[v_tag.automation, '*', p_tracked_id::text])) THEN
        PERFORM sidecar._gate(v_tag.automation, p_tracked_id, 'Nothing of this statement was written.');
    END IF;
    IF v_tag.is_undo OR NOT EXISTS (SELECT FROM sidecar.pauses p WHERE p.scope = 'table') THEN
        PERFORM set_config('sidecar._gate_ok', v_run || v_seen, false);
    END IF;
    RETURN true;
END
$_row_gate$;
