-- Capture trigger function for one tracked table.
--
-- Rendered by sidecar._render_capture() whenever a table is tracked or its
-- shape changes; the tokens are replaced by identifiers and literals that
-- were quoted with format('%I') / format('%L') first:
--   @FUNC@         the function's qualified name
--   @TRACKED_ID@   sidecar.tracked.tracked_id
--   @LOG@          the table's history table
--   @LOG_COLS@     history columns, in the order of @SRC_COLS@
--   @SRC_COLS@     the tracked table's captured columns
--   @SHAPE@        the table's shape when this was rendered
--   @TAGGED_ONLY@  true: writes without sidecar.run_id are not captured
--
-- It fires once per statement (AFTER ... REFERENCING ... FOR EACH STATEMENT):
-- one INSERT ... SELECT writes every typed row image of the statement, which
-- is what keeps capture within a small factor of the write itself.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $capture$
DECLARE
    v_tagged  boolean := coalesce(current_setting('sidecar.run_id', true), '') <> '';
    v_stmt    bigint;
    v_rows    int;
    r_tag     record;
    v_run     uuid;
    v_action  bigint;
    v_known   boolean := false;
BEGIN
    -- Untagged writes cost one setting read (and no call at all where the
    -- trigger's WHEN clause already said so).
    IF @TAGGED_ONLY@ AND NOT v_tagged THEN
        RETURN NULL;
    END IF;

    -- A statement that touched no row, or a one-row UPDATE that changed
    -- nothing, is not a change. (No-op rows of bulk UPDATEs are kept here and
    -- left out when history is read: comparing every row would cost a join.)
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT FROM sidecar_new) THEN RETURN NULL; END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT FROM sidecar_old) THEN RETURN NULL; END IF;
    ELSE
        SELECT count(*) INTO v_rows FROM (SELECT FROM sidecar_old LIMIT 2) s;
        IF v_rows = 0 OR (v_rows = 1 AND
            (SELECT o::text FROM sidecar_old o) = (SELECT n::text FROM sidecar_new n)) THEN
            RETURN NULL;
        END IF;
    END IF;

    -- Everything below runs once per statement, inline: a call to a function
    -- with its own pinned search_path costs more than the lookups themselves.
    IF v_tagged THEN
        -- The run and action, read from the tables every time (a setting
        -- could be forged). sidecar._tag() registers them on first sight,
        -- and says what is wrong with a run id that is no uuid.
        IF current_setting('sidecar.run_id') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' THEN
            SELECT r.run_id, r.automation, r.undo_of IS NOT NULL AS is_undo, a.action_id, r.status INTO r_tag
            FROM sidecar.runs r LEFT JOIN sidecar.actions a ON a.run_id = r.run_id
                 AND a.key = coalesce(nullif(current_setting('sidecar.action', true), ''), 'tx:' || txid_current())
            WHERE r.run_id = current_setting('sidecar.run_id')::uuid;
            v_known := FOUND AND r_tag.action_id IS NOT NULL AND r_tag.status = 'running';
        END IF;
        IF NOT v_known THEN
            r_tag := sidecar._tag();
        END IF;
        v_run := r_tag.run_id;
        v_action := r_tag.action_id;
        -- The gate, read on every statement: a pause stops the next write of
        -- sessions already open. An undo run is the operator's repair.
        -- One scan of the (tiny) pauses table, no index: one relation lock
        -- fewer of the 16 fast-path slots a transaction has. It finds a
        -- superset of the pauses that apply; _gate reads them exactly.
        IF NOT r_tag.is_undo AND EXISTS (
            SELECT FROM sidecar.pauses p WHERE p.target = ANY (ARRAY[r_tag.automation, '*', '@TRACKED_ID@'])) THEN
            PERFORM sidecar._gate(r_tag.automation, @TRACKED_ID@, 'Nothing of this statement was written.');
        END IF;
    END IF;

    -- The table's shape as sidecar._shape() computes it. When it changed
    -- since this function was rendered, history is brought in line first and
    -- this statement is captured with SQL built for the new shape.
    IF (SELECT coalesce(string_agg(a.attnum || ':' || a.atttypid || ':' || a.atttypmod || ':' || a.attname,
                                   ',' ORDER BY a.attnum), '')
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
       IS DISTINCT FROM @SHAPE@ THEN
        PERFORM sidecar._sync_shape(@TRACKED_ID@);
        -- Taken after the sync: a history column it added is older than the
        -- first statement that fills it (sidecar.columns.since_stmt).
        v_stmt := nextval('sidecar.stmt_seq');
        EXECUTE sidecar._capture_sql(@TRACKED_ID@, TG_OP) USING v_stmt;
    ELSE
        v_stmt := nextval('sidecar.stmt_seq');
        IF TG_OP = 'INSERT' THEN
            INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
            SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
            SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old;
        ELSE
            INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
            SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old
            UNION ALL
            SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new;
        END IF;
    END IF;

    INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at)
    VALUES (v_stmt, @TRACKED_ID@, left(TG_OP, 1), v_run, v_action, txid_current(), session_user,
            statement_timestamp());
    RETURN NULL;
END
$capture$;
