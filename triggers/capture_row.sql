-- Row-level capture trigger function for one tracked table (capture mode
-- "row"). Rendered by sidecar._render_capture() like triggers/capture.sql,
-- with the same tokens and these:
--   @RELID@      the tracked table's oid (a partition's row trigger reports
--                the partition in TG_RELID)
--   @OLD_COLS@   OLD.<column>, ... in the order of @LOG_COLS@
--   @NEW_COLS@   NEW.<column>, ...
--   @HEAD@       the statement's head (sidecar.stmt_head) when v_set is set
--                (the statement's first row), else NULL
--   @ROW_KEY@, @ROW_SAME@, @ROW_FOR@  a row's statement key, whether it is
--                the statement's kept key, and the key kept at the
--                statement's first row (below: for a plain table the key
--                itself, for a partitioned one every partition's key)
--
-- It fires once per changed row (AFTER ... FOR EACH ROW, no transition
-- table), behind a WHEN clause that skips untagged writes (capture tagged)
-- and UPDATEs that changed nothing, without calling it.
--
-- What it writes (migration 027): row images only. The first image of each
-- statement carries the statement's head (sidecar.stmt_head: op, run,
-- action key, txid, user, time), from which sidecar._settle() makes the
-- statement row (and the action) when history is read; the others carry the
-- statement id alone.
--
-- Which statement a row belongs to: PostgreSQL fires a statement's AFTER
-- row triggers when the statement ends, before the next one starts, and
-- counts the rows each statement changed in the transaction's own table
-- statistics (pg_stat_get_xact_tuples_*), which grow with every statement
-- that changes a row and never go back (a rolled-back savepoint's rows stay
-- counted). So (table, operation, that count) names one statement of the
-- transaction, kept with its statement id in transaction-local settings: two
-- statements never share a key, so no row's images are ever grouped with a
-- later change of the same row. With track_counts off the count stays 0:
-- then every row is a statement of its own.
--
-- A partitioned table: its row triggers are its partitions' (TG_RELID is
-- the partition), and each partition counts its own rows, so a statement's
-- rows in two partitions have two keys. At the statement's first row every
-- leaf partition's key (pg_partition_tree) is kept, '|<partition><op>
-- <count>|...' (one query a statement, only on partitioned tables); a row
-- is of the statement while its partition's key is among them, since any
-- later statement that changes a partition makes its count grow. A row
-- moved to another partition by an UPDATE is, to row triggers, a DELETE
-- from one partition and an INSERT into the other: two statements of
-- their own (PostgreSQL fires no UPDATE row trigger for it).
--
-- The gate: a session keeps, for the session, that it found no pause for
-- its run (sidecar._gate_ok: the run id and the value of sidecar.gate_seq
-- it saw), and asks in full again when either differs. A pause and an undo
-- move sidecar.gate_seq (sidecar._gate_moved()), so the next statement of
-- every session asks again and the pause stops it.
--
-- Cost (issue 22): every expression of a PL/pgSQL function is set up anew
-- in each transaction and every query is one executor start, so a
-- statement's first row runs four expressions and one query (its images),
-- and nothing is written per statement or transaction besides the images.
-- bench/README.md has the figures.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $capture$
DECLARE
    v_key   text;
    v_for   text;
    v_tag   sidecar.tag;
    v_set   text;
    v_seen  bigint;
BEGIN
    -- NULL (a new statement per row) when the count stays 0 (track_counts off).
    v_key := @ROW_KEY@;
    IF @ROW_SAME@ THEN
        NULL;  -- another row of the statement: its images under the statement's id
    ELSE
        -- The statement's first row: a statement id, kept with the
        -- statement's key for its other rows. Then the gate, asked in full
        -- only when this session has no answer for its run, or something
        -- moved sidecar.gate_seq (a pause, an undo) since it got one.
        v_set := set_config('sidecar._row_for', @ROW_FOR@, true)
                 || set_config('sidecar._row_stmt', nextval('sidecar.stmt_seq')::text, true);
        IF current_setting('sidecar._gate_ok', true) IS DISTINCT FROM
           current_setting('sidecar.run_id', true) || pg_sequence_last_value('sidecar.gate_seq'::regclass) THEN
            v_for := concat(current_setting('sidecar.run_id', true), chr(1), current_setting('sidecar.action', true));
            IF starts_with(v_for, chr(1)) THEN
                -- Untagged: never gated, no run or action.
                IF @TAGGED_ONLY@ THEN
                    RETURN NULL;
                END IF;
            ELSE
                -- sidecar._tag() registers the run and the action, refuses an
                -- undone run and makes history partitions ahead when due
                -- (start_run() and every command make them too: a session
                -- that writes on under one run does not look again);
                -- sidecar._gate() raises if a pause applies
                -- (after waiting for a pause or undo being committed:
                -- sidecar._gate_moved()). The answer is kept for the session,
                -- unless a table is paused (another table may be next).
                v_seen := pg_sequence_last_value('sidecar.gate_seq'::regclass);
                PERFORM pg_advisory_lock_shared(hashtext('sidecar.gate_seq')),
                        pg_advisory_unlock_shared(hashtext('sidecar.gate_seq'));
                SELECT t.action_id, t.is_undo, t.automation INTO v_tag FROM sidecar._tag() t;
                IF NOT v_tag.is_undo AND EXISTS (
                    SELECT FROM sidecar.pauses p WHERE p.target = ANY (ARRAY[v_tag.automation, '*', '@TRACKED_ID@'])) THEN
                    PERFORM sidecar._gate(v_tag.automation, @TRACKED_ID@, 'Nothing of this statement was written.');
                END IF;
                IF v_tag.is_undo OR NOT EXISTS (SELECT FROM sidecar.pauses p WHERE p.scope = 'table') THEN
                    v_set := set_config('sidecar._gate_ok', split_part(v_for, chr(1), 1) || v_seen, false);
                END IF;
            END IF;
        END IF;
        -- Where no event trigger re-renders this function on ALTER TABLE
        -- (sidecar._shapes_watched()), every statement checks the shape.
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
                -- A statement id after the columns it retired (readers
                -- tell which images hold a retired column by these ids).
                v_set := set_config('sidecar._row_stmt', nextval('sidecar.stmt_seq')::text, true);
                EXECUTE sidecar._capture_row_sql(@TRACKED_ID@, TG_OP)
                USING current_setting('sidecar._row_stmt')::bigint, OLD, NEW, @HEAD@;
                RETURN NULL;
            END IF;
        END IF;
    END IF;

    -- The images. A statement's first row (v_set set) gives its first image
    -- the statement's head, from which sidecar._settle() makes its row.
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
        VALUES (current_setting('sidecar._row_stmt')::bigint, 'O',
                @HEAD@,
                @OLD_COLS@),
               (current_setting('sidecar._row_stmt')::bigint, 'N', NULL, @NEW_COLS@);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
        VALUES (current_setting('sidecar._row_stmt')::bigint, 'N',
                @HEAD@,
                @NEW_COLS@);
    ELSE
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
        VALUES (current_setting('sidecar._row_stmt')::bigint, 'O',
                @HEAD@,
                @OLD_COLS@);
    END IF;
    RETURN NULL;
END
$capture$;
