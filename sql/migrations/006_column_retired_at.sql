-- sidecar migration 006: when a history column was retired (its table
-- column dropped or retyped), as a statement id: an undo of a run that ended
-- before then can restore that column's values, one that spans it cannot.
-- NULL for columns retired before this migration (treated as "unknown").
ALTER TABLE sidecar.columns ADD COLUMN retired_stmt bigint;
