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
    v_stmt  bigint;
    v_rows  int;
BEGIN
    -- Untagged writes cost one setting read.
    IF @TAGGED_ONLY@ AND coalesce(current_setting('sidecar.run_id', true), '') = '' THEN
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

    -- Gate check, run and action bookkeeping; negative when the table's
    -- shape changed since this function was rendered.
    v_stmt := sidecar._begin_statement(@TRACKED_ID@, TG_RELID, TG_OP, @SHAPE@);

    IF v_stmt < 0 THEN
        EXECUTE sidecar._capture_sql(@TRACKED_ID@, TG_OP) USING -v_stmt;
    ELSIF TG_OP = 'INSERT' THEN
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
    RETURN NULL;
END
$capture$;
