-- sidecar migration 026: rows written per statement, kept for the readers
-- that add them up (issue 25).
--
-- `sidecar inventory` says how many rows each automation wrote to each table
-- in the last N days. It counted them from the window's row images: on a
-- busy database a week holds millions of images, and a long history made
-- every call read them again. sidecar.table_rows_written() (fn_inventory.sql)
-- counts each statement's rows once, from its images, when it first sees the
-- statement, and keeps the count here; a call then reads the window's
-- statements and these counts, and counts images only for statements
-- captured since the last call. Capture does not write this table (its cost
-- is unchanged); a count, once made, never changes (a statement's images are
-- written in its own transaction and only ever removed by a purge, which
-- removes the statement too; counts below the oldest statement kept are
-- dropped by the next call).
CREATE TABLE sidecar.statement_rows (
    stmt_id  bigint PRIMARY KEY,
    rows     bigint NOT NULL
);
COMMENT ON TABLE sidecar.statement_rows IS
    'rows each captured statement wrote (its after-images, a delete''s before-images), kept by sidecar.table_rows_written()';
