-- sidecar migration 025: history partitioned by statement-id ranges (issue 25).
--
-- sidecar.statements and every history table become PARTITION BY RANGE of
-- their statement id (stmt_id, _stmt), in partitions of `width` statement
-- ids, plus a DEFAULT partition that catches an id no partition covers yet
-- (a write never fails for want of a partition). sidecar._partitions_ahead()
-- (sql/functions/fn_partitions.sql) keeps `ahead` empty partitions beyond the
-- statement sequence; `sidecar purge` drops whole partitions.
--
-- The tables themselves are converted after this migration, outside the
-- install's transaction, one table at a time and without rewriting them
-- (sidecar/capture/partitioning.py): a CHECK bounding the existing ids is
-- added NOT VALID, validated while writes go on, and the table becomes the
-- first partition of a new parent that takes its name. This row only holds
-- the settings and the bound.
CREATE TABLE sidecar.partitioning (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    -- Statement ids per partition. 10,000,000 statements is a few hours of a
    -- busy OLTP database and months of a quiet one; purge drops whole
    -- partitions, so this is also the grain of a purge.
    width      bigint NOT NULL DEFAULT 10000000 CHECK (width >= 100),
    -- Empty partitions kept beyond the one the sequence is in.
    ahead      int NOT NULL DEFAULT 2 CHECK (ahead BETWEEN 1 AND 100),
    -- When stmt_seq's last value reaches this, the next tagged transaction
    -- (or any sidecar command) makes partitions ahead again.
    refill_at  bigint NOT NULL DEFAULT 0
);
INSERT INTO sidecar.partitioning DEFAULT VALUES;
COMMENT ON TABLE sidecar.partitioning IS
    'how history is partitioned by statement id: width of a partition, how many are made ahead';
