-- Watching tracked tables' shapes with event triggers. Re-applied by
-- `sidecar install` whenever this file changes.
--
-- A capture function is rendered for one shape of its table. Where sidecar
-- may create event triggers (the installer is a superuser), an ALTER TABLE,
-- ALTER TYPE or DROP that changes a tracked table's columns brings its
-- history columns and capture function in line at once, inside the DDL's own
-- transaction, so that no write has to check the shape. Elsewhere every
-- captured statement checks it (see triggers/capture.sql).

-- Sync the tracked tables a DDL command may have reshaped, when their shape
-- is not the one their capture function was rendered for. Only those: the
-- cost of an ALTER TABLE elsewhere does not grow with the tracked tables.
CREATE OR REPLACE FUNCTION sidecar._watch_shapes()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $_watch_shapes$
DECLARE
    v_relids     oid[];
    v_any_table  boolean := false;
    v_tracked_id int;
BEGIN
    IF TG_EVENT = 'ddl_command_end' THEN
        -- The tables altered (sidecar's own DDL on its history tables is
        -- what a sync does). ALTER TYPE reshapes the tables typed by it.
        SELECT array_agg(c.objid) FILTER (WHERE c.classid = 'pg_catalog.pg_class'::regclass),
               coalesce(bool_or(c.command_tag = 'ALTER TYPE'), false)
        INTO v_relids, v_any_table
        FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.schema_name IS DISTINCT FROM 'sidecar';
    ELSE
        -- sql_drop: columns dropped, also by a DROP ... CASCADE of their type,
        -- domain or extension.
        SELECT array_agg(d.objid) INTO v_relids
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.object_type = 'table column' AND d.schema_name IS DISTINCT FROM 'sidecar';
    END IF;
    IF v_relids IS NULL AND NOT v_any_table THEN
        RETURN;
    END IF;
    -- An ALTER TABLE recurses to partitions and inheriting tables.
    WITH RECURSIVE down(relid) AS (
        SELECT unnest(v_relids)
        UNION
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN down ON i.inhparent = down.relid
    )
    SELECT array_agg(relid) INTO v_relids FROM down;
    FOR v_tracked_id IN
        SELECT t.tracked_id FROM sidecar.tracked t
        WHERE t.active AND (v_any_table OR t.relid = ANY (v_relids))
          AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = t.relid)
          AND sidecar._shape(t.relid) IS DISTINCT FROM t.shape
        ORDER BY t.tracked_id
    LOOP
        PERFORM sidecar._sync_shape(v_tracked_id);
    END LOOP;
END
$_watch_shapes$;

-- True when both event triggers exist and are enabled: capture functions
-- are then rendered without the per-statement shape check.
CREATE OR REPLACE FUNCTION sidecar._shapes_watched()
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $_shapes_watched$
    SELECT count(*) = 2 FROM pg_catalog.pg_event_trigger e
    WHERE e.evtname IN ('sidecar_watch_alter', 'sidecar_watch_drop') AND e.evtenabled <> 'D'
      AND e.evtfoid = 'sidecar._watch_shapes()'::regprocedure
$_shapes_watched$;

-- Create the event triggers when they are missing and this role may
-- (PostgreSQL lets only superusers create them). Returns true when it
-- created them now. Triggers a DBA disabled stay disabled: capture then
-- checks the shape on every statement.
CREATE OR REPLACE FUNCTION sidecar._watch_shapes_install()
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $_watch_shapes_install$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger e
               WHERE e.evtname IN ('sidecar_watch_alter', 'sidecar_watch_drop'))
       OR NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN false;
    END IF;
    CREATE EVENT TRIGGER sidecar_watch_alter ON ddl_command_end
        WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE') EXECUTE FUNCTION sidecar._watch_shapes();
    -- A DROP ... CASCADE of a type, domain, extension or schema can drop a
    -- column of a tracked table.
    CREATE EVENT TRIGGER sidecar_watch_drop ON sql_drop EXECUTE FUNCTION sidecar._watch_shapes();
    RETURN true;
END
$_watch_shapes_install$;
