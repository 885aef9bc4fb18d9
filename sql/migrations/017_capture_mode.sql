-- sidecar migration 017: a capture mode per tracked table (issue 22).
--   statement  one AFTER ... FOR EACH STATEMENT trigger per operation with
--              transition tables (triggers/capture.sql): one INSERT writes
--              every image of a statement; the cheapest for bulk writes.
--   row        AFTER ... FOR EACH ROW triggers (triggers/capture_row.sql):
--              no transition table, so an untagged write pays nothing and a
--              small tagged statement pays one short call per row; the
--              statement row is written once per statement, not per row.
-- Both write the same history layout (sidecar.statements, the history
-- table's _stmt/_kind images), so every reader reads either the same way.
ALTER TABLE sidecar.tracked
    ADD COLUMN capture_mode text NOT NULL DEFAULT 'statement'
        CHECK (capture_mode IN ('statement', 'row'));
