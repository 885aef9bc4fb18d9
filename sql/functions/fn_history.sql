-- Reading history through the statements that point at other images.
--
-- An undo that reverses one statement exactly does not capture its restore:
-- its statement row points at the reversed statement's images (images_of),
-- read with the before- and after-image swapped when images_swapped
-- (migration 024, docs/undo.md). Every reader of a table's history over a
-- range of statements reads from what sidecar._history_from() gives instead of
-- the history table itself, and so sees such a statement's images as its own:
-- _stmt the pointing statement's id, _kind as read.

-- A FROM item (to be given an alias) with the history rows of a tracked
-- table whose statements lie in p_lo..p_hi, the images pointed at included.
-- Where no statement of the range points at images (the usual case) it is
-- the history table itself, so readers' plans stay as they were. The rows
-- pointed at have no ctid of their own to page by: readers that page by ctid
-- read them from the history table under images_of (sidecar/console).
CREATE OR REPLACE FUNCTION sidecar._history_from(p_tracked_id int, p_lo bigint, p_hi bigint)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $_history_from$
DECLARE
    v_log  text;
    v_cols text;
BEGIN
    SELECT t.log_table INTO STRICT v_log FROM sidecar.tracked t WHERE t.tracked_id = p_tracked_id;
    IF NOT EXISTS (SELECT FROM sidecar.statements p
                   WHERE p.stmt_id BETWEEN p_lo AND p_hi AND p.images_of IS NOT NULL
                     AND p.tracked_id = p_tracked_id) THEN
        RETURN format('sidecar.%I', v_log);
    END IF;
    SELECT string_agg(format('h.%I', a.attname), ', ' ORDER BY a.attnum) INTO v_cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass(format('sidecar.%I', v_log)) AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname NOT IN ('_stmt', '_kind', '_head');
    RETURN format('(SELECT h._stmt, h._kind, %4$s FROM sidecar.%1$I h WHERE h._stmt BETWEEN %2$s AND %3$s '
                  'UNION ALL '
                  'SELECT p.stmt_id, (CASE WHEN p.images_swapped THEN translate(h._kind::text, ''ON'', ''NO'') '
                  'ELSE h._kind::text END)::"char", %4$s '
                  'FROM sidecar.statements p JOIN sidecar.%1$I h ON h._stmt = p.images_of '
                  'WHERE p.stmt_id BETWEEN %2$s AND %3$s AND p.images_of IS NOT NULL AND p.tracked_id = %5$s)',
                  v_log, p_lo, p_hi, v_cols, p_tracked_id);
END
$_history_from$;
