-- The table inventory and the failure drill's bookkeeping. Re-applied by
-- `sidecar install` whenever this file changes (CREATE OR REPLACE only).
--
-- SQLSTATE SC004 (shared with tracking): bad inventory options, table not
-- tracked. Neither function is granted to anyone: the sidecar schema's owner
-- (who tracks tables) sets the inventory and runs drills.

-- Record who owns a tracked table, how risky a bad write to it is and what
-- kind of records it holds. NULL leaves a field as it is; '' clears owner.
--   p_table  the tracked table
--   p_owner  team or person who answers for the table
--   p_risk   low | medium | high
--   p_kind   draft | final
-- Returns the tracked_id; logs an 'inventory' event.
CREATE OR REPLACE FUNCTION sidecar.set_table_info(p_table regclass, p_owner text DEFAULT NULL,
                                                  p_risk text DEFAULT NULL, p_kind text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $set_table_info$
DECLARE
    v_id    int;
    r_after record;
BEGIN
    SELECT tracked_id INTO v_id FROM sidecar.tracked WHERE relid = p_table AND active;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'sidecar: table % is not tracked, so it has no inventory entry', p_table
            USING ERRCODE = 'SC004', HINT = format('Track it first: sidecar track %s', p_table);
    END IF;
    IF p_risk IS NOT NULL AND p_risk NOT IN ('low', 'medium', 'high') THEN
        RAISE EXCEPTION 'sidecar: risk % is not known; use low, medium or high', quote_literal(p_risk)
            USING ERRCODE = 'SC004';
    END IF;
    IF p_kind IS NOT NULL AND p_kind NOT IN ('draft', 'final') THEN
        RAISE EXCEPTION 'sidecar: kind % is not known; use draft or final', quote_literal(p_kind)
            USING ERRCODE = 'SC004';
    END IF;
    UPDATE sidecar.tracked
    SET owner = CASE WHEN p_owner IS NULL THEN owner ELSE nullif(btrim(p_owner), '') END,
        risk = coalesce(p_risk, risk),
        kind = coalesce(p_kind, kind)
    WHERE tracked_id = v_id
    RETURNING owner, risk, kind INTO r_after;
    PERFORM sidecar._log_event('inventory', NULL,
        format('Inventory of %s: owner %s, risk %s, kind %s', sidecar._qualname(p_table),
               coalesce(r_after.owner, 'not set'), coalesce(r_after.risk, 'not set'),
               coalesce(r_after.kind, 'not set')),
        jsonb_build_object('table', sidecar._qualname(p_table), 'owner', r_after.owner,
                           'risk', r_after.risk, 'kind', r_after.kind));
    RETURN v_id;
END
$set_table_info$;

-- Remove everything a failure drill left in the sidecar schema for its
-- scratch copy: the copy's tracking (triggers, capture function, history
-- table), the drill's runs (automation 'sidecar-drill', their undos and
-- reruns), their statements, actions, steps, pauses and events. Called by
-- the drill before it drops its scratch schema, so `sidecar runs` and the
-- event trail never show drill runs or name a dropped table. Refuses any
-- table outside a sidecar_drill_* schema.
--   p_tracked_id  the copy's sidecar.tracked row
--   p_drill       the drill's id (its scratch schema's name, in runs.meta)
-- Returns {"runs": n, "events": n}.
CREATE OR REPLACE FUNCTION sidecar._drill_cleanup(p_tracked_id int, p_drill text)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_drill_cleanup$
DECLARE
    r_tracked  record;
    v_schema   name;
    v_name     text;
    v_runs     uuid[];
    v_events   bigint;
BEGIN
    SELECT * INTO r_tracked FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('runs', 0, 'events', 0);
    END IF;
    SELECT n.nspname INTO v_schema
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = r_tracked.relid;
    IF v_schema IS NOT NULL AND v_schema NOT LIKE 'sidecar\_drill\_%' THEN
        RAISE EXCEPTION 'sidecar: % is not a drill''s scratch copy; refusing to remove its history',
                        r_tracked.relid USING ERRCODE = 'SC004';
    END IF;
    v_name := sidecar._qualname(r_tracked.relid);

    WITH RECURSIVE drill_runs(run_id) AS (
        SELECT r.run_id FROM sidecar.runs r
        WHERE r.automation IN ('sidecar-drill', 'sidecar undo')
          AND (r.meta ->> 'drill' = p_drill
               OR r.run_id IN (SELECT s.run_id FROM sidecar.statements s WHERE s.tracked_id = p_tracked_id))
        UNION
        SELECT r.run_id FROM sidecar.runs r JOIN drill_runs d ON r.undo_of = d.run_id OR r.rerun_of = d.run_id
        WHERE r.automation IN ('sidecar-drill', 'sidecar undo')
    )
    SELECT coalesce(array_agg(run_id), '{}') INTO v_runs FROM drill_runs;

    IF v_name IS NOT NULL AND r_tracked.active THEN
        PERFORM sidecar.untrack(r_tracked.relid);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS sidecar.%I()', 'capture_' || p_tracked_id);
    EXECUTE format('DROP FUNCTION IF EXISTS sidecar.%I()', 'hold_' || p_tracked_id);

    DELETE FROM sidecar.events e
    WHERE e.run_id = ANY (v_runs)
       OR (v_name IS NOT NULL AND e.detail ->> 'table' = v_name)
       OR (e.kind IN ('pause', 'resume') AND e.detail ->> 'scope' = 'automation'
           AND e.detail ->> 'target' = 'sidecar-drill')
       OR (e.kind IN ('pause', 'resume') AND e.detail ->> 'scope' = 'table'
           AND e.detail ->> 'target' = p_tracked_id::text);
    GET DIAGNOSTICS v_events = ROW_COUNT;

    IF to_regclass('sidecar.pending') IS NOT NULL THEN
        EXECUTE 'DELETE FROM sidecar.pending WHERE run_id = ANY ($1) OR tracked_id = $2'
            USING v_runs, p_tracked_id;
    END IF;
    IF to_regclass('sidecar.rules') IS NOT NULL THEN
        EXECUTE 'DELETE FROM sidecar.rules WHERE tracked_id = $1' USING p_tracked_id;
    END IF;
    DELETE FROM sidecar.steps WHERE run_id = ANY (v_runs);
    DELETE FROM sidecar.step_plan WHERE run_id = ANY (v_runs);
    DELETE FROM sidecar.step_failures WHERE run_id = ANY (v_runs);
    DELETE FROM sidecar.step_blocks WHERE run_id = ANY (v_runs);
    DELETE FROM sidecar.statements WHERE run_id = ANY (v_runs) OR tracked_id = p_tracked_id;
    DELETE FROM sidecar.actions WHERE run_id = ANY (v_runs);
    -- The runs refer to each other (undo_of, rerun_of, undone_by): one statement removes them all.
    DELETE FROM sidecar.runs WHERE run_id = ANY (v_runs);
    DELETE FROM sidecar.pauses
    WHERE (scope = 'automation' AND target = 'sidecar-drill')
       OR (scope = 'table' AND target = p_tracked_id::text);
    EXECUTE format('DROP TABLE IF EXISTS sidecar.%I', r_tracked.log_table);
    DELETE FROM sidecar.tracked WHERE tracked_id = p_tracked_id;
    RETURN jsonb_build_object('runs', cardinality(v_runs), 'events', v_events);
END
$_drill_cleanup$;

REVOKE EXECUTE ON FUNCTION sidecar.set_table_info(regclass, text, text, text),
                           sidecar._drill_cleanup(int, text) FROM PUBLIC;

-- The automations that wrote each tracked table (undo runs left out), for
-- `sidecar inventory`: the summary in sidecar.table_writers, brought up to
-- date from the statements captured since it was last read, then returned.
--
-- A statement id is taken when a statement is captured but becomes visible
-- when its transaction commits, so a transaction still open may commit ids
-- below those already read. The summary is therefore advanced only up to
-- statements older than an hour (a writing transaction open longer is not
-- expected); the newer ones are read on every call and returned with it, not
-- stored. Each call reads the last hour plus what was captured since the
-- previous call, never all history.
CREATE OR REPLACE FUNCTION sidecar.table_writers_ever()
RETURNS TABLE (tracked_id int, automations text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $table_writers_ever$
DECLARE
    v_from  bigint;
    v_upto  bigint;
BEGIN
    -- One summarizer at a time; the others read what is stored plus the rest.
    IF pg_try_advisory_xact_lock(hashtext('sidecar.table_writers')) THEN
        SELECT w.read_upto INTO v_from FROM sidecar.table_writers_read w;
        SELECT max(s.stmt_id) INTO v_upto
        FROM sidecar.statements s
        WHERE s.stmt_id > v_from AND s.at < now() - interval '1 hour';
        IF v_upto IS NOT NULL THEN
            INSERT INTO sidecar.table_writers (tracked_id, automation)
            SELECT DISTINCT s.tracked_id, r.automation
            FROM sidecar.statements s JOIN sidecar.runs r ON r.run_id = s.run_id
            WHERE s.stmt_id > v_from AND s.stmt_id <= v_upto AND r.undo_of IS NULL
              AND EXISTS (SELECT FROM sidecar.tracked t WHERE t.tracked_id = s.tracked_id)
            ON CONFLICT DO NOTHING;
            UPDATE sidecar.table_writers_read SET read_upto = v_upto, read_at = now();
        END IF;
    END IF;
    SELECT w.read_upto INTO v_from FROM sidecar.table_writers_read w;
    RETURN QUERY
        SELECT x.tracked_id, array_agg(DISTINCT x.automation ORDER BY x.automation)
        FROM (SELECT w.tracked_id, w.automation FROM sidecar.table_writers w
              UNION
              SELECT s.tracked_id, r.automation
              FROM sidecar.statements s JOIN sidecar.runs r ON r.run_id = s.run_id
              WHERE s.stmt_id > v_from AND r.undo_of IS NULL) x
        GROUP BY x.tracked_id;
END
$table_writers_ever$;

-- Rows each automation wrote to each tracked table in the last p_days days
-- (undo runs and the automations in p_skip left out), for `sidecar
-- inventory`. A statement's rows (its after-images, or a delete's
-- before-images) are counted once, the first time a call sees it, and kept
-- in sidecar.statement_rows (migration 026): a call reads the window's
-- statements (BRIN on statements.at) and their kept counts, and images only
-- of statements not counted yet, so its cost follows the window's statements
-- and what was captured since the last call, not its images or all history.
-- A statement still being written is not visible, so it is never counted
-- short: it is counted by the first call after its transaction commits.
CREATE OR REPLACE FUNCTION sidecar.table_rows_written(p_days int, p_skip text[] DEFAULT '{}')
RETURNS TABLE (tracked_id int, automation text, rows bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $table_rows_written$
DECLARE
    v_since  timestamptz := now() - make_interval(days => p_days);
    v_oldest bigint;
    r_table  record;
BEGIN
    -- Counts of purged statements (below the oldest one kept) go.
    SELECT min(s.stmt_id) INTO v_oldest FROM sidecar.statements s;
    DELETE FROM sidecar.statement_rows c WHERE v_oldest IS NULL OR c.stmt_id < v_oldest;
    FOR r_table IN
        SELECT s.tracked_id, t.log_table, min(s.stmt_id) AS lo, max(s.stmt_id) AS hi
        FROM sidecar.statements s JOIN sidecar.tracked t ON t.tracked_id = s.tracked_id
        WHERE s.at >= v_since AND NOT EXISTS (SELECT FROM sidecar.statement_rows c WHERE c.stmt_id = s.stmt_id)
        GROUP BY s.tracked_id, t.log_table
    LOOP
        -- The range's images counted per statement, then each statement looked up once.
        EXECUTE format(
            'INSERT INTO sidecar.statement_rows (stmt_id, rows) '
            'SELECT s.stmt_id, CASE WHEN s.op = %L THEN g.o ELSE g.n END '
            'FROM (SELECT l._stmt, count(*) FILTER (WHERE l._kind = %L) AS n, '
            '             count(*) FILTER (WHERE l._kind = %L) AS o '
            '      FROM sidecar.%I l WHERE l._stmt BETWEEN $1 AND $2 GROUP BY l._stmt) g '
            'JOIN sidecar.statements s ON s.stmt_id = g._stmt '
            'WHERE s.tracked_id = $3 AND s.at >= $4 '
            'ON CONFLICT (stmt_id) DO NOTHING',
            'D', 'N', 'O', r_table.log_table)
            USING r_table.lo, r_table.hi, r_table.tracked_id, v_since;
    END LOOP;
    RETURN QUERY
        SELECT s.tracked_id, r.automation, sum(c.rows)::bigint
        FROM sidecar.statements s
        JOIN sidecar.statement_rows c ON c.stmt_id = s.stmt_id
        JOIN sidecar.runs r ON r.run_id = s.run_id
        WHERE s.at >= v_since AND r.undo_of IS NULL AND r.automation <> ALL (p_skip)
        GROUP BY s.tracked_id, r.automation;
END
$table_rows_written$;

REVOKE EXECUTE ON FUNCTION sidecar.table_rows_written(int, text[]) FROM PUBLIC;
