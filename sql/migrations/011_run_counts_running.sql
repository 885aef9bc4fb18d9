-- sidecar migration 011: the rows a run changed are kept while it runs too.
-- A run left running (an automation that never called finish_run, or one
-- tagged through a setting for days) was counted anew from all its images on
-- every `sidecar runs`, `status` and console page: a minute for millions of
-- statements. Its count is now kept with the number of statements it covers
-- and the newest of them, and used while the run's statements are still
-- those (statements are only ever added, until a purge drops the count).
ALTER TABLE sidecar.run_counts ADD COLUMN statements bigint, ADD COLUMN last_stmt bigint;
