-- Capture trigger function for one tracked table.
--
-- Rendered by sidecar._render_capture() whenever a table is tracked or its
-- shape changes; the tokens are replaced by identifiers and literals that
-- were quoted with format('%I') / format('%L') first:
--   @FUNC@           the function's qualified name
--   @TRACKED_ID@     sidecar.tracked.tracked_id
--   @LOG@            the table's history table
--   @LOG_COLS@       history columns, in the order of @SRC_COLS@
--   @SRC_COLS@       the tracked table's captured columns
--   @SHAPE@          the table's shape when this was rendered
--   @TAGGED_ONLY@    true: writes without sidecar.run_id are not captured
--   @SHAPE_WATCHED@  true: sidecar's event trigger syncs history and renders
--                    this function anew whenever the table's shape changes,
--                    so no statement needs to check it
--
-- It fires once per statement (AFTER ... REFERENCING ... FOR EACH STATEMENT):
-- one INSERT ... SELECT writes every typed row image of the statement, which
-- is what keeps capture within a small factor of the write itself. A tagged
-- statement runs one query, which checks the gate and writes the statement
-- row and its images; the first tagged statement of a transaction (or of an
-- action) also looks up its run and action. PL/pgSQL sets up every
-- expression it evaluates anew in each transaction, and an OLTP transaction
-- calls each table's function about once: so this function evaluates few.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $capture$
DECLARE
    v_run_text  text := current_setting('sidecar.run_id', true);
    v_tag_for   text;
    v_tag       sidecar.tag;
    v_stmt      bigint;
    v_rows      bigint;
BEGIN
    IF v_run_text <> '' THEN
        -- The run and action this write belongs to. The first tagged write of
        -- a transaction (or of an action) reads them from the tables and
        -- keeps them in a transaction-local setting, keyed by run id and
        -- action key; a savepoint rolled back takes the setting with it.
        -- A forged setting gains nothing an automation could not get by
        -- setting sidecar.run_id: the gate guards against mistakes, and
        -- untagged writes pass it anyway.
        v_tag_for := v_run_text || chr(1)
                     || coalesce(nullif(current_setting('sidecar.action', true), ''), 'tx:' || txid_current());
        IF current_setting('sidecar._tag_for', true) = v_tag_for THEN
            v_tag := current_setting('sidecar._tag')::sidecar.tag;
        ELSE
            -- Nothing is registered for a statement that changed nothing
            -- (the INSERT below checks the same for every statement).
            IF TG_OP = 'INSERT' THEN
                IF NOT EXISTS (SELECT FROM sidecar_new) THEN RETURN NULL; END IF;
            ELSIF TG_OP = 'DELETE' THEN
                IF NOT EXISTS (SELECT FROM sidecar_old) THEN RETURN NULL; END IF;
            ELSIF (SELECT CASE count(*) WHEN 0 THEN true
                                        WHEN 1 THEN (SELECT o::text FROM sidecar_old o)
                                                    = (SELECT n::text FROM sidecar_new n)
                                        ELSE false END
                   FROM (SELECT FROM sidecar_old LIMIT 2) two) THEN
                RETURN NULL;
            END IF;
            -- sidecar._tag() finds the run and action, registers what it has
            -- not seen yet, and says what is wrong with a run id that is no uuid.
            SELECT t.action_id, t.is_undo, t.automation INTO v_tag FROM sidecar._tag() t;
            PERFORM set_config('sidecar._tag', v_tag::text, true), set_config('sidecar._tag_for', v_tag_for, true);
        END IF;
    ELSIF @TAGGED_ONLY@ THEN
        -- Untagged writes cost one setting read (and no call at all where
        -- the trigger's WHEN clause already said so).
        RETURN NULL;
    END IF;

    -- Where no event trigger watches the table's shape: the shape as
    -- sidecar._shape() computes it. When it changed since this function was
    -- rendered, history is brought in line first and this statement is
    -- captured with SQL built for the new shape.
    IF NOT @SHAPE_WATCHED@ THEN
        IF (SELECT coalesce(string_agg(a.attnum || ':' || a.atttypid || ':' || a.atttypmod || ':' || a.attname,
                                       ',' ORDER BY a.attnum), '')
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
           IS DISTINCT FROM @SHAPE@ THEN
            IF NOT coalesce(v_tag.is_undo, true) THEN
                PERFORM sidecar._gate(v_tag.automation, @TRACKED_ID@, 'Nothing of this statement was written.');
            END IF;
            PERFORM sidecar._sync_shape(@TRACKED_ID@);
            -- Taken after the sync: a history column it added is older than
            -- the first statement that fills it (sidecar.columns.since_stmt).
            v_stmt := nextval('sidecar.stmt_seq');
            EXECUTE sidecar._capture_sql(@TRACKED_ID@, TG_OP) USING v_stmt;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            IF v_rows > 0 THEN
                INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at)
                VALUES (v_stmt, @TRACKED_ID@, left(TG_OP, 1), nullif(v_run_text, '')::uuid, v_tag.action_id,
                        txid_current(), session_user, statement_timestamp());
            END IF;
            RETURN NULL;
        END IF;
    END IF;

    -- One INSERT: the statement row, then its images, only when the
    -- statement changed something: it touched a row, and a one-row UPDATE
    -- changed it (no-op rows of bulk UPDATEs are kept, and left out when
    -- history is read: comparing every row would cost a join). The gate
    -- (a pause stops the next write of sessions already open) is checked
    -- there too, before anything is written: one look at the tiny pauses
    -- table finds a superset of the pauses that apply, which sidecar._gate()
    -- reads exactly and raises on. Untagged writes and undo runs (the
    -- operator's repair) are never gated. Each operation has its own copy of
    -- that INSERT: an INSERT trigger has only sidecar_new and a DELETE
    -- trigger only sidecar_old, and a query naming the other cannot be
    -- planned; a shared function would cost a call on every statement.
    v_stmt := nextval('sidecar.stmt_seq');
    IF TG_OP = 'UPDATE' THEN
        WITH s AS (
            INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at)
            SELECT v_stmt, @TRACKED_ID@, 'U', nullif(v_run_text, '')::uuid, v_tag.action_id, txid_current(),
                   session_user, statement_timestamp()
            WHERE CASE WHEN (SELECT CASE count(*) WHEN 0 THEN false
                                                  WHEN 1 THEN (SELECT o::text FROM sidecar_old o)
                                                              IS DISTINCT FROM (SELECT n::text FROM sidecar_new n)
                                                  ELSE true END
                             FROM (SELECT FROM sidecar_old LIMIT 2) two)
                       THEN coalesce(v_tag.is_undo, true) OR NOT EXISTS (
                           SELECT FROM sidecar.pauses p
                           WHERE p.target = ANY (ARRAY[v_tag.automation, '*', '@TRACKED_ID@'])
                             AND NOT sidecar._gate(v_tag.automation, @TRACKED_ID@,
                                                   'Nothing of this statement was written.'))
                  END
            RETURNING 1)
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
        SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE EXISTS (SELECT FROM s)
        UNION ALL
        SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE EXISTS (SELECT FROM s);
    ELSIF TG_OP = 'INSERT' THEN
        WITH s AS (
            INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at)
            SELECT v_stmt, @TRACKED_ID@, 'I', nullif(v_run_text, '')::uuid, v_tag.action_id, txid_current(),
                   session_user, statement_timestamp()
            WHERE CASE WHEN EXISTS (SELECT FROM sidecar_new)
                       THEN coalesce(v_tag.is_undo, true) OR NOT EXISTS (
                           SELECT FROM sidecar.pauses p
                           WHERE p.target = ANY (ARRAY[v_tag.automation, '*', '@TRACKED_ID@'])
                             AND NOT sidecar._gate(v_tag.automation, @TRACKED_ID@,
                                                   'Nothing of this statement was written.'))
                  END
            RETURNING 1)
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
        SELECT v_stmt, 'N', @SRC_COLS@ FROM sidecar_new WHERE EXISTS (SELECT FROM s);
    ELSE
        WITH s AS (
            INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at)
            SELECT v_stmt, @TRACKED_ID@, 'D', nullif(v_run_text, '')::uuid, v_tag.action_id, txid_current(),
                   session_user, statement_timestamp()
            WHERE CASE WHEN EXISTS (SELECT FROM sidecar_old)
                       THEN coalesce(v_tag.is_undo, true) OR NOT EXISTS (
                           SELECT FROM sidecar.pauses p
                           WHERE p.target = ANY (ARRAY[v_tag.automation, '*', '@TRACKED_ID@'])
                             AND NOT sidecar._gate(v_tag.automation, @TRACKED_ID@,
                                                   'Nothing of this statement was written.'))
                  END
            RETURNING 1)
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
        SELECT v_stmt, 'O', @SRC_COLS@ FROM sidecar_old WHERE EXISTS (SELECT FROM s);
    END IF;
    RETURN NULL;
END
$capture$;
