-- Retention: removing old history, only when an operator asks. Re-applied by
-- `sidecar install` whenever this file changes.
--
-- History is append-only and written in statement order, so the rows of old
-- runs sit at the front of each history table: once purged and vacuumed,
-- that space is reused by new captures instead of growing the table.

-- Purge one run's captured history, in the caller's transaction. Returns the
-- number of row images removed, or NULL when the run must be kept: it has
-- held items waiting for review, or an undo of it is in progress.
-- Images that an undo's statement points at (statements.images_of, migration
-- 024) are kept while that statement is: the undo reads them as its own. The
-- purge of the last such undo removes them, once the run that wrote them
-- was purged.
CREATE OR REPLACE FUNCTION sidecar._purge_run(p_run uuid)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_purge_run$
DECLARE
    r_table  record;
    v_rows   bigint := 0;
    v_n      bigint;
BEGIN
    -- An undo holds this lock for its whole transaction.
    IF NOT pg_try_advisory_xact_lock(hashtext('sidecar.undo'), hashtext(p_run::text)) THEN
        RETURN NULL;
    END IF;
    IF to_regclass('sidecar.pending') IS NOT NULL
       AND EXISTS (SELECT FROM sidecar.pending WHERE run_id = p_run AND status = 'pending') THEN
        RETURN NULL;
    END IF;
    PERFORM sidecar._settle();  -- row-mode statements (fn_settle.sql): the run's and those pointing at it
    FOR r_table IN
        SELECT t.log_table, min(s.stmt_id) AS lo, max(s.stmt_id) AS hi
        FROM sidecar.statements s JOIN sidecar.tracked t USING (tracked_id)
        WHERE s.run_id = p_run GROUP BY t.log_table
    LOOP
        -- Each image's statement is looked up by its key (OFFSET 0 keeps the
        -- planner from scanning the run's statements once per image).
        EXECUTE format('DELETE FROM sidecar.%I l WHERE l._stmt BETWEEN $1 AND $2 '
                       'AND EXISTS (SELECT FROM sidecar.statements s WHERE s.stmt_id = l._stmt AND s.run_id = $3 '
                       'OFFSET 0) '
                       'AND NOT EXISTS (SELECT FROM sidecar.statements p WHERE p.images_of = l._stmt '
                       'AND p.run_id <> $3)', r_table.log_table)
            USING r_table.lo, r_table.hi, p_run;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_rows := v_rows + v_n;
    END LOOP;
    -- Images this run's statements pointed at, of a run purged already, that
    -- no other statement points at: nothing reads them any more.
    FOR r_table IN
        SELECT t.log_table, array_agg(DISTINCT p.images_of) AS stmts
        FROM sidecar.statements p JOIN sidecar.tracked t USING (tracked_id)
        WHERE p.run_id = p_run AND p.images_of IS NOT NULL
          AND NOT EXISTS (SELECT FROM sidecar.statements o WHERE o.stmt_id = p.images_of)
          AND NOT EXISTS (SELECT FROM sidecar.statements q WHERE q.images_of = p.images_of AND q.run_id <> p_run)
        GROUP BY t.log_table
    LOOP
        EXECUTE format('DELETE FROM sidecar.%I l WHERE l._stmt = ANY($1)', r_table.log_table) USING r_table.stmts;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_rows := v_rows + v_n;
    END LOOP;
    DELETE FROM sidecar.statements WHERE run_id = p_run;
    DELETE FROM sidecar.run_counts WHERE run_id = p_run;
    -- The context goes with the images: what the model read (excerpts of
    -- mails, tool results) may hold the same personal data as the rows.
    UPDATE sidecar.actions SET context = NULL WHERE run_id = p_run AND context IS NOT NULL;
    UPDATE sidecar.runs SET purged_at = clock_timestamp() WHERE run_id = p_run;
    RETURN v_rows;
END
$_purge_run$;
