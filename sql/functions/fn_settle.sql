-- Settling row-mode history (migration 027): a row-mode capture trigger
-- writes only row images, the first image of each statement carrying its
-- head (sidecar.stmt_head); sidecar._settle() makes the statement rows, and
-- the actions of transactions that registered none, from those heads. Every
-- reader of history calls it first (sidecar.capture.settle() in Python, at
-- the start of every command), so readers read sidecar.statements as if
-- capture had written it.
--
-- A head is told by its op: `_head IS NOT NULL` is false for a composite
-- with any NULL field (a head without an action key).
--
-- Only tables in row mode have heads: a table leaving row mode is settled
-- as it leaves (sidecar.track() passes it as p_leaving: its writers have
-- finished by then, since replacing the triggers waits for them).
--
-- Which heads to look at: those with a statement id at or above
-- sidecar.settled.below; a head's statement row is made once (a statement
-- row that exists is left alone, so two settles at once are harmless). The
-- mark moves up only past ids no open transaction can still add heads below:
-- a writer takes its transaction id (on its first changed row) before its
-- trigger draws a statement id, so once the oldest open transaction is past
-- every transaction that was open when the sequence stood at N, no head
-- below N can appear any more.
DROP FUNCTION IF EXISTS sidecar._settle();  -- before p_leaving
CREATE OR REPLACE FUNCTION sidecar._settle(p_leaving int DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_settle$
DECLARE
    r_mark   record;
    r_log    record;
    v_last   bigint := coalesce(pg_sequence_last_value('sidecar.stmt_seq'::regclass), 0);
    v_done   bigint := 0;
    v_n      bigint;
    v_xmin   bigint := txid_snapshot_xmin(txid_current_snapshot());  -- before any scan below
    v_xmax   bigint;
    v_heads  text;
BEGIN
    SELECT * INTO STRICT r_mark FROM sidecar.settled;
    IF v_last < r_mark.below THEN
        RETURN 0;  -- nothing captured since everything was settled
    END IF;
    IF current_setting('transaction_read_only') = 'on' THEN
        RETURN 0;  -- a hot standby or a read-only transaction: settled by the next writer's reader
    END IF;
    -- The actions first, in the order their first statements were
    -- written, starting when they did (as capture would have made them).
    SELECT string_agg(format('SELECT h._stmt, h._head FROM sidecar.%I h WHERE h._stmt >= $1 '
                             'AND (h._head).op IS NOT NULL AND (h._head).run_id IS NOT NULL', t.log_table),
                      ' UNION ALL ' ORDER BY t.tracked_id)
      INTO v_heads
    FROM sidecar.tracked t
    WHERE (t.capture_mode = 'row' OR t.tracked_id = p_leaving)
      AND to_regclass(format('sidecar.%I', t.log_table)) IS NOT NULL;
    IF v_heads IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format(
        'INSERT INTO sidecar.actions (run_id, key, started_at) '
        'SELECT (h._head).run_id, coalesce((h._head).action, %L || (h._head).txid), min((h._head).at) '
        'FROM (%s) h WHERE NOT EXISTS (SELECT FROM sidecar.statements s WHERE s.stmt_id = h._stmt) '
        'GROUP BY 1, 2 ORDER BY min(h._stmt) '
        'ON CONFLICT ON CONSTRAINT actions_run_id_key_key DO NOTHING', 'tx:', v_heads)
    USING r_mark.below;
    FOR r_log IN
        SELECT t.tracked_id, t.log_table FROM sidecar.tracked t
        WHERE (t.capture_mode = 'row' OR t.tracked_id = p_leaving)
          AND to_regclass(format('sidecar.%I', t.log_table)) IS NOT NULL
        ORDER BY t.tracked_id
    LOOP
        EXECUTE format(
            'INSERT INTO sidecar.statements (stmt_id, tracked_id, op, run_id, action_id, txid, db_user, at) '
            'SELECT h._stmt, $2, (h._head).op, (h._head).run_id, a.action_id, (h._head).txid, '
            '       (h._head).db_user, (h._head).at '
            'FROM sidecar.%I h '
            'LEFT JOIN sidecar.actions a ON a.run_id = (h._head).run_id '
            '                           AND a.key = coalesce((h._head).action, %L || (h._head).txid) '
            'WHERE h._stmt >= $1 AND (h._head).op IS NOT NULL '
            '  AND NOT EXISTS (SELECT FROM sidecar.statements s WHERE s.stmt_id = h._stmt) '
            'ORDER BY h._stmt '
            'ON CONFLICT (stmt_id) DO NOTHING', r_log.log_table, 'tx:')
        USING r_mark.below, r_log.tracked_id;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_done := v_done + v_n;
    END LOOP;
    IF v_done > 0 THEN
        -- Kept counts of a run that is no longer running are trusted as
        -- final (fn_counts.sql): a write under such a run makes them stale.
        DELETE FROM sidecar.run_counts c
        USING sidecar.runs r
        WHERE r.run_id = c.run_id AND r.status <> 'running'
          AND EXISTS (SELECT FROM sidecar.statements s
                      WHERE s.run_id = c.run_id AND s.stmt_id >= r_mark.below
                        AND s.stmt_id > coalesce(c.last_stmt, 0));
    END IF;
    -- Move the mark. The scans above read from r_mark.below with snapshots
    -- taken after v_xmin: every transaction below v_xmin had ended, so if
    -- those open when next_below was read are among them, nothing below
    -- next_below is left to settle. Only in READ COMMITTED, where the snapshot
    -- of the next pair is taken after v_last was read, and by one settle at a
    -- time (another one skips it; the next settle moves it).
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT EXISTS (SELECT FROM sidecar.settled FOR UPDATE SKIP LOCKED) THEN
        RETURN v_done;
    END IF;
    v_xmax := txid_snapshot_xmax(txid_current_snapshot());
    IF r_mark.next_after IS NULL OR v_xmin >= r_mark.next_after THEN
        UPDATE sidecar.settled
        SET below = CASE WHEN r_mark.next_after IS NULL THEN below ELSE greatest(below, r_mark.next_below) END,
            next_below = v_last + 1, next_after = v_xmax;
    END IF;
    RETURN v_done;
END
$_settle$;
