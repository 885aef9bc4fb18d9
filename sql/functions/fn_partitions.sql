-- History partitioned by statement-id ranges (issue 25, migration 025).
-- Re-applied by `sidecar install` whenever this file changes.
--
-- sidecar.statements (stmt_id) and every history table (_stmt) are
-- PARTITION BY RANGE of the statement id: partitions of
-- sidecar.partitioning.width ids named <table>_p<lower bound>, the first one
-- from MINVALUE (<table>_p0: all history from before the conversion), and a
-- DEFAULT partition (<table>_pdefault) for an id no partition covers, so that
-- a write never fails for want of one. Capture writes through the parent
-- (tuple routing); readers select through the parent, and a reader bounded
-- by statement ids reads only the partitions of its range.

-- The range partitions of a history table: lower bound (NULL: MINVALUE) and
-- upper bound, read from the catalog; the DEFAULT partition is left out.
CREATE OR REPLACE FUNCTION sidecar._partition_bounds(p_parent regclass)
RETURNS TABLE (part regclass, lo bigint, hi bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_partition_bounds$
    SELECT b.part, nullif(b.m[1], 'MINVALUE')::bigint, b.m[2]::bigint
    FROM (SELECT i.inhrelid::regclass AS part,
                 regexp_match(pg_get_expr(c.relpartbound, c.oid),
                              '^FOR VALUES FROM \(''?(MINVALUE|-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)$') AS m
          FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = p_parent) b
    WHERE b.m IS NOT NULL
$_partition_bounds$;

-- Every history table that exists: sidecar.statements first, then each
-- tracked table's (tracked or untracked since: its history stays), with its
-- partition key and whether it is partitioned yet.
CREATE OR REPLACE FUNCTION sidecar._history_tables()
RETURNS TABLE (tbl regclass, key name, partitioned boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_history_tables$
    SELECT h.tbl, h.key, c.relkind = 'p'
    FROM (SELECT 'sidecar.statements'::regclass AS tbl, 'stmt_id'::name AS key, 0 AS ord
          UNION ALL
          SELECT to_regclass(format('sidecar.%I', t.log_table)), '_stmt', t.tracked_id
          FROM sidecar.tracked t) h
    JOIN pg_catalog.pg_class c ON c.oid = h.tbl
    ORDER BY h.ord
$_history_tables$;

-- Make one partition [p_lo, p_hi) of a history table (p_lo NULL: from
-- MINVALUE). Created as a plain table, then attached: ATTACH takes SHARE
-- UPDATE EXCLUSIVE on the parent, so capture writes on meanwhile (CREATE
-- TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).
CREATE OR REPLACE FUNCTION sidecar._add_partition(p_parent regclass, p_lo bigint, p_hi bigint)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_add_partition$
DECLARE
    v_name name;
BEGIN
    v_name := format('%s_p%s', left((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = p_parent), 40),
                     coalesce(p_lo, 0));
    EXECUTE format('CREATE TABLE sidecar.%I (LIKE %s INCLUDING DEFAULTS INCLUDING STORAGE)', v_name, p_parent);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION sidecar.%I FOR VALUES FROM (%s) TO (%s)', p_parent, v_name,
                   coalesce(p_lo::text, 'MINVALUE'), p_hi);
    RETURN format('sidecar.%I', v_name)::regclass;
END
$_add_partition$;

-- The DEFAULT partition of a history table, made once.
CREATE OR REPLACE FUNCTION sidecar._add_default_partition(p_parent regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_add_default_partition$
DECLARE
    v_name name;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = p_parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') THEN
        RETURN;
    END IF;
    v_name := format('%s_pdefault', left((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = p_parent), 40));
    EXECUTE format('CREATE TABLE sidecar.%I (LIKE %s INCLUDING DEFAULTS INCLUDING STORAGE)', v_name, p_parent);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION sidecar.%I DEFAULT', p_parent, v_name);
END
$_add_default_partition$;

-- Keep `ahead` empty partitions beyond the statement sequence, on every
-- partitioned history table. Called by every sidecar command, by
-- sidecar.start_run() and by sidecar._tag() (a run's first tagged write of a
-- transaction) once the sequence passes sidecar.partitioning.refill_at: so
-- nothing depends on a cron job. Returns the number of partitions made.
--
-- It never makes a writer wait long or fail: one session at a time does the
-- work (the others skip it), each lock is waited for 100 ms at most, and a
-- table it cannot extend now (busy, not this role's) is left for the next
-- call; meanwhile the DEFAULT partition takes what no partition covers.
CREATE OR REPLACE FUNCTION sidecar._partitions_ahead()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms'
    SET enable_seqscan = on  -- called from sidecar._tag(), which turns it off
AS $_partitions_ahead$
DECLARE
    r_cfg     sidecar.partitioning;
    r_table   record;
    v_last    bigint;
    v_hi      bigint;
    v_target  bigint;
    v_lo      bigint;
    v_made    int := 0;
    v_lowest  bigint;
    v_failed  boolean := false;
    v_refill  bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('sidecar.partitions_ahead')) THEN
        RETURN 0;
    END IF;
    SELECT * INTO r_cfg FROM sidecar.partitioning;
    SELECT s.last_value INTO v_last FROM sidecar.stmt_seq s;
    v_target := (v_last / r_cfg.width + 1 + r_cfg.ahead) * r_cfg.width;
    FOR r_table IN SELECT h.tbl FROM sidecar._history_tables() h WHERE h.partitioned LOOP
        SELECT max(b.hi) INTO v_hi FROM sidecar._partition_bounds(r_table.tbl) b;
        BEGIN
            WHILE coalesce(v_hi, 0) < v_target LOOP
                IF v_hi IS NULL OR v_hi <= v_last THEN
                    -- Every partition was used up: ids from here on went to the
                    -- DEFAULT partition, and more may be on their way. Start one
                    -- width clear of them (the gap stays in the DEFAULT partition).
                    v_lo := (v_last / r_cfg.width + 2) * r_cfg.width;
                    v_target := greatest(v_target, v_lo + r_cfg.ahead * r_cfg.width);
                ELSE
                    v_lo := v_hi;
                END IF;
                PERFORM sidecar._add_partition(r_table.tbl, v_lo, v_lo + r_cfg.width);
                v_hi := v_lo + r_cfg.width;
                v_made := v_made + 1;
            END LOOP;
        EXCEPTION
            -- busy, not this role's table, rows in the DEFAULT partition in the
            -- new range, a partition made by another session meanwhile:
            -- left for the next call.
            WHEN lock_not_available OR insufficient_privilege OR check_violation OR duplicate_table
                 OR invalid_object_definition OR object_in_use THEN
                v_failed := true;
        END;
        v_lowest := least(v_lowest, v_hi);
    END LOOP;
    -- The next refill is due when fewer than `ahead` empty partitions remain
    -- beyond the sequence; when some table could not be extended, after a
    -- hundredth of a partition's ids (not at every transaction: a table that
    -- is not this role's would make each tagged transaction try again).
    v_refill := coalesce(v_lowest - r_cfg.ahead * r_cfg.width, 9223372036854775807);
    IF v_failed THEN
        v_refill := least(v_refill, v_last + greatest(r_cfg.width / 100, 1));
    END IF;
    UPDATE sidecar.partitioning p SET refill_at = v_refill WHERE p.refill_at IS DISTINCT FROM v_refill;
    RETURN v_made;
END
$_partitions_ahead$;

-- A new history table (sidecar.track()) made partitioned like
-- sidecar.statements: one partition from MINVALUE up to the partition the
-- sequence is in, then the same ranges as statements' from there, and the
-- DEFAULT partition. Does nothing while statements is not partitioned yet
-- (the next `sidecar install` converts both).
CREATE OR REPLACE FUNCTION sidecar._partition_new_history(p_log regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_partition_new_history$
DECLARE
    v_last  bigint;
    v_first bigint;
    r_part  record;
BEGIN
    SELECT s.last_value INTO v_last FROM sidecar.stmt_seq s;
    SELECT min(b.lo) INTO v_first FROM sidecar._partition_bounds('sidecar.statements') b
    WHERE b.hi > v_last AND b.lo IS NOT NULL;
    IF v_first IS NOT NULL THEN
        PERFORM sidecar._add_partition(p_log, NULL, v_first);
        FOR r_part IN SELECT b.lo, b.hi FROM sidecar._partition_bounds('sidecar.statements') b
                      WHERE b.lo >= v_first ORDER BY b.lo LOOP
            PERFORM sidecar._add_partition(p_log, r_part.lo, r_part.hi);
        END LOOP;
    ELSE
        PERFORM sidecar._add_partition(p_log, NULL, (v_last / (SELECT p.width FROM sidecar.partitioning p) + 1)
                                                    * (SELECT p.width FROM sidecar.partitioning p));
    END IF;
    PERFORM sidecar._add_default_partition(p_log);
END
$_partition_new_history$;

-- Converting an unpartitioned history table (an install from before 025),
-- in three transactions so that writes go on (sidecar/capture/partitioning.py
-- runs them; a DBA can run them by hand, in this order):
--   1. SELECT sidecar._partition_prepare(TABLE, KEY, BOUND);
--        a CHECK (KEY < BOUND) NOT VALID: an instant's ACCESS EXCLUSIVE, no scan
--   2. ALTER TABLE TABLE VALIDATE CONSTRAINT <name returned by 1>;
--        a scan under SHARE UPDATE EXCLUSIVE: writes go on
--   3. SELECT sidecar._partition_convert(TABLE, KEY, BOUND);
--        renames, a new parent, the old table attached as its first
--        partition without a scan (the CHECK proves it): an instant's
--        ACCESS EXCLUSIVE. The old table keeps its rows, indexes and grants.
CREATE OR REPLACE FUNCTION sidecar._partition_prepare(p_table regclass, p_key name, p_bound bigint)
RETURNS name LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_partition_prepare$
DECLARE
    v_check name := left((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = p_table), 40) || '_p0_bound';
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = p_table AND k.conname = v_check) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I < %s) NOT VALID', p_table, v_check, p_key, p_bound);
    END IF;
    RETURN v_check;
END
$_partition_prepare$;

CREATE OR REPLACE FUNCTION sidecar._partition_convert(p_table regclass, p_key name, p_bound bigint)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_partition_convert$
DECLARE
    v_name    name;
    v_part    name;
    v_parent  regclass;
    v_owner   name;
    v_comment text;
    v_check   name;
    r_index   record;
    r_grant   record;
    v_indexes text[] := '{}';
BEGIN
    SELECT c.relname, pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class')
      INTO v_name, v_owner, v_comment
    FROM pg_catalog.pg_class c WHERE c.oid = p_table AND c.relkind = 'r';
    IF v_name IS NULL THEN
        RETURN p_table;  -- partitioned already
    END IF;
    v_part := left(v_name, 40) || '_p0';
    v_check := left(v_name, 40) || '_p0_bound';
    -- The parent's indexes are the old table's, by the same names; the old
    -- table's own are renamed and then attached to them (no build).
    FOR r_index IN
        SELECT ic.relname, pg_get_indexdef(i.indexrelid) AS def, k.conname, pg_get_constraintdef(k.oid) AS condef
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        LEFT JOIN pg_catalog.pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
        WHERE i.indrelid = p_table
    LOOP
        IF r_index.conname IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', p_table, r_index.conname,
                           left(r_index.conname, 55) || '_p0');
            v_indexes := v_indexes || format('ALTER TABLE sidecar.%I ADD CONSTRAINT %I %s', v_name, r_index.conname,
                                             r_index.condef);
        ELSE
            EXECUTE format('ALTER INDEX sidecar.%I RENAME TO %I', r_index.relname, left(r_index.relname, 55) || '_p0');
            v_indexes := v_indexes || r_index.def;  -- CREATE INDEX <its name> ON sidecar.<v_name> ...
        END IF;
    END LOOP;
    EXECUTE format('ALTER TABLE %s RENAME TO %I', p_table, v_part);
    EXECUTE format('CREATE TABLE sidecar.%I (LIKE sidecar.%I INCLUDING DEFAULTS INCLUDING STORAGE) '
                   'PARTITION BY RANGE (%I)', v_name, v_part, p_key);
    v_parent := format('sidecar.%I', v_name)::regclass;
    FOR r_index IN SELECT unnest(v_indexes) AS stmt LOOP
        EXECUTE r_index.stmt;
    END LOOP;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION sidecar.%I FOR VALUES FROM (MINVALUE) TO (%s)',
                   v_parent, v_part, p_bound);
    EXECUTE format('ALTER TABLE sidecar.%I DROP CONSTRAINT IF EXISTS %I', v_part, v_check);
    PERFORM sidecar._add_default_partition(v_parent);
    IF v_comment IS NOT NULL THEN
        EXECUTE format('COMMENT ON TABLE %s IS %L', v_parent, v_comment);
    END IF;
    -- Who could read the old table may read the new parent.
    FOR r_grant IN
        SELECT a.privilege_type, CASE a.grantee WHEN 0 THEN 'PUBLIC'
                                                ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee
        FROM pg_catalog.pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = format('sidecar.%I', v_part)::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON %s TO %s', r_grant.privilege_type, v_parent, r_grant.grantee);
    END LOOP;
    IF v_owner <> current_user AND pg_has_role(v_owner, 'USAGE') THEN
        EXECUTE format('ALTER TABLE %s OWNER TO %I', v_parent, v_owner);
    END IF;
    UPDATE sidecar.partitioning SET refill_at = 0;  -- make partitions ahead at the next chance
    RETURN v_parent;
END
$_partition_convert$;

-- Purge, by partition (sidecar/ops/retention.py). Whether every statement
-- with an id in [p_lo, p_hi) belongs to a run that `sidecar purge --before
-- p_before [--automation p_automation]` removes: finished, started before
-- the limit, of that automation, with no held write waiting for review and
-- no undo in progress (the undo's lock is taken here, held to the end of the
-- transaction). Untagged statements (tables tracked with --capture all) are
-- purged with the rest when no automation is named and they are older than
-- the limit. The runs are found by skipping through the (run_id, stmt_id)
-- index of the range's partitions: the cost is one probe per run in the
-- range, not one per statement.
--   outcome 'purgeable', or 'newer' (a run started at or after the limit:
--   nothing further can be purgeable), or 'kept' with why;
--   runs: the runs that have statements in the range.
CREATE OR REPLACE FUNCTION sidecar._range_purgeable(p_lo bigint, p_hi bigint, p_before timestamptz,
                                                   p_automation text, OUT outcome text, OUT why text,
                                                   OUT runs uuid[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_range_purgeable$
DECLARE
    v_lo   bigint := coalesce(p_lo, -9223372036854775808);
    v_run  uuid;
    r_run  record;
    v_at   timestamptz;
BEGIN
    outcome := 'purgeable';
    runs := '{}';
    SELECT s.at INTO v_at FROM sidecar.statements s
    WHERE s.run_id IS NULL AND s.stmt_id >= v_lo AND s.stmt_id < p_hi ORDER BY s.stmt_id DESC LIMIT 1;
    IF FOUND AND (p_automation IS NOT NULL OR v_at >= p_before) THEN
        outcome := 'kept';
        why := 'untagged writes (tables tracked with --capture all) '
               || CASE WHEN p_automation IS NOT NULL THEN 'belong to no automation' ELSE 'newer than the limit' END;
        RETURN;
    END IF;
    -- Images an undo's statement outside the range points at (images_of,
    -- migration 024) are that undo's history too: kept while it is.
    IF EXISTS (SELECT FROM sidecar.statements s
               WHERE s.images_of >= v_lo AND s.images_of < p_hi AND NOT (s.stmt_id >= v_lo AND s.stmt_id < p_hi)) THEN
        outcome := 'kept';
        why := 'an undo of a later range reads its images';
        RETURN;
    END IF;
    SELECT s.run_id INTO v_run FROM sidecar.statements s
    WHERE s.run_id IS NOT NULL AND s.stmt_id >= v_lo AND s.stmt_id < p_hi ORDER BY s.run_id LIMIT 1;
    WHILE v_run IS NOT NULL LOOP
        runs := runs || v_run;
        SELECT r.started_at, r.status, r.automation INTO r_run FROM sidecar.runs r WHERE r.run_id = v_run;
        IF r_run.started_at >= p_before THEN
            outcome := 'newer';
            why := format('run %s started after the limit', left(v_run::text, 8));
            RETURN;
        ELSIF r_run.status = 'running' THEN
            outcome := 'kept';
            why := format('run %s is still running', left(v_run::text, 8));
        ELSIF p_automation IS NOT NULL AND r_run.automation IS DISTINCT FROM p_automation THEN
            outcome := 'kept';
            why := format('run %s is of %s', left(v_run::text, 8), r_run.automation);
        ELSIF to_regclass('sidecar.pending') IS NOT NULL
              AND EXISTS (SELECT FROM sidecar.pending p WHERE p.run_id = v_run AND p.status = 'pending') THEN
            outcome := 'kept';
            why := format('run %s has held items waiting for review', left(v_run::text, 8));
        ELSIF NOT pg_try_advisory_xact_lock(hashtext('sidecar.undo'), hashtext(v_run::text)) THEN
            outcome := 'kept';
            why := format('an undo of run %s is in progress', left(v_run::text, 8));
        END IF;
        SELECT s.run_id INTO v_run FROM sidecar.statements s
        WHERE s.run_id > v_run AND s.stmt_id >= v_lo AND s.stmt_id < p_hi ORDER BY s.run_id LIMIT 1;
        IF NOT FOUND THEN
            v_run := NULL;
        END IF;
    END LOOP;
END
$_range_purgeable$;

-- Drop the statement partition [p_lo, p_hi) and every history partition
-- within it when all its statements are purgeable; a history partition that
-- spans more (the first partition of a table tracked later) goes once no
-- statement of its range is left. Each DROP takes ACCESS EXCLUSIVE on its
-- parent for an instant; waited for 1 s at most (the caller reports the
-- range as busy and a later purge drops it). Returns the outcome and the
-- runs of the range (see _range_purgeable), the partitions dropped and the
-- row images they held (counted below 10,000 pages, else the planner's
-- estimate: counting would read them all).
CREATE OR REPLACE FUNCTION sidecar._purge_range(p_lo bigint, p_hi bigint, p_before timestamptz, p_automation text,
                                               OUT outcome text, OUT why text, OUT runs uuid[],
                                               OUT partitions int, OUT images bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s'
AS $_purge_range$
DECLARE
    r_part record;
    v_n    bigint;
BEGIN
    partitions := 0;
    images := 0;
    SELECT p.outcome, p.why, p.runs INTO outcome, why, runs
    FROM sidecar._range_purgeable(p_lo, p_hi, p_before, p_automation) p;
    IF outcome <> 'purgeable' THEN
        RETURN;
    END IF;
    FOR r_part IN
        SELECT b.part, b.lo, b.hi, h.tbl = 'sidecar.statements'::regclass AS is_statements,
               c.reltuples < 0 OR c.relpages < 10000 AS small, c.reltuples::bigint AS est
        FROM sidecar._history_tables() h, sidecar._partition_bounds(h.tbl) b, pg_catalog.pg_class c
        WHERE h.partitioned AND c.oid = b.part AND b.hi <= p_hi
          AND b.hi > coalesce(p_lo, -9223372036854775808)
        ORDER BY (h.tbl = 'sidecar.statements'::regclass) DESC, b.hi
    LOOP
        IF NOT r_part.is_statements AND EXISTS (
            SELECT FROM sidecar.statements s
            WHERE s.stmt_id >= coalesce(r_part.lo, -9223372036854775808) AND s.stmt_id < r_part.hi) THEN
            CONTINUE;  -- spans statements kept
        END IF;
        IF NOT r_part.is_statements THEN
            v_n := r_part.est;
            IF r_part.small THEN  -- counted; a big one is estimated (counting would read it all)
                EXECUTE format('SELECT count(*) FROM %s', r_part.part) INTO v_n;
            END IF;
            images := images + v_n;
        END IF;
        EXECUTE format('DROP TABLE %s', r_part.part);
        partitions := partitions + 1;
    END LOOP;
END
$_purge_range$;

-- After partitions were dropped: the runs among p_runs that have no
-- statement left are marked purged, as sidecar._purge_run() marks a run it
-- deleted row by row. A run is looked for only where it can still be: from
-- p_from on (the partitions the purge did not reach) and in the DEFAULT
-- partition. Returns the number of runs marked.
CREATE OR REPLACE FUNCTION sidecar._mark_purged(p_runs uuid[], p_from bigint)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_mark_purged$
DECLARE
    v_gone uuid[];
    v_default regclass := to_regclass('sidecar.statements_pdefault');
    v_left boolean;
    v_run uuid;
BEGIN
    v_gone := '{}';
    FOREACH v_run IN ARRAY p_runs LOOP
        v_left := EXISTS (SELECT FROM sidecar.statements s WHERE s.run_id = v_run AND s.stmt_id >= p_from);
        IF NOT v_left AND v_default IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT FROM %s s WHERE s.run_id = $1)', v_default) INTO v_left USING v_run;
        END IF;
        IF NOT v_left THEN
            v_gone := v_gone || v_run;
        END IF;
    END LOOP;
    DELETE FROM sidecar.run_counts c WHERE c.run_id = ANY (v_gone);
    UPDATE sidecar.actions a SET context = NULL WHERE a.run_id = ANY (v_gone) AND a.context IS NOT NULL;
    UPDATE sidecar.runs r SET purged_at = clock_timestamp() WHERE r.run_id = ANY (v_gone) AND r.purged_at IS NULL;
    RETURN cardinality(v_gone);
END
$_mark_purged$;
