-- Row-level capture trigger function for one tracked table (capture mode
-- "row"). Rendered by sidecar._render_capture() like triggers/capture.sql,
-- with the same tokens and these:
--   @RELID@      the tracked table's oid (a partition's row trigger reports
--                the partition in TG_RELID)
--   @OLD_COLS@   OLD.<column>, ... in the order of @LOG_COLS@
--   @NEW_COLS@   NEW.<column>, ...
--   @HEAD@       the statement's head (sidecar.stmt_head) when v_first is
--                set (the statement's first row), else NULL
--   @KEY_OPEN@, @KEY_CLOSE@, @ROW_SAME@, @ROW_KEPT@  how a row's statement
--                key is written, whether it is the statement's kept key,
--                and what is kept at the statement's first row (below: for
--                a plain table the key itself, for a partitioned one every
--                partition's key)
--
-- It fires once per changed row (AFTER ... FOR EACH ROW, no transition
-- table), behind a WHEN clause that skips untagged writes (capture tagged)
-- without calling it. A row an UPDATE left as it was is not captured: the
-- function looks (OLD *= NEW compares the stored bytes), since PostgreSQL
-- parses a WHEN clause again for every statement and that costs more.
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
-- counted). So (operation, that count) names one statement on the table in
-- the transaction. The table's transaction-local setting sidecar._row<id>
-- holds the key of its latest statement and that statement's id
-- ('U42/1017'): two statements never share a key, so no row's images are
-- ever grouped with a later change of the same row. With track_counts off
-- the count stays 0: then the key is NULL and every row is a statement of
-- its own.
--
-- A partitioned table: its row triggers are its partitions' (TG_RELID is
-- the partition), and each partition counts its own rows, so a statement's
-- rows in two partitions have two keys. At the statement's first row every
-- leaf partition's key (pg_partition_tree) is kept, '|<partition>U<count>
-- |...|/<statement id>' (one query a statement, only on partitioned
-- tables); a row is of the statement while its partition's key is among
-- them, since any later statement that changes a partition makes its count
-- grow. A row moved to another partition by an UPDATE is, to row triggers,
-- a DELETE from one partition and an INSERT into the other: two statements
-- of their own (PostgreSQL fires no UPDATE row trigger for it).
--
-- The gate: a session keeps, for the session, that it found no pause for
-- its run (sidecar._gate_ok: the run id and the value of sidecar.gate_seq
-- it saw), and asks in full again (sidecar._row_gate()) when either
-- differs. A pause and an undo move sidecar.gate_seq
-- (sidecar._gate_moved()), so the next statement of every session asks
-- again and the pause stops it.
--
-- Cost (issue 22): every expression of a PL/pgSQL function is set up anew
-- in each transaction, every setting written is undone at its end, and
-- every query is one executor start. So a statement's first row runs five
-- expressions (key, its lookup, the gate, the new key, the operation) and
-- one query (its images), and nothing is written per statement or
-- transaction besides the images. bench/README.md has the figures.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $capture$
DECLARE
    v_key   text;
    v_stmt  bigint;
    v_first boolean;
BEGIN
    -- NULL (a new statement per row) when the count stays 0 (track_counts off).
    IF TG_OP = 'UPDATE' THEN
        IF OLD *= NEW THEN
            RETURN NULL;  -- the row is as it was
        END IF;
        v_key := @KEY_OPEN@'U' || nullif(pg_stat_get_xact_tuples_updated(TG_RELID), 0) || @KEY_CLOSE@;
    ELSIF TG_OP = 'INSERT' THEN
        v_key := @KEY_OPEN@'I' || nullif(pg_stat_get_xact_tuples_inserted(TG_RELID), 0) || @KEY_CLOSE@;
    ELSE
        v_key := @KEY_OPEN@'D' || nullif(pg_stat_get_xact_tuples_deleted(TG_RELID), 0) || @KEY_CLOSE@;
    END IF;
    IF @ROW_SAME@ THEN
        -- Another row of the statement: its images under the statement's id.
        v_stmt := split_part(current_setting('sidecar._row@TRACKED_ID@'), '/', 2);
    ELSE
        -- The statement's first row. The gate, asked in full only when this
        -- session has no answer for its run, or something moved
        -- sidecar.gate_seq (a pause, an undo) since it got one.
        v_first := true;
        IF current_setting('sidecar._gate_ok', true) IS DISTINCT FROM
           current_setting('sidecar.run_id', true) || pg_sequence_last_value('sidecar.gate_seq'::regclass) THEN
            IF NOT sidecar._row_gate(@TRACKED_ID@, @TAGGED_ONLY@) THEN
                RETURN NULL;
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
                -- (the next rows call the function rendered anew), under a
                -- statement id drawn after the columns it retired (readers
                -- tell which images hold a retired column by these ids).
                PERFORM sidecar._sync_shape(@TRACKED_ID@);
                v_stmt := split_part(set_config('sidecar._row@TRACKED_ID@',
                                                @ROW_KEPT@ || nextval('sidecar.stmt_seq'), true), '/', 2);
                EXECUTE sidecar._capture_row_sql(@TRACKED_ID@, TG_OP) USING v_stmt, OLD, NEW, @HEAD@;
                RETURN NULL;
            END IF;
        END IF;
        -- A statement id, kept with the statement's key for its other rows
        -- (one expression: each costs its setup in every transaction).
        v_stmt := split_part(set_config('sidecar._row@TRACKED_ID@',
                                        @ROW_KEPT@ || nextval('sidecar.stmt_seq'), true), '/', 2);
    END IF;

    -- The images. A statement's first row gives its first image the
    -- statement's head, from which sidecar._settle() makes its row.
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@)
        VALUES (v_stmt, 'O', @HEAD@, @OLD_COLS@), (v_stmt, 'N', NULL, @NEW_COLS@);
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@) VALUES (v_stmt, 'N', @HEAD@, @NEW_COLS@);
    ELSE
        INSERT INTO @LOG@ (_stmt, _kind, _head, @LOG_COLS@) VALUES (v_stmt, 'O', @HEAD@, @OLD_COLS@);
    END IF;
    RETURN NULL;
END
$capture$;
