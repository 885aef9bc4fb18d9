-- sidecar migration 007: rows changed per table, kept for finished runs.
-- Counting a run's changed rows reads every image it captured (a no-op row
-- of a bulk UPDATE is not a change); lists of runs read this instead. A
-- write tagged with a finished run, or a purge, drops the kept count.
CREATE TABLE sidecar.run_counts (
    run_id       uuid PRIMARY KEY REFERENCES sidecar.runs ON DELETE CASCADE,
    counts       jsonb NOT NULL,
    counted_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
