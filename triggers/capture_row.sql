-- Row-level capture trigger function for one tracked table (capture mode
-- "row"). Rendered by sidecar._render_capture() like triggers/capture.sql,
-- with the same tokens and these:
--   @RELID@      the tracked table's oid (a partition's row trigger reports
--                the partition in TG_RELID)
--   @OLD_COLS@   OLD.<column>, ... in the order of @LOG_COLS@
--   @NEW_COLS@   NEW.<column>, ...
--
-- It fires once per changed row (AFTER ... FOR EACH ROW, no transition
-- table), behind a WHEN clause that skips untagged writes (capture tagged)
-- and UPDATEs that changed nothing, without calling it. What a statement
-- needs once (the run and action, the gate, the shape check, the statement
-- row) is done by the first row of the statement and kept in
-- transaction-local settings; every other row only writes its images.
--
-- Which statement a row belongs to: PostgreSQL fires a statement's AFTER
-- row triggers when the statement ends, before the next one starts, and
-- counts the rows each statement changed in the transaction's own table
-- statistics (pg_stat_get_xact_tuples_*), which grow with every statement
-- that changes a row and never go back (a rolled-back savepoint's rows stay
-- counted). So (table, operation, that count) names one statement of the
-- transaction, and the settings that keep it are the transaction's own: two
-- statements never share a key, so no row's images are ever grouped with a
-- later change of the same row. With track_counts off the count stays 0:
-- then every row gets its own statement row.
--
-- Cost (issue 22): every expression of a PL/pgSQL function is set up anew
-- in each transaction, and every query is one executor start, so the first
-- row of a statement runs three expressions and one query (the gate and the
-- statement row together) besides its images, and the first statement of a
-- transaction one more query (run and action). bench/README.md has the
-- figures.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $capture$
DECLARE
    v_key   text;
    v_stmt  bigint;
    v_for   text;
    v_tag   sidecar.tag;
    v_set   text;
    v_seen  bigint;
BEGIN
    v_key := TG_RELID || left(TG_OP, 1) || CASE TG_OP WHEN 'UPDATE' THEN pg_stat_get_xact_tuples_updated(TG_RELID)
                                                      WHEN 'INSERT' THEN pg_stat_get_xact_tuples_inserted(TG_RELID)
                                                      ELSE pg_stat_get_xact_tuples_deleted(TG_RELID) END;
    IF current_setting('sidecar._row_for', true) = v_key AND right(v_key, 2) NOT IN ('U0', 'I0', 'D0') THEN
        v_stmt := current_setting('sidecar._row_stmt');
    ELSE
        -- The statement's first row. The run and action as the statement
        -- trigger keeps them: the run id, chr(1), the action key.
        v_for := coalesce(current_setting('sidecar.run_id', true), '') || chr(1)
                 || coalesce(current_setting('sidecar.action', true), '');
        IF starts_with(v_for, chr(1)) THEN
            -- Untagged: never gated, no run or action.
            IF @TAGGED_ONLY@ THEN
                RETURN NULL;
            END IF;
        ELSIF current_setting('sidecar._gate_ok', true) IS DISTINCT FROM
              v_for || chr(1) || pg_sequence_last_value('sidecar.gate_seq'::regclass) THEN
            -- The gate, asked in full: first in this session for this run and
            -- action, or since something moved sidecar.gate_seq (a pause, an
            -- undo). sidecar._tag() registers the run and the action and
            -- refuses an undone run; sidecar._gate() raises if a pause
            -- applies. The answer is kept for the session unless a table is
            -- paused (it may be another table's turn next).
            v_seen := coalesce(pg_sequence_last_value('sidecar.gate_seq'::regclass), 0);
            PERFORM pg_advisory_lock_shared(hashtext('sidecar.gate_seq')), pg_advisory_unlock_shared(hashtext('sidecar.gate_seq'));
            SELECT t.action_id, t.is_undo, t.automation INTO v_tag FROM sidecar._tag() t;
            IF NOT v_tag.is_undo AND EXISTS (
                SELECT FROM sidecar.pauses p WHERE p.target = ANY (ARRAY[v_tag.automation, '*', '@TRACKED_ID@'])) THEN
                PERFORM sidecar._gate(v_tag.automation, @TRACKED_ID@, 'Nothing of this statement was written.');
            END IF;
            IF v_tag.is_undo OR NOT EXISTS (SELECT FROM sidecar.pauses p WHERE p.scope = 'table') THEN
                v_set := set_config('sidecar._gate_ok', v_for || chr(1) || v_seen, false);
            END IF;
        END IF;
        IF NOT @SHAPE_WATCHED@ THEN
            IF (SELECT coalesce(string_agg(a.attnum || ':' || a.atttypid || ':' || a.atttypmod || ':' || a.attname,
                                           ',' ORDER BY a.attnum), '')
                FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = @RELID@ AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
               IS DISTINCT FROM @SHAPE@ THEN
                -- The table changed shape since this function was rendered:
                -- history first, then this row with SQL for the new shape
                -- (the next rows call the function rendered anew).
                PERFORM sidecar._sync_shape(@TRACKED_ID@);
                v_stmt := nextval('sidecar.stmt_seq');
                EXECUTE sidecar._capture_row_sql(@TRACKED_ID@, TG_OP) USING v_stmt, OLD, NEW,
                    (left(TG_OP, 1), nullif(split_part(v_for, chr(1), 1), '')::uuid,
                     nullif(split_part(v_for, chr(1), 2), ''), txid_current(), session_user,
                     statement_timestamp())::sidecar.stmt_head;
                RETURN NULL;
            END IF;
        END IF;
        -- Its head (sidecar._settle() makes the statement row from it), and
        -- the statement id for the statement's other rows.
        v_stmt := nextval('sidecar.stmt_seq');
        v_set := set_config('sidecar._row_for', v_key, true) || set_config('sidecar._row_stmt', v_stmt::text, true);
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
            VALUES (v_stmt, 'O', ('U', nullif(split_part(v_for, chr(1), 1), '')::uuid,
                                  nullif(split_part(v_for, chr(1), 2), ''), txid_current(), session_user,
                                  statement_timestamp())::sidecar.stmt_head, @OLD_COLS@),
                   (v_stmt, 'N', NULL, @NEW_COLS@);
        ELSIF TG_OP = 'INSERT' THEN
            INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
            VALUES (v_stmt, 'N', ('I', nullif(split_part(v_for, chr(1), 1), '')::uuid,
                                  nullif(split_part(v_for, chr(1), 2), ''), txid_current(), session_user,
                                  statement_timestamp())::sidecar.stmt_head, @NEW_COLS@);
        ELSE
            INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
            VALUES (v_stmt, 'O', ('D', nullif(split_part(v_for, chr(1), 1), '')::uuid,
                                  nullif(split_part(v_for, chr(1), 2), ''), txid_current(), session_user,
                                  statement_timestamp())::sidecar.stmt_head, @OLD_COLS@);
        END IF;
        RETURN NULL;
    END IF;

    -- Every row of the statement: its images.
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@)
        VALUES (v_stmt, 'O', @OLD_COLS@), (v_stmt, 'N', @NEW_COLS@);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@) VALUES (v_stmt, 'N', @NEW_COLS@);
    ELSE
        INSERT INTO @LOG@ (_stmt, _kind, @LOG_COLS@) VALUES (v_stmt, 'O', @OLD_COLS@);
    END IF;
    RETURN NULL;
END
$capture$;
