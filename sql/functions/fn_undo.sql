-- Undo with the rights of the table's owner: the narrow server side of an undo.
--
-- An operator who holds sidecar_undoer and no privilege on a table undoes a
-- run's rows of it through sidecar.undo_<tracked_id>(op, run, args): a
-- SECURITY DEFINER function owned by the table's owner, rendered when the
-- table is tracked (_render_undo), executable by sidecar_undoer alone. It does
-- nothing itself but call _undo_op for its one table, so everything below runs
-- with the owner's rights and only for that table.
--
-- What the owner's rights are used for is fixed here, not by the caller:
--   images      reads the scope's first and last image of each row from the
--               history (run, action ids, row keys); the caller chooses the
--               scope, never a value
--   classify    locks the rows (only inside an open undo of that run) and
--               decides each row's step, as undo.plan always did
--   clash, orphan, kept, referenced
--               mark steps (unique keys, foreign keys) by reading the tables
--   now         the current rows of conflicting rows of the scope (shown)
--   insert, update, delete
--               write the plan's rows from those images, only inside an open
--               undo of that run (so the capture trigger records the undo),
--               with the table's own triggers off for that statement only
-- The plan's temporary tables (_sc_meta_N, _sc_first_N, _sc_last_N,
-- _sc_plan_N, _sc_now_N, _sc_refd_N) are created by these functions, so they
-- belong to the table's owner: the caller's session reads them (SELECT is
-- granted; temporary tables are seen by their session alone) but cannot
-- change them, and a look-alike the caller made first is refused.
-- The Python planner (sidecar/undo/) drives these steps in foreign-key order.

-- The rows of two aliases are the same row: equal key columns.
CREATE OR REPLACE FUNCTION sidecar._undo_keys_eq(p_left text, p_right text, p_cols text[])
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_undo_keys_eq$
    SELECT string_agg(format('%I.%I = %I.%I', p_left, c, p_right, c), ' AND ' ORDER BY o)
    FROM unnest(p_cols) WITH ORDINALITY AS u(c, o)
$_undo_keys_eq$;

-- One of the plan's temporary tables of a tracked table, e.g. pg_temp._sc_plan_3.
CREATE OR REPLACE FUNCTION sidecar._undo_temp(p_prefix text, p_tracked_id int)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_undo_temp$
    SELECT format('pg_temp.%I', '_sc_' || p_prefix || '_' || p_tracked_id)
$_undo_temp$;

-- The plan's temporary table of another tracked table, when it exists and was
-- made by that table's undo function (belongs to the table's owner); else NULL.
-- Only tables of this undo's plan (p_tables: their tracked ids) count: one
-- transaction may hold the plans of several undos (undo --cascade).
CREATE OR REPLACE FUNCTION sidecar._undo_trusted(p_prefix text, p_relid oid, p_tables int[])
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_trusted$
    SELECT sidecar._undo_temp(p_prefix, t.tracked_id)
    FROM sidecar.tracked t
    JOIN pg_catalog.pg_class tab ON tab.oid = t.relid
    JOIN pg_catalog.pg_class tmp ON tmp.oid = to_regclass(sidecar._undo_temp(p_prefix, t.tracked_id))
    WHERE t.relid = p_relid AND t.tracked_id = ANY(p_tables)
      AND tmp.relowner = tab.relowner AND tmp.relpersistence = 't'
$_undo_trusted$;

-- Is an undo of p_run open in this transaction (sidecar._undo_begin tagged it)?
CREATE OR REPLACE FUNCTION sidecar._undo_is_open(p_run uuid)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_is_open$
    SELECT EXISTS (
        SELECT FROM sidecar.runs r
        WHERE r.run_id = nullif(current_setting('sidecar.run_id', true), '')::uuid
          AND r.undo_of = p_run AND r.status = 'running' AND r.backend_pid = pg_backend_pid())
$_undo_is_open$;

-- Foreign keys from (p_pointing_at false) or to (true) a table, each as
-- (the other table, referencing columns, referenced columns).
CREATE OR REPLACE FUNCTION sidecar._undo_foreign_keys(p_relid oid, p_pointing_at boolean,
                                                      OUT other oid, OUT child_cols text[], OUT parent_cols text[])
RETURNS SETOF record LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_foreign_keys$
    SELECT CASE WHEN p_pointing_at THEN c.conrelid ELSE c.confrelid END,
           array_agg(ca.attname::text ORDER BY k.ord), array_agg(pa.attname::text ORDER BY k.ord)
    FROM pg_catalog.pg_constraint c
    CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(ck, pk, ord)
    JOIN pg_catalog.pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.ck
    JOIN pg_catalog.pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk
    WHERE c.contype = 'f' AND c.conparentid = 0
      AND CASE WHEN p_pointing_at THEN c.confrelid ELSE c.conrelid END = p_relid
    GROUP BY c.oid, c.conrelid, c.confrelid
$_undo_foreign_keys$;

-- The condition that row p_child refers to row p_parent by one foreign key.
CREATE OR REPLACE FUNCTION sidecar._undo_refers(p_child text, p_child_cols text[], p_parent_cols text[], p_parent text)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_undo_refers$
    SELECT string_agg(format('%I.%I = %I.%I', p_child, cc, p_parent, pc), ' AND ' ORDER BY o)
    FROM unnest(p_child_cols, p_parent_cols) WITH ORDINALITY AS u(cc, pc, o)
$_undo_refers$;

-- Read the scope's first and last image of each row from the history into
-- _sc_first_N and _sc_last_N. p_args: columns [{name, comparable,
-- identity_always}] (checked against what the history holds for the scope),
-- action_ids (NULL: the whole run), rows (NULL, or keys as arrays of text in
-- the order of the primary key). Returns the number of rows in scope.
CREATE OR REPLACE FUNCTION sidecar._undo_images(p_tracked_id int, p_run uuid, p_args jsonb, p_general boolean)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_images$
DECLARE
    r_t        record;
    v_actions  bigint[];
    v_stmts    text := sidecar._undo_temp('stmts', p_tracked_id);
    v_meta     text := sidecar._undo_temp('meta', p_tracked_id);
    v_lo       bigint;
    v_hi       bigint;
    v_single   text;
    v_valid    text[];
    v_cols     text[];
    v_col_list text;
    v_pk_list  text;
    v_filter   text := 'true';
    v_select   text;
    v_kind     text;
    v_rows     bigint;
    v_prefix   text;
BEGIN
    SELECT t.tracked_id, t.relid, t.log_table, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    IF p_args ? 'action_ids' AND jsonb_typeof(p_args -> 'action_ids') = 'array' THEN
        v_actions := ARRAY(SELECT a::bigint FROM jsonb_array_elements_text(p_args -> 'action_ids') a);
    END IF;
    SELECT min(s.stmt_id), max(s.stmt_id), CASE WHEN count(*) = 1 THEN min(s.op::text) END INTO v_lo, v_hi, v_single
    FROM sidecar.statements s
    WHERE s.run_id = p_run AND s.tracked_id = p_tracked_id AND (v_actions IS NULL OR s.action_id = ANY(v_actions));
    IF p_general THEN
        v_single := NULL;
    END IF;
    IF v_single IS NULL THEN
        -- More than one statement (or an UPDATE that changed keys): the images
        -- are read through the statements in scope, keyed and analyzed, since a
        -- run's newest history lies past the history table's statistics, where
        -- the planner expects one row (a nested loop per image otherwise). One
        -- statement is read by its id alone and needs no such table.
        EXECUTE format('DROP TABLE IF EXISTS %s', v_stmts);
        EXECUTE format('CREATE TEMP TABLE %s ON COMMIT DROP AS '
                       'SELECT s.stmt_id, s.op FROM sidecar.statements s '
                       'WHERE s.run_id = $1 AND s.tracked_id = $2 AND ($3::bigint[] IS NULL OR s.action_id = ANY($3))',
                       v_stmts) USING p_run, p_tracked_id, v_actions;
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (stmt_id)', v_stmts);
        EXECUTE format('ANALYZE %s', v_stmts);
    END IF;
    -- Columns the history holds for every statement in scope, still on the table.
    SELECT array_agg(a.attname::text) INTO v_valid
    FROM pg_catalog.pg_attribute a
    JOIN sidecar.columns c ON c.tracked_id = p_tracked_id AND c.attnum = a.attnum AND NOT c.retired
    WHERE a.attrelid = r_t.relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      AND c.log_column IS NOT NULL AND c.since_stmt <= v_lo;
    v_cols := ARRAY(SELECT c ->> 'name' FROM jsonb_array_elements(p_args -> 'columns') c);
    IF NOT v_cols <@ coalesce(v_valid, '{}') OR NOT r_t.pk <@ v_cols THEN
        RAISE EXCEPTION 'sidecar: the columns to restore of % are not all in its history for this run', r_t.relid::regclass
            USING ERRCODE = 'SC004';
    END IF;
    SELECT string_agg(format('%I', c), ', ' ORDER BY o) INTO v_col_list FROM unnest(v_cols) WITH ORDINALITY u(c, o);
    SELECT string_agg(format('%I', c), ', ' ORDER BY o) INTO v_pk_list FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
    IF jsonb_typeof(p_args -> 'rows') = 'array' THEN
        -- Keys are compared as text, so a key given on the command line matches any key type.
        SELECT format('(%s) IN (SELECT %s FROM jsonb_array_elements($3) _sc_r)',
                      string_agg(format('l.%I::text', c), ', ' ORDER BY o),
                      string_agg(format('_sc_r ->> %s', o - 1), ', ' ORDER BY o))
        INTO v_filter FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
    END IF;
    FOREACH v_prefix IN ARRAY ARRAY['first', 'last'] LOOP
        IF v_single IS NOT NULL THEN
            -- One statement has one image of each kind per row: no sort.
            v_kind := CASE WHEN v_prefix = 'first' THEN CASE WHEN v_single = 'I' THEN 'N' ELSE 'O' END
                           ELSE CASE WHEN v_single = 'D' THEN 'O' ELSE 'N' END END;
            v_select := format('SELECT l._kind, %s FROM %s l WHERE l._stmt = $1 AND l._kind = $4 AND %s',
                               v_col_list, sidecar._history_from(p_tracked_id, v_lo, v_hi), v_filter);
        ELSE
            -- Within a statement the before-image (O) comes before the after-image (N).
            v_select := format('SELECT DISTINCT ON (%s) l._kind, %s FROM %s l '
                               'WHERE l._stmt BETWEEN $1 AND $2 AND l._stmt IN (SELECT stmt_id FROM %s) AND %s '
                               'ORDER BY %s, l._stmt %s, l._kind %s',
                               v_pk_list, v_col_list, sidecar._history_from(p_tracked_id, v_lo, v_hi), v_stmts,
                               v_filter, v_pk_list,
                               CASE WHEN v_prefix = 'first' THEN 'ASC' ELSE 'DESC' END,
                               CASE WHEN v_prefix = 'first' THEN 'DESC' ELSE 'ASC' END);
        END IF;
        EXECUTE format('DROP TABLE IF EXISTS %s', sidecar._undo_temp(v_prefix, p_tracked_id));
        EXECUTE format('CREATE TEMP TABLE %s ON COMMIT DROP AS ', sidecar._undo_temp(v_prefix, p_tracked_id)) || v_select
            USING v_lo, v_hi, p_args -> 'rows', v_kind;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        EXECUTE format('ANALYZE %s', sidecar._undo_temp(v_prefix, p_tracked_id));
        EXECUTE format('GRANT SELECT ON %s TO PUBLIC', sidecar._undo_temp(v_prefix, p_tracked_id));
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS %s', v_meta);
    EXECUTE format('CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT $1::uuid AS run_id, $2::jsonb AS args, '
                   '$3::text AS single_op, $4::bigint AS rows, $5::bigint AS lo, $6::bigint AS hi', v_meta)
        USING p_run, p_args, v_single, v_rows, v_lo, v_hi;
    EXECUTE format('GRANT SELECT ON %s TO PUBLIC', v_meta);
    RETURN v_rows;
END
$_undo_images$;

-- The images of two aliases hold the same values in every restored column.
CREATE OR REPLACE FUNCTION sidecar._undo_match(p_left text, p_right text, p_columns jsonb)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_undo_match$
    SELECT coalesce(string_agg(
        CASE WHEN (c ->> 'comparable')::boolean
             THEN format('%I.%I IS NOT DISTINCT FROM %I.%I', p_left, c ->> 'name', p_right, c ->> 'name')
             ELSE format('%I.%I::text IS NOT DISTINCT FROM %I.%I::text', p_left, c ->> 'name', p_right, c ->> 'name')
        END, ' AND ' ORDER BY o), 'true')
    FROM jsonb_array_elements(p_columns) WITH ORDINALITY AS u(c, o)
$_undo_match$;

-- Lock the scope's rows (inside an open undo) and decide each row's step into
-- _sc_plan_N, as undo.plan documents. Returns the rows planned.
CREATE OR REPLACE FUNCTION sidecar._undo_classify(p_tracked_id int, p_run uuid, p_lock boolean, p_force boolean,
                                                  p_row_locks_max bigint)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_classify$
DECLARE
    r_t     record;
    r_meta  record;
    v_first text := sidecar._undo_temp('first', p_tracked_id);
    v_last  text := sidecar._undo_temp('last', p_tracked_id);
    v_plan  text := sidecar._undo_temp('plan', p_tracked_id);
    v_found text;
    v_pk    text;
    v_n     bigint;
BEGIN
    SELECT t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    EXECUTE format('SELECT * FROM %s', sidecar._undo_temp('meta', p_tracked_id)) INTO STRICT r_meta;
    IF r_meta.run_id <> p_run THEN
        RAISE EXCEPTION 'sidecar: the plan of % is for another run', r_t.tab USING ERRCODE = 'SC004';
    END IF;
    IF p_lock THEN
        IF NOT sidecar._undo_is_open(p_run) THEN
            RAISE EXCEPTION 'sidecar: no undo of run % is open in this transaction', p_run
                USING ERRCODE = 'SC008', HINT = 'Undo it with sidecar undo, which opens one (sidecar._undo_begin).';
        END IF;
        -- Past p_row_locks_max rows the table, not each row (undo.plan says why).
        IF r_meta.rows > p_row_locks_max THEN
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', r_t.tab);
        ELSE
            EXECUTE format('SELECT 1 FROM %s AS cur JOIN %s AS l ON %s FOR UPDATE OF cur',
                           r_t.tab, v_last, sidecar._undo_keys_eq('cur', 'l', r_t.pk));
        END IF;
    END IF;
    v_found := format('(cur.%I IS NOT NULL)', r_t.pk[1]);
    SELECT string_agg(format('f.%I', c), ', ' ORDER BY o) INTO v_pk FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
    EXECUTE format('DROP TABLE IF EXISTS %s', v_plan);
    EXECUTE format(
        $q$CREATE TEMP TABLE %1$s ON COMMIT DROP AS
           SELECT %2$s,
                  CASE
                    WHEN f._kind = 'N' AND l._kind = 'O' THEN 'none'
                    WHEN f._kind = 'O' AND %3$s AND (%4$s) THEN 'done'
                    WHEN f._kind = 'N' AND NOT %3$s THEN 'done'
                    WHEN l._kind = 'N' AND (NOT %3$s OR NOT (%5$s)) THEN 'conflict'
                    WHEN l._kind = 'O' AND %3$s THEN 'conflict'
                    WHEN f._kind = 'O' AND NOT %3$s THEN 'insert'
                    WHEN f._kind = 'O' THEN 'update'
                    ELSE 'delete'
                  END AS step,
                  false AS forced
           FROM %6$s f
           JOIN %7$s l ON %8$s
           LEFT JOIN %9$s cur ON %10$s$q$,
        v_plan, v_pk, v_found,
        sidecar._undo_match('cur', 'f', r_meta.args -> 'columns'), sidecar._undo_match('cur', 'l', r_meta.args -> 'columns'),
        v_first, v_last, sidecar._undo_keys_eq('f', 'l', r_t.pk), r_t.tab, sidecar._undo_keys_eq('f', 'cur', r_t.pk));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF r_meta.single_op = 'U' AND v_n <> r_meta.rows THEN
        -- The UPDATE changed keys: read the images again the general way.
        PERFORM sidecar._undo_images(p_tracked_id, p_run, r_meta.args, true);
        RETURN sidecar._undo_classify(p_tracked_id, p_run, p_lock, p_force, p_row_locks_max);
    END IF;
    IF p_force THEN
        EXECUTE format(
            $q$UPDATE %1$s p SET forced = true, step = CASE WHEN f._kind = 'N' THEN 'delete'
               WHEN EXISTS (SELECT FROM %2$s cur WHERE %3$s) THEN 'update' ELSE 'insert' END
               FROM %4$s f WHERE %5$s AND p.step = 'conflict'$q$,
            v_plan, r_t.tab, sidecar._undo_keys_eq('f', 'cur', r_t.pk), v_first, sidecar._undo_keys_eq('p', 'f', r_t.pk));
    END IF;
    EXECUTE format('ANALYZE %s', v_plan);
    EXECUTE format('GRANT SELECT ON %s TO PUBLIC', v_plan);
    RETURN v_n;
END
$_undo_classify$;

-- Mark 'clash' the rows to put back or restore whose old values of a unique key
-- (other than the primary key; expressions and partial indexes too) are held
-- now by a row that stays (undo.unique says why). Returns the rows marked.
CREATE OR REPLACE FUNCTION sidecar._undo_clash(p_tracked_id int)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_clash$
DECLARE
    r_t      record;
    r_key    record;
    v_first  text := sidecar._undo_temp('first', p_tracked_id);
    v_plan   text := sidecar._undo_temp('plan', p_tracked_id);
    v_cols   text[];
    v_check  text;
    v_same   text;
    v_pred   text;
    v_fk     text;
    v_row    text;
    v_qrow   text;
    v_n      bigint;
    v_total  bigint := 0;
BEGIN
    SELECT t.relid, t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    EXECUTE format('SELECT ARRAY(SELECT c ->> ''name'' FROM jsonb_array_elements(args -> ''columns'') c) FROM %s',
                   sidecar._undo_temp('meta', p_tracked_id)) INTO v_cols;
    FOR r_key IN
        SELECT array_agg(coalesce(quote_ident(a.attname), pg_get_indexdef(i.indexrelid, k.ord::int, true))
                         ORDER BY k.ord) AS keys,
               array_agg(a.attname::text ORDER BY k.ord) AS columns,
               pg_get_expr(i.indpred, i.indrelid, true) AS predicate, i.nulls_equal
        FROM (SELECT i.indexrelid, i.indrelid, i.indkey, i.indnkeyatts, i.indpred,
                     -- NULLS NOT DISTINCT exists from PostgreSQL 15 on
                     coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) AS nulls_equal
              FROM pg_catalog.pg_index i
              WHERE i.indrelid = r_t.relid AND i.indisunique AND NOT i.indisprimary AND i.indisvalid) i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum <> 0
        WHERE k.ord <= i.indnkeyatts
        GROUP BY i.indexrelid, i.indrelid, i.indpred, i.nulls_equal
        ORDER BY i.indexrelid
    LOOP
        IF NOT (NULL = ANY(r_key.columns)) AND r_key.predicate IS NULL THEN
            -- Plain columns, compared by name; a key on a column the undo does
            -- not restore keeps its value, which was unique already.
            IF NOT r_key.columns <@ v_cols THEN
                CONTINUE;
            END IF;
            SELECT string_agg(format(CASE WHEN r_key.nulls_equal THEN 'o.%1$I IS NOT DISTINCT FROM f.%1$I'
                                          ELSE 'o.%1$I = f.%1$I' END, c), ' AND ')
            INTO v_same FROM unnest(r_key.columns) c;
            v_check := format(
                $q$UPDATE %1$s p SET step = 'clash', forced = false FROM %2$s f
                   WHERE %3$s AND p.step IN ('insert', 'update')
                   AND EXISTS (SELECT FROM %4$s o WHERE %5$s AND NOT (%6$s)
                   AND NOT EXISTS (SELECT FROM %1$s q WHERE %7$s AND q.step IN ('delete', 'insert', 'update')))$q$,
                v_plan, v_first, sidecar._undo_keys_eq('p', 'f', r_t.pk), r_t.tab, v_same,
                sidecar._undo_keys_eq('f', 'o', r_t.pk), sidecar._undo_keys_eq('q', 'o', r_t.pk));
        ELSE
            -- Expressions and partial indexes, as PostgreSQL prints them: once
            -- over the first image's columns, once over the table's.
            v_pred := coalesce(r_key.predicate, 'true');
            SELECT string_agg(format('%s AS %I', e, '_sc_k' || (o - 1)), ', ' ORDER BY o),
                   string_agg(format(CASE WHEN r_key.nulls_equal THEN '(%s) IS NOT DISTINCT FROM fk.%I'
                                          ELSE '(%s) = fk.%I' END, e, '_sc_k' || (o - 1)), ' AND ' ORDER BY o)
            INTO v_fk, v_same FROM unnest(r_key.keys) WITH ORDINALITY u(e, o);
            SELECT string_agg(format('%s.%I = f.%I', r_t.tab, c, c), ' AND ' ORDER BY o),
                   string_agg(format('q.%I = %s.%I', c, r_t.tab, c), ' AND ' ORDER BY o)
            INTO v_row, v_qrow FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
            v_check := format(
                $q$UPDATE %1$s p SET step = 'clash', forced = false FROM %2$s f
                   CROSS JOIN LATERAL (SELECT %3$s, (%4$s) AS _sc_in FROM (SELECT f.*) AS _sc_row) fk
                   WHERE %5$s AND p.step IN ('insert', 'update') AND fk._sc_in
                   AND EXISTS (SELECT FROM %6$s WHERE %7$s AND (%4$s) AND NOT (%8$s)
                   AND NOT EXISTS (SELECT FROM %1$s q WHERE %9$s AND q.step IN ('delete', 'insert', 'update')))$q$,
                v_plan, v_first, v_fk, v_pred, sidecar._undo_keys_eq('p', 'f', r_t.pk), r_t.tab, v_same, v_row, v_qrow);
            -- Expressions name their columns only in their text: a key on a
            -- column the undo does not restore is found by asking PostgreSQL.
            BEGIN
                EXECUTE 'EXPLAIN ' || v_check;
            EXCEPTION WHEN undefined_column THEN
                CONTINUE;
            END;
        END IF;
        EXECUTE v_check;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_total := v_total + v_n;
    END LOOP;
    RETURN v_total;
END
$_undo_clash$;

-- Mark 'orphan' the rows to put back or restore whose old values refer to a
-- parent row that is gone and that this undo does not put back (undo.keys
-- says why). Returns the rows marked.
CREATE OR REPLACE FUNCTION sidecar._undo_orphan(p_tracked_id int, p_tables int[])
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_orphan$
DECLARE
    r_t       record;
    r_fk      record;
    v_first   text := sidecar._undo_temp('first', p_tracked_id);
    v_plan    text := sidecar._undo_temp('plan', p_tracked_id);
    v_cols    text[];
    v_refers  text;
    v_put     text;
    v_pplan   text;
    v_pfirst  text;
    v_ppk     text[];
    v_n       bigint;
    v_total   bigint := 0;
BEGIN
    SELECT t.relid, t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    EXECUTE format('SELECT ARRAY(SELECT c ->> ''name'' FROM jsonb_array_elements(args -> ''columns'') c) FROM %s',
                   sidecar._undo_temp('meta', p_tracked_id)) INTO v_cols;
    FOR r_fk IN SELECT * FROM sidecar._undo_foreign_keys(r_t.relid, false) LOOP
        IF NOT r_fk.child_cols <@ v_cols THEN
            CONTINUE;  -- a key column the undo does not restore: left as it is, so still valid
        END IF;
        SELECT string_agg(format('par.%I = f.%I', pc, cc), ' AND ' ORDER BY o) INTO v_refers
        FROM unnest(r_fk.child_cols, r_fk.parent_cols) WITH ORDINALITY u(cc, pc, o);
        v_put := 'false';
        v_pplan := sidecar._undo_trusted('plan', r_fk.other, p_tables);
        v_pfirst := sidecar._undo_trusted('first', r_fk.other, p_tables);
        IF v_pplan IS NOT NULL AND v_pfirst IS NOT NULL THEN
            SELECT t.pk_columns::text[] INTO v_ppk FROM sidecar.tracked t WHERE t.relid = r_fk.other;
            v_put := format($q$EXISTS (SELECT FROM %s pp JOIN %s par ON %s WHERE pp.step = 'insert' AND %s)$q$,
                            v_pplan, v_pfirst, sidecar._undo_keys_eq('pp', 'par', v_ppk), v_refers);
        END IF;
        EXECUTE format(
            $q$UPDATE %1$s p SET step = 'orphan', forced = false FROM %2$s f
               WHERE %3$s AND p.step IN ('insert', 'update') AND %4$s
               AND NOT EXISTS (SELECT FROM %5$s par WHERE %6$s) AND NOT %7$s$q$,
            v_plan, v_first, sidecar._undo_keys_eq('p', 'f', r_t.pk),
            (SELECT string_agg(format('f.%I IS NOT NULL', c), ' AND ') FROM unnest(r_fk.child_cols) c),
            r_fk.other::regclass, v_refers, v_put);
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_total := v_total + v_n;
    END LOOP;
    RETURN v_total;
END
$_undo_orphan$;

-- The condition that a row of this table (alias cur) is referred to by a row
-- that stays: by foreign key, a child row not being deleted by this undo (with
-- p_predicted, a child row the plan puts back or restores refers by its first
-- image). NULL when no foreign key points at the table.
CREATE OR REPLACE FUNCTION sidecar._undo_referred(p_tracked_id int, p_predicted boolean, p_tables int[])
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_referred$
DECLARE
    r_t       record;
    r_fk      record;
    v_cplan   text;
    v_cfirst  text;
    r_child   record;
    v_cols    text[];
    v_by_first boolean;
    v_staying text;
    v_ref     text;
    v_all     text[] := '{}';
BEGIN
    SELECT t.relid INTO STRICT r_t FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    FOR r_fk IN SELECT * FROM sidecar._undo_foreign_keys(r_t.relid, true) LOOP
        v_cplan := sidecar._undo_trusted('plan', r_fk.other, p_tables);
        v_staying := 'true';
        v_by_first := false;
        IF v_cplan IS NOT NULL THEN
            SELECT t.tracked_id, t.pk_columns::text[] AS pk INTO r_child FROM sidecar.tracked t WHERE t.relid = r_fk.other;
            v_cfirst := sidecar._undo_trusted('first', r_fk.other, p_tables);
            EXECUTE format('SELECT ARRAY(SELECT c ->> ''name'' FROM jsonb_array_elements(args -> ''columns'') c) FROM %s',
                           sidecar._undo_temp('meta', r_child.tracked_id)) INTO v_cols;
            v_by_first := p_predicted AND v_cfirst IS NOT NULL AND r_fk.child_cols <@ v_cols;
            v_staying := format('NOT EXISTS (SELECT FROM %s cp WHERE %s AND cp.step = ANY(%L::text[]))',
                                v_cplan, sidecar._undo_keys_eq('cp', 'ch', r_child.pk),
                                CASE WHEN v_by_first THEN '{delete,insert,update}' ELSE '{delete}' END);
        END IF;
        v_ref := format('EXISTS (SELECT FROM %s ch WHERE %s AND %s)', r_fk.other::regclass,
                        sidecar._undo_refers('ch', r_fk.child_cols, r_fk.parent_cols, 'cur'), v_staying);
        IF v_by_first THEN
            v_ref := format($q$(%s OR EXISTS (SELECT FROM %s cp JOIN %s cf ON %s
                               WHERE cp.step IN ('insert', 'update') AND %s))$q$,
                            v_ref, v_cplan, v_cfirst, sidecar._undo_keys_eq('cp', 'cf', r_child.pk),
                            sidecar._undo_refers('cf', r_fk.child_cols, r_fk.parent_cols, 'cur'));
        END IF;
        v_all := v_all || v_ref;
    END LOOP;
    RETURN CASE WHEN cardinality(v_all) > 0 THEN '(' || array_to_string(v_all, ' OR ') || ')' END;
END
$_undo_referred$;

-- Mark 'kept' the rows to delete that a row which stays still refers to
-- (undo.keys says why). Returns the rows marked.
CREATE OR REPLACE FUNCTION sidecar._undo_kept(p_tracked_id int, p_predicted boolean, p_tables int[])
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_kept$
DECLARE
    r_t   record;
    v_ref text := sidecar._undo_referred(p_tracked_id, p_predicted, p_tables);
    v_n   bigint;
BEGIN
    IF v_ref IS NULL THEN
        RETURN 0;
    END IF;
    SELECT t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    EXECUTE format($q$UPDATE %s p SET step = 'kept' FROM %s cur WHERE %s AND p.step = 'delete' AND %s$q$,
                   sidecar._undo_temp('plan', p_tracked_id), r_t.tab, sidecar._undo_keys_eq('p', 'cur', r_t.pk), v_ref);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$_undo_kept$;

-- For `undo --sql`: the plan's rows to delete that a row refers to now, by
-- key, into _sc_refd_N (the script deletes them after the rows are restored).
CREATE OR REPLACE FUNCTION sidecar._undo_referenced(p_tracked_id int)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_referenced$
DECLARE
    r_t    record;
    v_refd text := sidecar._undo_temp('refd', p_tracked_id);
    v_ref  text := 'false';
    r_fk   record;
    v_any  text[] := '{}';
    v_pk   text;
    v_n    bigint;
BEGIN
    SELECT t.relid, t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    FOR r_fk IN SELECT * FROM sidecar._undo_foreign_keys(r_t.relid, true) LOOP
        v_any := v_any || format('EXISTS (SELECT FROM %s ch WHERE %s)', r_fk.other::regclass,
                                 sidecar._undo_refers('ch', r_fk.child_cols, r_fk.parent_cols, 'cur'));
    END LOOP;
    IF cardinality(v_any) > 0 THEN
        v_ref := '(' || array_to_string(v_any, ' OR ') || ')';
    END IF;
    SELECT string_agg(format('p.%I', c), ', ' ORDER BY o) INTO v_pk FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
    EXECUTE format('DROP TABLE IF EXISTS %s', v_refd);
    EXECUTE format($q$CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s p JOIN %s cur ON %s
                      WHERE p.step = 'delete' AND %s$q$,
                   v_refd, v_pk, sidecar._undo_temp('plan', p_tracked_id), r_t.tab,
                   sidecar._undo_keys_eq('p', 'cur', r_t.pk), v_ref);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    EXECUTE format('GRANT SELECT ON %s TO PUBLIC', v_refd);
    RETURN v_n;
END
$_undo_referenced$;

-- The current rows of the plan's conflicting rows (and of those forced or
-- kept), by key, into _sc_now_N: what the undo shows it found.
CREATE OR REPLACE FUNCTION sidecar._undo_now(p_tracked_id int)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_now$
DECLARE
    r_t   record;
    v_now text := sidecar._undo_temp('now', p_tracked_id);
    v_pk  text;
    v_n   bigint;
BEGIN
    SELECT t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    SELECT string_agg(format('p.%I', c), ', ' ORDER BY o) INTO v_pk FROM unnest(r_t.pk) WITH ORDINALITY u(c, o);
    EXECUTE format('DROP TABLE IF EXISTS %s', v_now);
    EXECUTE format($q$CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s, to_jsonb(cur) AS _sc_row
                      FROM %s p JOIN %s cur ON %s
                      WHERE p.step IN ('conflict', 'orphan', 'clash', 'kept') OR p.forced$q$,
                   v_now, v_pk, sidecar._undo_temp('plan', p_tracked_id), r_t.tab, sidecar._undo_keys_eq('p', 'cur', r_t.pk));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    EXECUTE format('GRANT SELECT ON %s TO PUBLIC', v_now);
    RETURN v_n;
END
$_undo_now$;

-- Write the plan's rows of one step: 'insert' (put back, from the first
-- image), 'update' (restored, from the first image) or 'delete' (with
-- p_unreferenced, only rows no row refers to now). Only inside an open undo
-- of the plan's run, which the capture trigger records; the table's own
-- triggers are off for this statement only. Returns the rows written.
-- With p_pointer the undo points at the images of the one statement it
-- reverses instead (docs/undo.md): only when the scope is that whole
-- statement and this step writes every row of the plan, which is checked
-- here; sidecar's capture triggers are off for this statement too, and
-- sidecar._undo_point records the statement. When the plan is not such a
-- mirror, or the write leaves a row out (a key taken again, a row still
-- referred to), it raises SC030 and has written nothing that stays: the
-- caller rolls back to its savepoint and writes the step captured.
CREATE OR REPLACE FUNCTION sidecar._undo_write(p_tracked_id int, p_run uuid, p_step text, p_unreferenced boolean,
                                               p_pointer boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_write$
DECLARE
    r_t      record;
    r_meta   record;
    v_first  text := sidecar._undo_temp('first', p_tracked_id);
    v_plan   text := sidecar._undo_temp('plan', p_tracked_id);
    v_cols   text;
    v_fcols  text;
    v_sets   text;
    v_target text := '';
    v_free   text;
    v_sql    text;
    v_trig   name[];
    v_name   name;
    v_all    boolean;
    v_n      bigint;
    v_planned bigint;
    v_mine   bigint;
    v_mirror boolean;
BEGIN
    SELECT t.relid, t.relid::regclass AS tab, t.pk_columns::text[] AS pk INTO STRICT r_t
    FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    EXECUTE format('SELECT * FROM %s', sidecar._undo_temp('meta', p_tracked_id)) INTO STRICT r_meta;
    IF r_meta.run_id <> p_run OR NOT sidecar._undo_is_open(p_run) THEN
        RAISE EXCEPTION 'sidecar: no undo of run % is open in this transaction', p_run
            USING ERRCODE = 'SC008', HINT = 'Undo it with sidecar undo, which opens one (sidecar._undo_begin).';
    END IF;
    IF p_step = 'insert' THEN
        SELECT string_agg(format('%I', c ->> 'name'), ', ' ORDER BY o), string_agg(format('f.%I', c ->> 'name'), ', ' ORDER BY o)
        INTO v_cols, v_fcols FROM jsonb_array_elements(r_meta.args -> 'columns') WITH ORDINALITY u(c, o);
        -- A row whose key reappeared since the plan was made is left as it is (a conflict).
        SELECT '(' || string_agg(format('%I', c), ', ' ORDER BY o) || ')' INTO v_target
        FROM unnest(sidecar._pk_columns(r_t.relid)::text[]) WITH ORDINALITY u(c, o);
        v_sql := format($q$INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE
                           SELECT %s FROM %s f JOIN %s p ON %s WHERE p.step = 'insert' ON CONFLICT %s DO NOTHING$q$,
                        r_t.tab, v_cols, v_fcols, v_first, v_plan, sidecar._undo_keys_eq('p', 'f', r_t.pk),
                        coalesce(v_target, ''));
    ELSIF p_step = 'update' THEN
        SELECT string_agg(format('%1$I = f.%1$I', c ->> 'name'), ', ' ORDER BY o) INTO v_sets
        FROM jsonb_array_elements(r_meta.args -> 'columns') WITH ORDINALITY u(c, o)
        WHERE NOT (c ->> 'name') = ANY(r_t.pk) AND NOT (c ->> 'identity_always')::boolean;
        IF v_sets IS NULL THEN
            RETURN 0;
        END IF;
        IF p_pointer THEN
            -- One pass over the plan for the mirror's check below and for this.
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE step = $1 AND NOT forced), '
                           'count(*) FILTER (WHERE step <> $1) = 0 FROM %s', v_plan)
                INTO v_planned, v_mine, v_all USING p_step;
        ELSE
            EXECUTE format($q$SELECT NOT EXISTS (SELECT FROM %s WHERE step <> 'update')$q$, v_plan) INTO v_all;
        END IF;
        IF v_all THEN
            -- Every row of the plan is restored (the usual big undo): the plan
            -- has nothing to add to the join of images and table.
            v_sql := format('UPDATE %s AS cur SET %s FROM %s f WHERE %s',
                            r_t.tab, v_sets, v_first, sidecar._undo_keys_eq('f', 'cur', r_t.pk));
        ELSE
            v_sql := format($q$UPDATE %s AS cur SET %s FROM %s f JOIN %s p ON %s WHERE %s AND p.step = 'update'$q$,
                            r_t.tab, v_sets, v_first, v_plan, sidecar._undo_keys_eq('p', 'f', r_t.pk),
                            sidecar._undo_keys_eq('f', 'cur', r_t.pk));
        END IF;
    ELSIF p_step = 'delete' THEN
        v_free := CASE WHEN p_unreferenced THEN sidecar._undo_referred_now(r_t.relid) END;
        v_sql := format($q$DELETE FROM %s AS cur USING %s p WHERE %s AND p.step = 'delete' AND %s$q$,
                        r_t.tab, v_plan, sidecar._undo_keys_eq('p', 'cur', r_t.pk),
                        coalesce('NOT ' || v_free, 'true'));
    ELSE
        RAISE EXCEPTION 'sidecar: % is not a step of an undo', quote_literal(p_step) USING ERRCODE = 'SC004';
    END IF;
    IF p_pointer THEN
        -- A mirror: one statement in scope, every row of it, all in this step
        -- (its op's inverse), none forced over a conflict.
        IF v_planned IS NULL THEN  -- not counted above (an update step counts it)
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE step = $1 AND NOT forced) FROM %s', v_plan)
                INTO v_planned, v_mine USING p_step;
        END IF;
        v_mirror := v_planned = v_mine;
        IF r_meta.single_op IS NULL OR r_meta.lo IS DISTINCT FROM r_meta.hi
           OR jsonb_typeof(r_meta.args -> 'rows') = 'array' OR NOT v_mirror OR v_planned = 0
           OR p_step <> (CASE r_meta.single_op WHEN 'U' THEN 'update' WHEN 'I' THEN 'delete' ELSE 'insert' END) THEN
            RAISE EXCEPTION 'sidecar: the undo of % is not the mirror of one statement; write it captured', r_t.tab
                USING ERRCODE = 'SC030';
        END IF;
        -- Only where capture would have recorded the write (a table still
        -- tracked), and where its triggers can be turned off for the write: not
        -- with deferred foreign-key checks pending on the table at its end.
        IF NOT EXISTS (SELECT FROM sidecar.tracked t JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = t.relid
                       WHERE t.tracked_id = p_tracked_id AND t.active AND tg.tgenabled <> 'D'
                         AND tg.tgname = 'sidecar_capture_' || p_step)
           OR EXISTS (SELECT FROM pg_catalog.pg_trigger tg
                      WHERE tg.tgrelid = r_t.relid AND tg.tgisinternal AND tg.tgdeferrable)
           -- Turning triggers off locks the table: only where a big undo locked it
           -- already (classify), so that a small one still locks its rows alone.
           OR NOT EXISTS (SELECT FROM pg_catalog.pg_locks lk
                          WHERE lk.locktype = 'relation' AND lk.relation = r_t.relid AND lk.pid = pg_backend_pid()
                            AND lk.granted
                            AND lk.mode IN ('ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')) THEN
            RAISE EXCEPTION 'sidecar: the undo of % cannot point at the images it reverses; write it captured', r_t.tab
                USING ERRCODE = 'SC030';
        END IF;
    END IF;
    -- The table's own triggers must not alter restored rows; sidecar's capture
    -- stays on, unless this write points at the images it reverses.
    v_trig := ARRAY(SELECT tg.tgname FROM pg_catalog.pg_trigger tg
                    WHERE tg.tgrelid = r_t.relid AND NOT tg.tgisinternal AND tg.tgenabled <> 'D'
                      AND (tg.tgname NOT LIKE 'sidecar\_%'
                           OR (p_pointer AND tg.tgname IN ('sidecar_capture_insert', 'sidecar_capture_update',
                                                           'sidecar_capture_delete')))
                    ORDER BY tg.tgname);
    FOREACH v_name IN ARRAY v_trig LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', r_t.tab, v_name);
    END LOOP;
    EXECUTE v_sql;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    FOREACH v_name IN ARRAY v_trig LOOP
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', r_t.tab, v_name);
    END LOOP;
    IF p_pointer THEN
        IF v_n <> v_planned THEN
            RAISE EXCEPTION 'sidecar: the undo of % left % of % rows as they are; write it captured',
                            r_t.tab, v_planned - v_n, v_planned
                USING ERRCODE = 'SC030';
        END IF;
        PERFORM sidecar._undo_point(p_tracked_id, p_run, r_meta.lo);
    END IF;
    RETURN v_n;
END
$_undo_write$;

-- The condition that a row of the table (alias cur) is referred to now by any foreign key.
CREATE OR REPLACE FUNCTION sidecar._undo_referred_now(p_relid oid)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_referred_now$
    SELECT '(' || string_agg(format('EXISTS (SELECT FROM %s ch WHERE %s)', f.other::regclass,
                                    sidecar._undo_refers('ch', f.child_cols, f.parent_cols, 'cur')), ' OR ') || ')'
    FROM sidecar._undo_foreign_keys(p_relid, true) f
$_undo_referred_now$;

-- An approval's write (sidecar._apply_pending) with the table owner's rights:
-- only an item of this table that sidecar._approve is applying in this
-- transaction (_apply_pending_here checks). Its conflict, if any, is handed
-- back in the setting sidecar._approve_conflict. Returns 1 when applied.
CREATE OR REPLACE FUNCTION sidecar._undo_apply_pending(p_tracked_id int, p_pending_id bigint)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_apply_pending$
DECLARE
    v_conflict jsonb;
BEGIN
    IF NOT EXISTS (SELECT FROM sidecar.pending p WHERE p.pending_id = p_pending_id AND p.tracked_id = p_tracked_id) THEN
        RAISE EXCEPTION 'sidecar: held change % is not one of this table', p_pending_id USING ERRCODE = 'SC021';
    END IF;
    v_conflict := sidecar._apply_pending_here(p_pending_id);
    PERFORM set_config('sidecar._approve_conflict', coalesce(v_conflict::text, ''), true);
    RETURN CASE WHEN v_conflict IS NULL THEN 1 ELSE 0 END;
END
$_undo_apply_pending$;

-- Refuse to go on from plan tables that this undo function did not make: a
-- caller could have made look-alikes (its own _sc_meta_N, _sc_first_N ...)
-- before any step of the function ran, and those would carry its values.
CREATE OR REPLACE FUNCTION sidecar._undo_check_own(p_tracked_id int)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_undo_check_own$
DECLARE
    v_name text;
BEGIN
    SELECT c.relname INTO v_name
    FROM unnest(ARRAY['meta', 'stmts', 'first', 'last', 'plan']) AS p(prefix)
    JOIN pg_catalog.pg_class c ON c.oid = to_regclass(sidecar._undo_temp(p.prefix, p_tracked_id))
    WHERE c.relowner <> (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
    LIMIT 1;
    IF v_name IS NOT NULL THEN
        RAISE EXCEPTION 'sidecar: % is not a plan table of this undo; nothing was changed', v_name
            USING ERRCODE = '42501', HINT = 'Undo with sidecar undo, which makes its own.';
    END IF;
END
$_undo_check_own$;

-- Record that the open undo of p_run reversed statement p_stmt of table
-- p_tracked_id exactly, by pointing at its images: one statement row of the
-- undo run, its op the inverse of p_stmt's, images_of the statement that
-- holds the images (p_stmt's own, or those p_stmt points at: an undo of an
-- undo reads the original's, not swapped) and images_swapped. Called by
-- sidecar._undo_write once it wrote every row with capture off; with
-- sidecar's rights, as statements are written by capture alone.
CREATE OR REPLACE FUNCTION sidecar._undo_point(p_tracked_id int, p_run uuid, p_stmt bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_undo_point$
DECLARE
    r_s    record;
    v_tag  record;
    v_stmt bigint;
BEGIN
    IF NOT sidecar._undo_is_open(p_run) THEN
        RAISE EXCEPTION 'sidecar: no undo of run % is open in this transaction', p_run
            USING ERRCODE = 'SC008', HINT = 'Undo it with sidecar undo, which opens one (sidecar._undo_begin).';
    END IF;
    SELECT s.op, s.images_of, s.images_swapped INTO r_s
    FROM sidecar.statements s WHERE s.stmt_id = p_stmt AND s.run_id = p_run AND s.tracked_id = p_tracked_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sidecar: statement % is not one of run % on this table', p_stmt, p_run USING ERRCODE = 'SC004';
    END IF;
    SELECT t.action_id INTO v_tag FROM sidecar._tag() t;
    v_stmt := nextval('sidecar.stmt_seq');
    INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at, images_of, images_swapped)
    VALUES (v_stmt, p_tracked_id, CASE r_s.op WHEN 'I' THEN 'D' WHEN 'D' THEN 'I' ELSE r_s.op END,
            nullif(current_setting('sidecar.run_id', true), '')::uuid, v_tag.action_id, txid_current(), session_user,
            statement_timestamp(), coalesce(r_s.images_of, p_stmt),
            CASE WHEN r_s.images_of IS NULL THEN true ELSE NOT r_s.images_swapped END);
    RETURN v_stmt;
END
$_undo_point$;

-- What a table's undo function runs: one step of the undo of p_run for that
-- table, with the rights of whoever calls it (the table's owner, through
-- sidecar.undo_<tracked_id>). Returns a count (rows read, marked or written).
CREATE OR REPLACE FUNCTION sidecar._undo_op(p_tracked_id int, p_op text, p_run uuid, p_args jsonb)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_undo_op$
DECLARE
    v_tables int[];
BEGIN
    p_args := coalesce(p_args, '{}');
    -- The tracked ids of the tables in this undo's plan (foreign-key checks look at their plans).
    v_tables := ARRAY(SELECT t::int FROM jsonb_array_elements_text(coalesce(p_args -> 'tables', '[]')) t);
    IF p_op NOT IN ('images', 'apply_pending') THEN
        PERFORM sidecar._undo_check_own(p_tracked_id);
    END IF;
    RETURN CASE p_op
        WHEN 'images' THEN sidecar._undo_images(p_tracked_id, p_run, p_args, false)
        WHEN 'classify' THEN sidecar._undo_classify(p_tracked_id, p_run, coalesce((p_args ->> 'lock')::boolean, false),
                                                    coalesce((p_args ->> 'force')::boolean, false),
                                                    coalesce((p_args ->> 'row_locks_max')::bigint, 10000))
        WHEN 'clash' THEN sidecar._undo_clash(p_tracked_id)
        WHEN 'orphan' THEN sidecar._undo_orphan(p_tracked_id, v_tables)
        WHEN 'kept' THEN sidecar._undo_kept(p_tracked_id, coalesce((p_args ->> 'predicted')::boolean, false), v_tables)
        WHEN 'referenced' THEN sidecar._undo_referenced(p_tracked_id)
        WHEN 'now' THEN sidecar._undo_now(p_tracked_id)
        WHEN 'apply_pending' THEN sidecar._undo_apply_pending(p_tracked_id, (p_args ->> 'pending_id')::bigint)
        WHEN 'insert' THEN sidecar._undo_write(p_tracked_id, p_run, p_op, false, coalesce((p_args ->> 'pointer')::boolean, false))
        WHEN 'update' THEN sidecar._undo_write(p_tracked_id, p_run, p_op, false, coalesce((p_args ->> 'pointer')::boolean, false))
        WHEN 'delete' THEN
            sidecar._undo_write(p_tracked_id, p_run, p_op, coalesce((p_args ->> 'unreferenced')::boolean, false),
                                coalesce((p_args ->> 'pointer')::boolean, false))
    END;
END
$_undo_op$;

-- The internal functions a table's undo function calls (its owner needs EXECUTE on them).
CREATE OR REPLACE FUNCTION sidecar._undo_internals()
RETURNS text[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $_undo_internals$
    SELECT ARRAY['sidecar._undo_keys_eq(text, text, text[])', 'sidecar._undo_temp(text, int)',
                 'sidecar._undo_trusted(text, oid, int[])', 'sidecar._undo_is_open(uuid)',
                 'sidecar._undo_foreign_keys(oid, boolean)', 'sidecar._undo_refers(text, text[], text[], text)',
                 'sidecar._undo_images(int, uuid, jsonb, boolean)', 'sidecar._undo_match(text, text, jsonb)',
                 'sidecar._undo_classify(int, uuid, boolean, boolean, bigint)', 'sidecar._undo_clash(int)',
                 'sidecar._undo_orphan(int, int[])', 'sidecar._undo_referred(int, boolean, int[])',
                 'sidecar._undo_kept(int, boolean, int[])',
                 'sidecar._undo_referenced(int)', 'sidecar._undo_now(int)',
                 'sidecar._undo_write(int, uuid, text, boolean, boolean)', 'sidecar._undo_referred_now(oid)',
                 'sidecar._undo_point(int, uuid, bigint)', 'sidecar._history_from(int, bigint, bigint)',
                 'sidecar._undo_op(int, text, uuid, jsonb)', 'sidecar._pk_columns(regclass)',
                 'sidecar._undo_apply_pending(int, bigint)', 'sidecar._undo_check_own(int)', 'sidecar._apply_pending_here(bigint)']
$_undo_internals$;

-- Create (or re-create) a tracked table's undo function, sidecar.undo_<id>:
-- SECURITY DEFINER, owned by the table's owner, executable by sidecar_undoer.
-- Run by whoever tracks the table (or installs sidecar): that role must own
-- the table or be a member of its owner, else the function is not made and a
-- warning says who must run `sidecar track` again. Returns whether it was made.
CREATE OR REPLACE FUNCTION sidecar._render_undo(p_tracked_id int)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_render_undo$
DECLARE
    r_t    record;
    v_fn   text := format('sidecar.%I', 'undo_' || p_tracked_id);
    v_name text;
    v_create boolean;
BEGIN
    SELECT t.relid, t.log_table, c.relowner AS owner_id, pg_catalog.pg_get_userbyid(c.relowner) AS owner INTO r_t
    FROM sidecar.tracked t JOIN pg_catalog.pg_class c ON c.oid = t.relid
    WHERE t.tracked_id = p_tracked_id;
    IF r_t.relid IS NULL THEN
        RETURN false;  -- the table was dropped
    END IF;
    -- Giving the function to the owner takes membership; from PostgreSQL 16, the right to SET ROLE
    -- to it (a CREATEROLE role only administers the roles it made unless it says SET).
    IF NOT pg_has_role(current_user, r_t.owner_id,
                       (CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END))
    THEN
        RAISE WARNING 'sidecar: % is owned by %, so this role cannot give undoers the right to restore it',
                      r_t.relid::regclass, r_t.owner
            USING HINT = format('Connect as %I and run: sidecar track %s', r_t.owner, r_t.relid::regclass);
        RETURN false;
    END IF;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION %s(p_op text, p_run uuid, p_args jsonb DEFAULT '{}')
                      RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
                      AS 'SELECT sidecar._undo_op(%s, p_op, p_run, p_args)'$f$, v_fn, p_tracked_id);
    EXECUTE format('COMMENT ON FUNCTION %s(text, uuid, jsonb) IS %L', v_fn,
                   format('sidecar: undo steps of %s with its owner''s rights, values from history only', r_t.relid::regclass));
    -- The new owner needs CREATE on the schema for the moment of the change (PostgreSQL's rule).
    v_create := NOT has_schema_privilege(r_t.owner_id, 'sidecar', 'CREATE');
    IF v_create THEN
        EXECUTE format('GRANT CREATE ON SCHEMA sidecar TO %I', r_t.owner);
    END IF;
    EXECUTE format('ALTER FUNCTION %s(text, uuid, jsonb) OWNER TO %I', v_fn, r_t.owner);
    IF v_create THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA sidecar FROM %I', r_t.owner);
    END IF;
    EXECUTE format('REVOKE ALL ON FUNCTION %s(text, uuid, jsonb) FROM PUBLIC', v_fn);
    IF r_t.owner <> current_user THEN
        -- What the function reads and calls with the owner's rights.
        EXECUTE format('GRANT SELECT ON sidecar.tracked, sidecar.statements, sidecar.columns, sidecar.runs, '
                       'sidecar.pending, sidecar.%I TO %I', r_t.log_table, r_t.owner);
        FOREACH v_name IN ARRAY sidecar._undo_internals() LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_name, r_t.owner);
        END LOOP;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'sidecar_undoer') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s(text, uuid, jsonb) TO sidecar_undoer', v_fn);
    END IF;
    -- Approvals call it from sidecar._apply_pending, which runs as sidecar's owner.
    SELECT pg_catalog.pg_get_userbyid(n.nspowner) INTO v_name FROM pg_catalog.pg_namespace n WHERE n.nspname = 'sidecar';
    IF v_name <> r_t.owner THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s(text, uuid, jsonb) TO %I', v_fn, v_name);
    END IF;
    RETURN true;
END
$_render_undo$;
