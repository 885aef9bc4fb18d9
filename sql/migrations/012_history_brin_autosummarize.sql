-- sidecar migration 012: history's BRIN indexes summarize each block range
-- as soon as it is full (autosummarize: autovacuum does it in the
-- background). Without it, ranges filled since the table's last VACUUM are
-- not summarized, and a BRIN scan reads every one of them: a reader of a
-- recent run (show, undo, the console) read all history written since, 150 MB
-- for a page of the console after a day of an always-on bot. The ranges not
-- summarized yet are summarized here, once.
DO $migration$
DECLARE
    v_index regclass;
BEGIN
    FOR v_index IN
        SELECT i.indexrelid::regclass
        FROM sidecar.tracked t
        JOIN pg_class c ON c.relname = t.log_table AND c.relnamespace = 'sidecar'::regnamespace
        JOIN pg_index i ON i.indrelid = c.oid
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        WHERE am.amname = 'brin'
    LOOP
        EXECUTE format('ALTER INDEX %s SET (autosummarize = on)', v_index);
        PERFORM brin_summarize_new_values(v_index);
    END LOOP;
END
$migration$;
