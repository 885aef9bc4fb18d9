-- Rows a run changed, per table. Re-applied by `sidecar install` whenever
-- this file changes.

-- {"schema.table": rows changed, ...}: each row once however often the run
-- wrote it, no-op rows left out; complete is false when the count is one
-- kept from earlier (counted_at) and the run has written since. Kept in
-- sidecar.run_counts: a finished run's count as it is (a later write tagged
-- with it drops the count), a running run's while its statements are the
-- ones counted (how many, and the newest; one scan of the run's index
-- entries, not of its images).
--
-- Counting reads every image of the run. A run left running for days (a
-- bot tagged through a setting) writes all the time, so a list of runs
-- would count it all again every time it is shown: minutes for millions of
-- statements. Past p_recount_max statements, a running run's kept count is
-- returned as it is (rows changed only ever grow while it runs: a lower
-- bound; one never counted is counted over its first p_recount_max
-- statements), and it is counted again in full once it has finished.
CREATE OR REPLACE FUNCTION sidecar.run_rows(p_run uuid, p_recount_max bigint DEFAULT 50000,
                                            OUT counts jsonb, OUT complete boolean, OUT counted_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $run_rows$
DECLARE
    v_counts  jsonb;
    v_status  text;
    r_table   record;
    v_pk      text;
    v_n       bigint;
    v_stmts   bigint;
    v_last    bigint;
    r_kept    record;
BEGIN
    PERFORM sidecar._settle();  -- row-mode statements (fn_settle.sql)
    SELECT status INTO v_status FROM sidecar.runs WHERE run_id = p_run;
    SELECT c.counts, c.statements, c.last_stmt, c.counted_at INTO r_kept
    FROM sidecar.run_counts c WHERE c.run_id = p_run;
    complete := true;
    counted_at := r_kept.counted_at;
    IF r_kept.counts IS NOT NULL AND r_kept.statements IS NULL THEN
        counts := r_kept.counts;  -- kept once the run had finished
        RETURN;
    END IF;
    -- Kept while the run was running (it may have written since), or running now.
    IF r_kept.counts IS NOT NULL OR v_status = 'running' THEN
        -- Counted up to one past the limit: a big run's index entries are not all read.
        SELECT count(*) INTO v_stmts
        FROM (SELECT FROM sidecar.statements s WHERE s.run_id = p_run LIMIT p_recount_max + 1) n;
        SELECT max(s.stmt_id) INTO v_last FROM sidecar.statements s WHERE s.run_id = p_run;
        IF r_kept.statements = v_stmts AND r_kept.last_stmt IS NOT DISTINCT FROM v_last THEN
            counts := r_kept.counts;
            RETURN;
        END IF;
        IF v_status = 'running' AND v_stmts > p_recount_max THEN
            IF r_kept.counts IS NOT NULL THEN
                counts := r_kept.counts;
                complete := r_kept.last_stmt IS NOT DISTINCT FROM v_last;
                RETURN;
            END IF;
            -- Never counted: its first p_recount_max statements are, and kept.
            SELECT s.stmt_id INTO v_last FROM sidecar.statements s WHERE s.run_id = p_run
            ORDER BY s.stmt_id OFFSET greatest(p_recount_max, 1) - 1 LIMIT 1;
            v_stmts := greatest(p_recount_max, 1);
            complete := false;
        ELSIF v_stmts > p_recount_max THEN  -- counted in full below
            SELECT count(*) INTO v_stmts FROM sidecar.statements s WHERE s.run_id = p_run;
        END IF;
    END IF;
    v_counts := '{}';
    FOR r_table IN
        SELECT t.tracked_id, t.relid, t.log_table, t.pk_columns, min(s.stmt_id) AS lo, max(s.stmt_id) AS hi
        FROM sidecar.statements s JOIN sidecar.tracked t USING (tracked_id)
        WHERE s.run_id = p_run AND (complete OR s.stmt_id <= v_last)
        GROUP BY t.tracked_id
    LOOP
        SELECT string_agg(format('l.%I', c), ', ') INTO v_pk FROM unnest(r_table.pk_columns) AS c;
        -- A row counts when one of its writes changed it: any insert or
        -- delete, or an UPDATE whose before- and after-image differ. Each
        -- image's statement is looked up by its key inside the scan of the
        -- range (OFFSET 0 keeps the planner from turning that around: for a
        -- run newer than the statistics it expects one row on each side, and
        -- would scan the range again per statement of the run).
        EXECUTE format(
            'SELECT count(*) FROM (SELECT DISTINCT %1$s FROM %2$s l '
            'CROSS JOIN LATERAL (SELECT s.op FROM sidecar.statements s '
            'WHERE s.stmt_id = l._stmt AND s.run_id = $3 OFFSET 0) s '
            'WHERE l._stmt BETWEEN $1 AND $2 '
            'GROUP BY %1$s, l._stmt, s.op '
            'HAVING s.op <> %3$L OR count(*) = 1 OR count(DISTINCT to_jsonb(l) - %4$L::text[]) > 1) changed',
            -- (an undo's statements may point at the images of what they reversed: fn_history.sql)
            v_pk, sidecar._history_from(r_table.tracked_id, r_table.lo, r_table.hi), 'U', '{_kind,_head}')
            INTO v_n USING r_table.lo, r_table.hi, p_run;
        IF v_n > 0 THEN
            v_counts := v_counts || jsonb_build_object(sidecar._qualname(r_table.relid), v_n);
        END IF;
    END LOOP;
    -- A running run may write on, and statements committed while this
    -- counted are not in its snapshot: its count says which statements it
    -- covers. A finished run's is kept as it is.
    IF v_status IS DISTINCT FROM 'running' THEN
        v_stmts := NULL;
        v_last := NULL;
    END IF;
    INSERT INTO sidecar.run_counts AS c (run_id, counts, statements, last_stmt)
    VALUES (p_run, v_counts, v_stmts, v_last)
    ON CONFLICT (run_id) DO UPDATE
    SET counts = EXCLUDED.counts, statements = EXCLUDED.statements, last_stmt = EXCLUDED.last_stmt,
        counted_at = clock_timestamp()
    RETURNING c.counted_at INTO counted_at;
    counts := v_counts;
END
$run_rows$;

-- The counts alone, as sidecar.run_rows() gives them.
CREATE OR REPLACE FUNCTION sidecar.run_counts(p_run uuid)
RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $run_counts$
    SELECT r.counts FROM sidecar.run_rows(p_run) r
$run_counts$;
