-- Capture: tracking tables, rendering their capture triggers, and the
-- per-statement bookkeeping those triggers call. Re-applied by
-- `sidecar install` whenever this file changes (CREATE OR REPLACE only).
--
-- SQLSTATEs raised here (listed in the README):
--   SC001 automation or table paused       SC002 TRUNCATE refused
--   SC003 bad sidecar.run_id               SC004 table cannot be tracked
--   SC005 no run active in this session
--   SC009 a write tagged with a run that was undone

-- Functions of earlier releases (an upgrade must not leave them behind).
DROP FUNCTION IF EXISTS sidecar._pause_message(text, int);
DROP FUNCTION IF EXISTS sidecar._begin_statement(int, oid, text, text);  -- now inline in the capture template

-- The type a history column gets for a table column: the same type, except
-- that domains are stored as their base type (their checks apply to the live
-- table, not to history).
CREATE OR REPLACE FUNCTION sidecar._log_type(p_type oid, p_typmod int)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_log_type$
DECLARE
    v_type   oid := p_type;
    v_typmod int := p_typmod;
    r_type   record;
BEGIN
    LOOP
        SELECT t.typtype, t.typbasetype, t.typtypmod INTO r_type
        FROM pg_catalog.pg_type t WHERE t.oid = v_type;
        EXIT WHEN r_type.typtype IS DISTINCT FROM 'd';
        v_type := r_type.typbasetype;
        v_typmod := r_type.typtypmod;
    END LOOP;
    RETURN pg_catalog.format_type(v_type, v_typmod);
END
$_log_type$;

-- The columns capture writes (not dropped, not generated) as one comparable
-- string; a capture function embeds the shape it was rendered for.
CREATE OR REPLACE FUNCTION sidecar._shape(p_relid oid)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_shape$
    -- The same expression is inlined in triggers/capture.sql (no call on the write path).
    SELECT coalesce(string_agg(a.attnum || ':' || a.atttypid || ':' || a.atttypmod || ':' || a.attname,
                               ',' ORDER BY a.attnum), '')
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
$_shape$;

-- The primary key's columns, in key order (NULL: the table has none).
CREATE OR REPLACE FUNCTION sidecar._pk_columns(p_table regclass)
RETURNS name[] LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_pk_columns$
    SELECT array_agg(a.attname ORDER BY k.ord)
    FROM pg_catalog.pg_constraint con
    CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
    WHERE con.conrelid = p_table AND con.contype = 'p'
$_pk_columns$;

-- Bring a history table in line with its tracked table: add columns that are
-- new, follow renames, and retire (rename away, keep) columns that were
-- dropped or retyped, so that no history is lost and no write fails.
CREATE OR REPLACE FUNCTION sidecar._sync_columns(p_tracked_id int)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_sync_columns$
DECLARE
    r_tracked  record;
    r_col      record;
    v_map      record;
    v_retired  name;
    v_reserved name;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;

    -- History names its own columns _stmt, _kind and _head, next to the table's.
    SELECT a.attname INTO v_reserved FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = r_tracked.relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      AND a.attname IN ('_stmt', '_kind', '_head')
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'sidecar: table % has a column named %, a name sidecar''s history keeps for its own use',
                        sidecar._qualname(r_tracked.relid), v_reserved
            USING ERRCODE = 'SC004',
                  HINT = format('Rename the column (ALTER TABLE %s RENAME COLUMN %I TO ...); nothing was changed.',
                                sidecar._qualname(r_tracked.relid), v_reserved);
    END IF;

    -- Columns gone from the table, or retyped: retire their history column.
    FOR v_map IN
        SELECT c.* FROM sidecar.columns c
        LEFT JOIN pg_catalog.pg_attribute a
               ON a.attrelid = r_tracked.relid AND a.attnum = c.attnum
              AND NOT a.attisdropped AND a.attgenerated = ''
        WHERE c.tracked_id = p_tracked_id AND NOT c.retired
          AND (a.attnum IS NULL OR sidecar._log_type(a.atttypid, a.atttypmod) <> c.type_name)
    LOOP
        v_retired := left(v_map.log_column, 40) || '~' || v_map.attnum || '~'
                     || (SELECT count(*) FROM sidecar.columns
                         WHERE tracked_id = p_tracked_id AND retired);
        EXECUTE format('ALTER TABLE sidecar.%I RENAME COLUMN %I TO %I',
                       r_tracked.log_table, v_map.log_column, v_retired);
        UPDATE sidecar.columns SET log_column = v_retired, retired = true,
                                   retired_stmt = nextval('sidecar.stmt_seq')
        WHERE tracked_id = p_tracked_id AND log_column = v_map.log_column;
    END LOOP;

    FOR r_col IN
        SELECT a.attnum, a.attname, sidecar._log_type(a.atttypid, a.atttypmod) AS type_name
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = r_tracked.relid AND a.attnum > 0
          AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attnum
    LOOP
        SELECT * INTO v_map FROM sidecar.columns
        WHERE tracked_id = p_tracked_id AND attnum = r_col.attnum AND NOT retired;

        -- A retired history column may hold the name this column needs.
        IF v_map IS NULL OR v_map.log_column <> r_col.attname THEN
            FOR v_retired IN
                SELECT log_column FROM sidecar.columns
                WHERE tracked_id = p_tracked_id AND log_column = r_col.attname AND retired
            LOOP
                EXECUTE format('ALTER TABLE sidecar.%I RENAME COLUMN %I TO %I',
                               r_tracked.log_table, v_retired, left(v_retired, 40) || '~' || r_col.attnum || '~r');
                UPDATE sidecar.columns SET log_column = left(v_retired, 40) || '~' || r_col.attnum || '~r'
                WHERE tracked_id = p_tracked_id AND log_column = v_retired;
            END LOOP;
        END IF;

        IF v_map IS NULL THEN
            EXECUTE format('ALTER TABLE sidecar.%I ADD COLUMN %I %s',
                           r_tracked.log_table, r_col.attname, r_col.type_name);
            INSERT INTO sidecar.columns (tracked_id, attnum, log_column, type_name, since_stmt)
            VALUES (p_tracked_id, r_col.attnum, r_col.attname, r_col.type_name,
                    CASE WHEN r_tracked.shape = '' THEN 0 ELSE nextval('sidecar.stmt_seq') END);
        ELSIF v_map.log_column <> r_col.attname THEN
            EXECUTE format('ALTER TABLE sidecar.%I RENAME COLUMN %I TO %I',
                           r_tracked.log_table, v_map.log_column, r_col.attname);
            UPDATE sidecar.columns SET log_column = r_col.attname
            WHERE tracked_id = p_tracked_id AND log_column = v_map.log_column;
        END IF;
    END LOOP;

    -- The key's column names follow a rename too (kept as they were when the
    -- table has no primary key any more: old history still needs them).
    UPDATE sidecar.tracked
    SET shape = sidecar._shape(relid),
        pk_columns = coalesce(sidecar._pk_columns(relid), pk_columns)
    WHERE tracked_id = p_tracked_id;
END
$_sync_columns$;

-- Bring a table's history columns (and its capture function, while tracked)
-- in line with the table's shape now. The capture trigger does this on the
-- table's next captured write; an undo calls it first, so that it matches
-- history to columns renamed, dropped or retyped since and not written yet.
CREATE OR REPLACE FUNCTION sidecar._sync_shape(p_tracked_id int)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_sync_shape$
DECLARE
    r_tracked record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sidecar._sync_columns'), p_tracked_id);
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = r_tracked.relid) THEN
        RETURN;  -- the table was dropped: its history stays as it is
    END IF;
    IF sidecar._shape(r_tracked.relid) IS DISTINCT FROM r_tracked.shape THEN
        PERFORM sidecar._sync_columns(p_tracked_id);
        IF r_tracked.active THEN
            PERFORM sidecar._render_capture(p_tracked_id);
        END IF;
    END IF;
END
$_sync_shape$;

-- The history columns capture fills and the table columns it fills them
-- from, quoted and in the same order.
CREATE OR REPLACE FUNCTION sidecar._capture_columns(p_tracked_id int, OUT log_cols text, OUT src_cols text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_capture_columns$
    SELECT string_agg(format('%I', c.log_column), ', ' ORDER BY a.attnum),
           string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum)
    FROM sidecar.columns c
    JOIN sidecar.tracked t ON t.tracked_id = c.tracked_id
    JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attnum = c.attnum
    WHERE c.tracked_id = p_tracked_id AND NOT c.retired
$_capture_columns$;

-- (Re)create a tracked table's capture function from its capture mode's
-- template: 'capture' (statement triggers) or 'capture_row' (row triggers).
CREATE OR REPLACE FUNCTION sidecar._render_capture(p_tracked_id int)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_render_capture$
DECLARE
    r_tracked  record;
    v_body     text;
    v_log_cols text;
    v_src_cols text;
    v_old_cols text;
    v_new_cols text;
    v_watched  boolean;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    SELECT body INTO STRICT v_body FROM sidecar.templates
    WHERE name = CASE r_tracked.capture_mode WHEN 'row' THEN 'capture_row' ELSE 'capture' END;
    SELECT l.log_cols, l.src_cols INTO v_log_cols, v_src_cols FROM sidecar._capture_columns(p_tracked_id) l;
    SELECT string_agg('OLD.' || format('%I', a.attname), ', ' ORDER BY a.attnum),
           string_agg('NEW.' || format('%I', a.attname), ', ' ORDER BY a.attnum)
      INTO v_old_cols, v_new_cols
    FROM sidecar.columns c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = r_tracked.relid AND a.attnum = c.attnum
    WHERE c.tracked_id = p_tracked_id AND NOT c.retired;

    -- The statement key (triggers/capture_row.sql): on a partitioned table
    -- the partition's key, and every leaf partition's key kept at a
    -- statement's first row.
    IF (SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = r_tracked.relid) THEN
        v_body := replace(v_body, '@KEY_OPEN@', $k$'|' || TG_RELID || $k$);
        v_body := replace(v_body, '@KEY_CLOSE@', $k$'|'$k$);
        v_body := replace(v_body, '@ROW_SAME@',
            $k$strpos(split_part(current_setting('sidecar._row@TRACKED_ID@', true), '/', 1), v_key) > 0$k$);
        v_body := replace(v_body, '@ROW_KEPT@',
            $k$(SELECT '|' || string_agg(p.relid::oid || left(TG_OP, 1) || CASE TG_OP $k$
            || $k$WHEN 'UPDATE' THEN pg_stat_get_xact_tuples_updated(p.relid) $k$
            || $k$WHEN 'INSERT' THEN pg_stat_get_xact_tuples_inserted(p.relid) $k$
            || $k$ELSE pg_stat_get_xact_tuples_deleted(p.relid) END, '|') || '|/' $k$
            || format('FROM pg_catalog.pg_partition_tree(%s) p WHERE p.isleaf)', r_tracked.relid::oid));
    ELSE
        v_body := replace(v_body, '@KEY_OPEN@', '');
        v_body := replace(v_body, '@KEY_CLOSE@', $k$'/'$k$);
        v_body := replace(v_body, '@ROW_SAME@', $k$starts_with(current_setting('sidecar._row@TRACKED_ID@', true), v_key)$k$);
        v_body := replace(v_body, '@ROW_KEPT@', $k$coalesce(v_key, '/')$k$);
    END IF;
    v_body := replace(v_body, '@FUNC@', format('sidecar.%I', 'capture_' || p_tracked_id));
    v_body := replace(v_body, '@TRACKED_ID@', p_tracked_id::text);
    v_body := replace(v_body, '@RELID@', r_tracked.relid::oid::text);
    v_body := replace(v_body, '@LOG@', format('sidecar.%I', r_tracked.log_table));
    v_body := replace(v_body, '@LOG_COLS@', v_log_cols);
    v_body := replace(v_body, '@SRC_COLS@', v_src_cols);
    v_body := replace(v_body, '@OLD_COLS@', v_old_cols);
    v_body := replace(v_body, '@NEW_COLS@', v_new_cols);
    -- One line: the template's header names the token in a comment.
    v_body := replace(v_body, '@HEAD@',
        'CASE WHEN v_first THEN (left(TG_OP, 1), '
        || 'nullif(current_setting(''sidecar.run_id'', true), '''')::uuid, '
        || 'nullif(current_setting(''sidecar.action'', true), ''''), txid_current(), session_user, '
        || 'statement_timestamp())::sidecar.stmt_head END');
    v_body := replace(v_body, '@SHAPE@', format('%L', r_tracked.shape));
    v_body := replace(v_body, '@TAGGED_ONLY@', (r_tracked.capture = 'tagged')::text);
    v_watched := sidecar._shapes_watched();
    v_body := replace(v_body, '@SHAPE_WATCHED@', v_watched::text);
    EXECUTE v_body;
    UPDATE sidecar.tracked SET shape_watched = v_watched
    WHERE tracked_id = p_tracked_id AND shape_watched IS DISTINCT FROM v_watched;
END
$_render_capture$;

-- The INSERT a row capture function runs for one row when its table's shape
-- changed since it was rendered ($1 the statement id, $2 OLD, $3 NEW, $4 the
-- statement's head, migration 027).
CREATE OR REPLACE FUNCTION sidecar._capture_row_sql(p_tracked_id int, p_op text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_capture_row_sql$
DECLARE
    r_tracked  record;
    v_log_cols text;
    v_old      text;
    v_new      text;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    SELECT string_agg(format('%I', c.log_column), ', ' ORDER BY a.attnum),
           string_agg(format('($2).%I', a.attname), ', ' ORDER BY a.attnum),
           string_agg(format('($3).%I', a.attname), ', ' ORDER BY a.attnum)
      INTO v_log_cols, v_old, v_new
    FROM sidecar.columns c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = r_tracked.relid AND a.attnum = c.attnum
    WHERE c.tracked_id = p_tracked_id AND NOT c.retired;
    RETURN format('INSERT INTO sidecar.%I (_stmt, _kind, _head, %s) ', r_tracked.log_table, v_log_cols)
        || CASE p_op
           WHEN 'INSERT' THEN format('VALUES ($1, %L, $4, %s)', 'N', v_new)
           WHEN 'DELETE' THEN format('VALUES ($1, %L, $4, %s)', 'O', v_old)
           ELSE format('VALUES ($1, %L, $4, %s), ($1, %L, NULL, %s)', 'O', v_old, 'N', v_new)
           END;
END
$_capture_row_sql$;

-- The INSERT a capture function runs when its table's shape changed since it
-- was rendered (run with EXECUTE inside the trigger, where the transition
-- tables are visible; $1 is the statement id).
CREATE OR REPLACE FUNCTION sidecar._capture_sql(p_tracked_id int, p_op text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_capture_sql$
DECLARE
    r_tracked  record;
    v_log_cols text;
    v_src_cols text;
    v_select   text;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    SELECT l.log_cols, l.src_cols INTO v_log_cols, v_src_cols FROM sidecar._capture_columns(p_tracked_id) l;

    v_select := CASE p_op
        WHEN 'INSERT' THEN format('SELECT $1, %L, %s FROM sidecar_new', 'N', v_src_cols)
        WHEN 'DELETE' THEN format('SELECT $1, %L, %s FROM sidecar_old', 'O', v_src_cols)
        ELSE format('SELECT $1, %L, %s FROM sidecar_old UNION ALL SELECT $1, %L, %s FROM sidecar_new',
                    'O', v_src_cols, 'N', v_src_cols)
    END;
    RETURN format('INSERT INTO sidecar.%I (_stmt, _kind, %s) %s', r_tracked.log_table, v_log_cols, v_select);
END
$_capture_sql$;

-- The gate: raise SC001 when the automation, every automation ('*') or the
-- table is paused, with the way out that fits the pause; else true, so that
-- the capture trigger's INSERT can use it as a condition. p_what says what
-- was refused (a write, or starting a run). VOLATILE, though it only reads:
-- the capture INSERT calls it for a pause row it found, and a STABLE call
-- whose arguments are all parameters is a constant to the planner, which
-- then evaluated it once per statement before looking at any pause (a fifth
-- of a tagged OLTP transaction's CPU).
DROP FUNCTION IF EXISTS sidecar._gate(text, int, text);  -- it returned void before
CREATE OR REPLACE FUNCTION sidecar._gate(p_automation text, p_tracked_id int, p_what text)
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $_gate$
DECLARE
    r_pause  record;
    v_table  text;
BEGIN
    SELECT p.* INTO r_pause FROM sidecar.pauses p
    WHERE (p.scope = 'automation' AND p.target IN (p_automation, '*'))
       OR (p.scope = 'table' AND p.target = p_tracked_id::text)
    ORDER BY p.scope, p.target = '*'
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN true;
    END IF;
    -- DETAIL: the pause as JSON, for clients (sidecar.errors.Paused reads it).
    IF r_pause.scope = 'table' THEN
        v_table := (SELECT sidecar._qualname(t.relid) FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id);
        RAISE EXCEPTION 'sidecar: table % is paused for automations since % by %: %', v_table,
                        to_char(r_pause.paused_at, 'YYYY-MM-DD HH24:MI:SS TZ'), r_pause.paused_by, r_pause.reason
            USING ERRCODE = 'SC001',
                  DETAIL = jsonb_build_object('scope', 'table', 'target', v_table, 'automation', p_automation,
                                              'paused_by', r_pause.paused_by, 'paused_at', r_pause.paused_at,
                                              'reason', r_pause.reason)::text,
                  HINT = format('%s An operator resumes with: sidecar resume --table %s', p_what, v_table);
    END IF;
    RAISE EXCEPTION 'sidecar: automation % is paused since % by %: %',
                    CASE WHEN r_pause.target = '*' THEN '"*" (every automation)' ELSE quote_ident(r_pause.target) END,
                    to_char(r_pause.paused_at, 'YYYY-MM-DD HH24:MI:SS TZ'), r_pause.paused_by, r_pause.reason
        USING ERRCODE = 'SC001',
              DETAIL = jsonb_build_object('scope', 'automation', 'target', r_pause.target, 'automation', p_automation,
                                          'paused_by', r_pause.paused_by, 'paused_at', r_pause.paused_at,
                                          'reason', r_pause.reason)::text,
              HINT = format('%s An operator resumes with: sidecar resume %s', p_what,
                            CASE WHEN r_pause.target = '*' THEN '''*''' ELSE quote_ident(r_pause.target) END);
END
$_gate$;

-- Register a run id first seen in this session (set by hand, not by
-- start_run): named after sidecar.automation, else application_name; it
-- starts its own lineage.
CREATE OR REPLACE FUNCTION sidecar._register_run(p_run uuid)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_register_run$
    INSERT INTO sidecar.runs (run_id, automation, lineage, backend_pid, backend_start)
    SELECT p_run,
           coalesce(nullif(current_setting('sidecar.automation', true), ''),
                    nullif(current_setting('application_name', true), ''), 'unknown'),
           p_run, pg_backend_pid(),
           (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid())
    ON CONFLICT ON CONSTRAINT runs_pkey DO NOTHING
$_register_run$;

-- The run and action a tagged write belongs to, registering either on first
-- sight (a run id first seen in a write is registered on the spot). The
-- capture trigger calls this for the first tagged write of a transaction or
-- action, and keeps the answer for the rest of the transaction. Its lookups
-- are by key, but a plan cached while sidecar.actions was small (and
-- analyzed so) would scan the whole table in every transaction as it grows:
-- sequential scans are off in here.
CREATE OR REPLACE FUNCTION sidecar._tag(OUT run_id uuid, OUT automation text, OUT is_undo boolean,
                                        OUT action_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
AS $_tag$
DECLARE
    v_run_text text := coalesce(current_setting('sidecar.run_id', true), '');
    v_key      text;
    v_status   text;
    v_undone_by uuid;
    v_undone_at timestamptz;
BEGIN
    -- Checked by pattern, not by catching the cast error: an exception
    -- block would open a subtransaction on the write path.
    IF v_run_text !~ '^\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?$' THEN
        RAISE EXCEPTION 'sidecar: sidecar.run_id % is not a run id', quote_literal(v_run_text)
            USING ERRCODE = 'SC003',
                  HINT = 'Set it to the uuid returned by sidecar.start_run(), or RESET sidecar.run_id.';
    END IF;
    run_id := v_run_text::uuid;
    -- History partitions ahead of the statement sequence (fn_partitions.sql),
    -- only when a single empty partition is left: making them here holds the
    -- DEFAULT partition's lock until this writer commits, which readers of
    -- history that cannot prune it wait for. start_run() and every command
    -- make them a partition earlier, so this is the fallback. (Read by key and
    -- by function: a sequential scan with enable_seqscan off costs enough for
    -- the planner to JIT-compile the query, 100 ms in every transaction.)
    IF (SELECT pg_sequence_last_value('sidecar.stmt_seq'::regclass) - p.width >= p.refill_at
        FROM sidecar.partitioning p WHERE p.one) THEN
        PERFORM sidecar._partitions_ahead();
    END IF;
    v_key := coalesce(nullif(current_setting('sidecar.action', true), ''), 'tx:' || txid_current());
    SELECT r.automation, r.undo_of IS NOT NULL, a.action_id, r.status, r.undone_by
      INTO automation, is_undo, action_id, v_status, v_undone_by
    FROM sidecar.runs r LEFT JOIN sidecar.actions a ON a.run_id = r.run_id AND a.key = v_key
    WHERE r.run_id = _tag.run_id;
    -- A run undone whole is over: what its automation writes next would land
    -- under a run that reads as undone, and outside what the undo covered.
    -- (Unless that undo was undone in turn: then the run's changes are back.)
    IF v_undone_by IS NOT NULL THEN
        SELECT u.started_at INTO v_undone_at FROM sidecar.runs u
        WHERE u.run_id = v_undone_by AND u.undone_by IS NULL;
    END IF;
    IF v_undone_at IS NOT NULL THEN
        RAISE EXCEPTION 'sidecar: run % was undone by run % at %; its automation writes on under a new run',
                        run_id, v_undone_by, to_char(v_undone_at, 'YYYY-MM-DD HH24:MI:SS TZ')
            USING ERRCODE = 'SC009',
                  HINT = 'Nothing of this statement was written. Start a new run: SELECT sidecar.start_run(...).';
    END IF;
    IF v_status IS DISTINCT FROM 'running' AND v_status IS NOT NULL THEN
        -- A write tagged with a finished run: its kept counts are out of date.
        DELETE FROM sidecar.run_counts c WHERE c.run_id = _tag.run_id;
    END IF;
    IF automation IS NULL THEN
        PERFORM sidecar._register_run(run_id);
        SELECT r.automation, r.undo_of IS NOT NULL INTO automation, is_undo
        FROM sidecar.runs r WHERE r.run_id = _tag.run_id;
    END IF;
    IF action_id IS NULL THEN
        INSERT INTO sidecar.actions AS a (run_id, key) VALUES (_tag.run_id, v_key)
        ON CONFLICT ON CONSTRAINT actions_run_id_key_key DO NOTHING
        RETURNING a.action_id INTO action_id;
        IF action_id IS NULL THEN  -- another session of the same run made it
            SELECT a.action_id INTO action_id FROM sidecar.actions a WHERE a.run_id = _tag.run_id AND a.key = v_key;
        END IF;
    END IF;
END
$_tag$;

CREATE OR REPLACE FUNCTION sidecar._refuse_truncate()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_refuse_truncate$
BEGIN
    IF coalesce(current_setting('sidecar.run_id', true), '') <> '' THEN
        RAISE EXCEPTION 'sidecar: TRUNCATE of tracked table %.% by a run is refused: it cannot be undone row by row',
                        quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME)
            USING ERRCODE = 'SC002', HINT = 'Use DELETE, which is captured and can be undone.';
    END IF;
    RETURN NULL;
END
$_refuse_truncate$;

CREATE OR REPLACE FUNCTION sidecar._log_event(p_kind text, p_run uuid, p_summary text, p_detail jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_log_event$
    INSERT INTO sidecar.events (kind, run_id, summary, detail)
    VALUES (p_kind, p_run, p_summary, coalesce(p_detail, '{}'))
    RETURNING event_id
$_log_event$;

-- Remove sidecar's triggers from a table (those it has).
CREATE OR REPLACE FUNCTION sidecar._drop_triggers(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_drop_triggers$
DECLARE
    v_trigger name;
BEGIN
    FOR v_trigger IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = p_table AND NOT t.tgisinternal AND t.tgname LIKE 'sidecar\_%'
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, p_table);
    END LOOP;
END
$_drop_triggers$;

-- (Re)create a tracked table's capture and TRUNCATE triggers, for its
-- capture mode. For a table that captures only tagged writes, the WHEN
-- clause skips the function call altogether for untagged writes. A row
-- that an UPDATE left as it was is left out by the row-mode function itself
-- (a WHEN clause is parsed again for every statement: OLD *<> NEW there cost
-- more); the statement trigger captures it, and readers skip it.
CREATE OR REPLACE FUNCTION sidecar._create_triggers(p_tracked_id int)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_create_triggers$
DECLARE
    r_tracked record;
    v_func    text := format('sidecar.%I', 'capture_' || p_tracked_id);
    v_trigger name;
    v_when    text := '';
    v_tagged  text := $w$pg_catalog.current_setting('sidecar.run_id', true) <> ''$w$;
BEGIN
    SELECT * INTO STRICT r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    IF r_tracked.capture = 'tagged' THEN
        -- Evaluated once per statement (per row in row mode): kept to one
        -- call (a null setting is not <> '').
        v_when := format('WHEN (%s) ', v_tagged);
    END IF;
    FOR v_trigger IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = r_tracked.relid AND NOT t.tgisinternal
          AND t.tgname IN ('sidecar_capture_insert', 'sidecar_capture_update',
                           'sidecar_capture_delete', 'sidecar_refuse_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, r_tracked.relid);
    END LOOP;
    IF r_tracked.capture_mode = 'row' THEN
        EXECUTE format('CREATE TRIGGER sidecar_capture_insert AFTER INSERT ON %s FOR EACH ROW %s'
                       'EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
        EXECUTE format('CREATE TRIGGER sidecar_capture_update AFTER UPDATE ON %s FOR EACH ROW %s'
                       'EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
        EXECUTE format('CREATE TRIGGER sidecar_capture_delete AFTER DELETE ON %s FOR EACH ROW %s'
                       'EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
    ELSE
        EXECUTE format('CREATE TRIGGER sidecar_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS sidecar_new '
                       'FOR EACH STATEMENT %s EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
        EXECUTE format('CREATE TRIGGER sidecar_capture_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS sidecar_old NEW TABLE AS sidecar_new '
                       'FOR EACH STATEMENT %s EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
        EXECUTE format('CREATE TRIGGER sidecar_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS sidecar_old '
                       'FOR EACH STATEMENT %s EXECUTE FUNCTION %s()', r_tracked.relid, v_when, v_func);
    END IF;
    EXECUTE format('CREATE TRIGGER sidecar_refuse_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION sidecar._refuse_truncate()', r_tracked.relid);
END
$_create_triggers$;

-- Start tracking a table: history table, capture function and triggers.
-- Tracking a tracked table again updates its options. p_capture_mode
-- (statement or row) NULL: a tracked table keeps its mode, a new one takes
-- the setting sidecar.capture_mode when set (ALTER DATABASE ... SET
-- sidecar.capture_mode = 'row'), else statement.
DROP FUNCTION IF EXISTS sidecar.track(regclass, text, name, text);  -- before p_capture_mode
CREATE OR REPLACE FUNCTION sidecar.track(p_table regclass, p_capture text DEFAULT 'tagged',
                                         p_label_column name DEFAULT NULL,
                                         p_display_name text DEFAULT NULL,
                                         p_capture_mode text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $track$
DECLARE
    v_relkind  "char";
    v_pk       name[];
    v_id       int;
    v_log      name;
    v_role     name;
    v_mode     text;
    v_was      text;
BEGIN
    SELECT c.relkind INTO v_relkind FROM pg_catalog.pg_class c WHERE c.oid = p_table;
    IF v_relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'sidecar: % is not a table; only tables and partitioned tables can be tracked', p_table
            USING ERRCODE = 'SC004';
    END IF;
    IF p_table::oid IN (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace = 'sidecar'::regnamespace) THEN
        RAISE EXCEPTION 'sidecar: % belongs to sidecar itself and cannot be tracked', p_table USING ERRCODE = 'SC004';
    END IF;
    IF p_capture NOT IN ('tagged', 'all') THEN
        RAISE EXCEPTION 'sidecar: capture mode % is not known; use tagged or all', quote_literal(p_capture)
            USING ERRCODE = 'SC004';
    END IF;
    v_mode := coalesce(p_capture_mode,
                       (SELECT t.capture_mode FROM sidecar.tracked t WHERE t.relid = p_table),
                       nullif(current_setting('sidecar.capture_mode', true), ''), 'statement');
    IF v_mode NOT IN ('statement', 'row') THEN
        RAISE EXCEPTION 'sidecar: capture mode % is not known; use statement or row', quote_literal(v_mode)
            USING ERRCODE = 'SC004',
                  HINT = CASE WHEN p_capture_mode IS NULL THEN 'Check the setting sidecar.capture_mode.'
                              ELSE 'Nothing was changed.' END;
    END IF;
    v_pk := sidecar._pk_columns(p_table);
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'sidecar: table % has no primary key, so its rows cannot be told apart for undo', p_table
            USING ERRCODE = 'SC004',
                  HINT = format('Add one (ALTER TABLE %s ADD PRIMARY KEY (...)), then track it again.', p_table);
    END IF;
    IF p_label_column IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = p_table AND a.attname = p_label_column AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'sidecar: table % has no column %', p_table, quote_ident(p_label_column)
            USING ERRCODE = 'SC004', HINT = 'Name an existing column with --label-column.';
    END IF;

    SELECT tracked_id INTO v_id FROM sidecar.tracked WHERE relid = p_table;
    IF v_id IS NULL THEN
        INSERT INTO sidecar.tracked (relid, capture, capture_mode, pk_columns, label_column, display_name,
                                     log_table, shape)
        VALUES (p_table, p_capture, v_mode, v_pk, p_label_column, p_display_name, '-', '')
        RETURNING tracked_id INTO v_id;
        v_log := left((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = p_table), 48) || '_log_' || v_id;
        UPDATE sidecar.tracked SET log_table = v_log WHERE tracked_id = v_id;
        -- Partitioned by statement-id range like sidecar.statements (fn_partitions.sql),
        -- once that is (an install from before migration 025 converts both).
        EXECUTE format('CREATE TABLE sidecar.%I (_stmt bigint NOT NULL, _kind "char" NOT NULL, _head sidecar.stmt_head) %s', v_log,
                       CASE WHEN (SELECT c.relkind FROM pg_catalog.pg_class c
                                  WHERE c.oid = 'sidecar.statements'::regclass) = 'p'
                            THEN 'PARTITION BY RANGE (_stmt)' ELSE '' END);
        -- History is appended in statement order: a BRIN index finds a run's
        -- rows at almost no cost to the write. Each block range is summarized
        -- as soon as it is full: a range not summarized yet is read by every
        -- scan, and the newest history, the most read, would be all such
        -- ranges until the next VACUUM.
        EXECUTE format('CREATE INDEX %I ON sidecar.%I USING brin (_stmt) WITH (autosummarize = on)',
                       v_log || '_stmt', v_log);
        IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = format('sidecar.%I', v_log)::regclass) = 'p' THEN
            PERFORM sidecar._partition_new_history(format('sidecar.%I', v_log)::regclass);
        END IF;
        EXECUTE format('COMMENT ON TABLE sidecar.%I IS %L', v_log,
                       format('sidecar history of %s: row images by statement (_kind O = before, N = after)', p_table));
        -- privileges.sql grants the operator roles SELECT on the tables that
        -- exist at install time; a history table made later needs the same,
        -- or viewers and undoers cannot read the history of this table.
        FOR v_role IN
            SELECT r.rolname FROM pg_catalog.pg_roles r
            WHERE r.rolname IN ('sidecar_viewer', 'sidecar_pauser', 'sidecar_undoer',
                                'sidecar_approver', 'sidecar_rerunner')
        LOOP
            EXECUTE format('GRANT SELECT ON sidecar.%I TO %I', v_log, v_role);
        END LOOP;
        PERFORM sidecar._log_event('track', NULL, format('Started tracking %s', p_table),
                                   jsonb_build_object('table', p_table::text, 'capture', p_capture,
                                                      'capture_mode', v_mode));
    ELSE
        v_was := (SELECT t.capture_mode FROM sidecar.tracked t WHERE t.tracked_id = v_id);
        UPDATE sidecar.tracked
        SET capture = p_capture, capture_mode = v_mode, pk_columns = v_pk, active = true,
            label_column = coalesce(p_label_column, label_column),
            display_name = coalesce(p_display_name, display_name)
        WHERE tracked_id = v_id;
    END IF;

    PERFORM sidecar._sync_columns(v_id);
    PERFORM sidecar._render_capture(v_id);

    PERFORM sidecar._create_triggers(v_id);
    IF v_was = 'row' AND v_mode <> 'row' THEN
        -- Heads are read from row-mode tables only (fn_settle.sql): this one's
        -- are settled as it leaves row mode. Its row triggers are gone, and
        -- their last writers finished (dropping a trigger waits for them).
        PERFORM sidecar._settle(v_id);
    END IF;
    -- The hold trigger (fn_review.sql) comes back with the table's rules.
    PERFORM sidecar._render_hold(v_id);
    -- The table's undo function (fn_undo.sql): undoers restore it with its owner's rights.
    PERFORM sidecar._render_undo(v_id);
    RETURN v_id;
END
$track$;

-- Stop capturing a table. Its history stays, so past runs remain undoable.
CREATE OR REPLACE FUNCTION sidecar.untrack(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $untrack$
DECLARE
    v_id int;
BEGIN
    SELECT tracked_id INTO v_id FROM sidecar.tracked WHERE relid = p_table AND active;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'sidecar: table % is not tracked', p_table
            USING ERRCODE = 'SC004', HINT = 'sidecar status lists the tracked tables.';
    END IF;
    PERFORM sidecar._drop_triggers(p_table);
    EXECUTE format('DROP FUNCTION IF EXISTS sidecar.%I()', 'capture_' || v_id);
    UPDATE sidecar.tracked SET active = false WHERE tracked_id = v_id;
    PERFORM sidecar._log_event('untrack', NULL, format('Stopped tracking %s (history kept)', p_table),
                               jsonb_build_object('table', p_table::text));
END
$untrack$;

-- A table's name, always schema-qualified and quoted where needed, whatever
-- the caller's search_path: the name sidecar prints and matches on. A tracked
-- table dropped since is named from its history table.
CREATE OR REPLACE FUNCTION sidecar._qualname(p_table regclass)
RETURNS text LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp
AS $_qualname$
    SELECT coalesce(
        (SELECT format('%I.%I', n.nspname, c.relname)
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = p_table),
        (SELECT format('(dropped table %s)', regexp_replace(t.log_table, '_log_[0-9]+$', ''))
         FROM sidecar.tracked t WHERE t.relid = p_table),
        format('(dropped table %s)', p_table::oid))
$_qualname$;
