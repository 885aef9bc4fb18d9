-- Context: why an automation did what it did, on the action it is in.
-- Re-applied by `sidecar install` whenever this file changes.
--
-- An automation (or the model behind it) says, for the action or step it is
-- in: why (its stated reason), read (what it read to decide: references to
-- rows and short texts), confidence (0..1) and any other keys. Stored in
-- sidecar.actions.context (migration 013), merged when set twice (the later
-- key wins). The capture trigger never touches it: a write that sets no
-- context costs what it did.
--
--   BEGIN;
--   SET LOCAL sidecar.run_id = '...';                 -- behind a transaction pooler
--   SET LOCAL sidecar.action = 'refund:ticket-42';
--   SELECT sidecar.set_context(why => 'customer was charged twice',
--                              read => '[{"table": "tickets", "key": 42}, "email: I was charged twice"]',
--                              confidence => 0.62,
--                              extra => '{"model": "gpt-x", "tool_call_id": "call_7"}');
--   UPDATE refunds ...;
--   COMMIT;
--
-- set_context may come before or after the action's first write in the
-- transaction; a hold rule that reads CONTEXT sees what was set before the
-- row was written.
--
-- SQLSTATE raised here (listed in docs/errors.md):
--   SC010 bad context: confidence outside 0..1 or not a number, read not a
--         JSON array (or an item of it too big or of the wrong kind), extra
--         not a JSON object, why not text, the action's context over 64 kB

-- The limits, in one place (docs/errors.md and sidecar/steps/context.py say the same).
CREATE OR REPLACE FUNCTION sidecar._context_limits(OUT total_bytes int, OUT item_bytes int)
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_context_limits$
    SELECT 65536, 4096
$_context_limits$;

-- Raise SC010 naming the field, unless p_context (what one call sets) is a
-- valid context: why a string, read an array of strings and of objects
-- (a row reference {"table", "key"} or a text {"text", ...}), each at most
-- 4 kB as JSON, confidence a number from 0 to 1.
CREATE OR REPLACE FUNCTION sidecar._check_context(p_context jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_check_context$
DECLARE
    v_limits  record := sidecar._context_limits();
    r_item    record;
    v_number  numeric;
BEGIN
    IF p_context ? 'why' AND jsonb_typeof(p_context -> 'why') NOT IN ('string', 'null') THEN
        RAISE EXCEPTION 'sidecar: context field why must be text, not %', jsonb_typeof(p_context -> 'why')
            USING ERRCODE = 'SC010', HINT = 'Give the model''s reason as one sentence of text.';
    END IF;
    IF p_context ? 'confidence' AND jsonb_typeof(p_context -> 'confidence') <> 'null' THEN
        IF jsonb_typeof(p_context -> 'confidence') <> 'number' THEN
            RAISE EXCEPTION 'sidecar: context field confidence must be a number from 0 to 1, not %',
                            left((p_context -> 'confidence')::text, 40)
                USING ERRCODE = 'SC010';
        END IF;
        v_number := (p_context ->> 'confidence')::numeric;
        IF v_number < 0 OR v_number > 1 THEN
            RAISE EXCEPTION 'sidecar: context field confidence must be a number from 0 to 1, not %', v_number
                USING ERRCODE = 'SC010', HINT = 'A probability: 0.62, not 62.';
        END IF;
    END IF;
    IF p_context ? 'read' AND jsonb_typeof(p_context -> 'read') <> 'null' THEN
        IF jsonb_typeof(p_context -> 'read') <> 'array' THEN
            RAISE EXCEPTION 'sidecar: context field read must be a JSON array (a list), not %',
                            jsonb_typeof(p_context -> 'read')
                USING ERRCODE = 'SC010',
                      HINT = 'For example: [{"table": "tickets", "key": 42}, "email: I was charged twice"]';
        END IF;
        FOR r_item IN SELECT value, ordinality FROM jsonb_array_elements(p_context -> 'read') WITH ORDINALITY LOOP
            IF jsonb_typeof(r_item.value) NOT IN ('string', 'object') THEN
                RAISE EXCEPTION 'sidecar: context field read, item %: must be a text or an object, not %',
                                r_item.ordinality, jsonb_typeof(r_item.value)
                    USING ERRCODE = 'SC010';
            END IF;
            IF jsonb_typeof(r_item.value) = 'object' AND r_item.value ? 'table'
               AND (jsonb_typeof(r_item.value -> 'table') <> 'string' OR NOT r_item.value ? 'key') THEN
                RAISE EXCEPTION 'sidecar: context field read, item %: a row reference needs "table" (text) and "key"',
                                r_item.ordinality
                    USING ERRCODE = 'SC010', HINT = 'For example: {"table": "tickets", "key": 42}';
            END IF;
            IF octet_length(r_item.value::text) > v_limits.item_bytes THEN
                RAISE EXCEPTION 'sidecar: context field read, item %: % bytes, over the limit of % bytes per item',
                                r_item.ordinality, octet_length(r_item.value::text), v_limits.item_bytes
                    USING ERRCODE = 'SC010', HINT = 'Keep an excerpt, not the whole document.';
            END IF;
        END LOOP;
    END IF;
END
$_check_context$;

-- Merge context into the current action of this session's run: the action
-- named by sidecar.action, else this transaction's action (registering the
-- run and the action when not seen yet, as a write would). Later keys win.
CREATE OR REPLACE FUNCTION sidecar.set_context(why text DEFAULT NULL, read jsonb DEFAULT NULL,
                                               confidence float8 DEFAULT NULL, extra jsonb DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $set_context$
DECLARE
    v_new     jsonb;
    v_action  bigint;
    v_merged  jsonb;
    v_limit   int := (sidecar._context_limits()).total_bytes;
BEGIN
    IF set_context.confidence = 'NaN'::float8 THEN
        RAISE EXCEPTION 'sidecar: context field confidence must be a number from 0 to 1, not NaN'
            USING ERRCODE = 'SC010';
    END IF;
    IF set_context.extra IS NOT NULL AND jsonb_typeof(set_context.extra) <> 'object' THEN
        RAISE EXCEPTION 'sidecar: context field extra must be a JSON object, not %', jsonb_typeof(set_context.extra)
            USING ERRCODE = 'SC010', HINT = 'For example: {"model": "gpt-x", "prompt_version": "v3"}';
    END IF;
    IF set_context.read IS NOT NULL AND jsonb_typeof(set_context.read) <> 'array' THEN
        RAISE EXCEPTION 'sidecar: context field read must be a JSON array (a list), not %',
                        jsonb_typeof(set_context.read)
            USING ERRCODE = 'SC010',
                  HINT = 'For example: [{"table": "tickets", "key": 42}, "email: I was charged twice"]';
    END IF;
    v_new := coalesce(set_context.extra, '{}')
             || jsonb_strip_nulls(jsonb_build_object('why', set_context.why, 'read', set_context.read,
                                                     'confidence', set_context.confidence));
    PERFORM sidecar._check_context(v_new);
    IF coalesce(current_setting('sidecar.run_id', true), '') = '' THEN
        RAISE EXCEPTION 'sidecar: no run is active in this session, so there is no action to give context to'
            USING ERRCODE = 'SC005',
                  HINT = 'Call sidecar.start_run() or SET [LOCAL] sidecar.run_id first.';
    END IF;
    IF octet_length(v_new::text) > v_limit THEN
        RAISE EXCEPTION 'sidecar: context is % bytes, over the limit of % bytes per action',
                        octet_length(v_new::text), v_limit
            USING ERRCODE = 'SC010', HINT = 'Keep excerpts in read, not whole documents.';
    END IF;
    -- The run and action as the capture trigger finds them (and registers them).
    SELECT t.action_id INTO v_action FROM sidecar._tag() t;
    SELECT coalesce(a.context, '{}') || v_new INTO v_merged FROM sidecar.actions a
    WHERE a.action_id = v_action FOR UPDATE;
    IF octet_length(v_merged::text) > v_limit THEN
        RAISE EXCEPTION 'sidecar: context of this action would be % bytes, over the limit of % bytes per action',
                        octet_length(v_merged::text), v_limit
            USING ERRCODE = 'SC010', HINT = 'Keep excerpts in read, not whole documents.';
    END IF;
    UPDATE sidecar.actions SET context = v_merged WHERE action_id = v_action;
END
$set_context$;

-- The context of the action the current write belongs to (NULL: none), for
-- hold rules that read CONTEXT.<key>: the run and action as sidecar._tag()
-- finds them, read only.
CREATE OR REPLACE FUNCTION sidecar._write_context()
RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_write_context$
    SELECT a.context FROM sidecar.actions a
    WHERE a.run_id = (SELECT CASE WHEN s.v ~ '^\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?$'
                                  THEN s.v::uuid END
                      FROM (SELECT current_setting('sidecar.run_id', true) AS v) s)
      AND a.key = coalesce(nullif(current_setting('sidecar.action', true), ''), 'tx:' || txid_current())
$_write_context$;

-- CONTEXT.confidence in a hold rule: the number, NULL when not a number or not set.
CREATE OR REPLACE FUNCTION sidecar._context_number(p_key text)
RETURNS float8 LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_context_number$
    SELECT CASE WHEN jsonb_typeof(c -> p_key) = 'number' THEN (c ->> p_key)::float8 END
    FROM (SELECT sidecar._write_context() AS c) w
$_context_number$;

-- CONTEXT.<key> in a hold rule: the value as text (NULL when not set).
CREATE OR REPLACE FUNCTION sidecar._context_text(p_key text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_context_text$
    SELECT sidecar._write_context() ->> p_key
$_context_text$;
