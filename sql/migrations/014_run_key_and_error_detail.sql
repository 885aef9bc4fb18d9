-- sidecar migration 014: idempotency keys for runs, and failures in one line.
--
-- run_key: sidecar.start_run(automation, meta, key). The first run of an
-- automation with a key owns it; a later start_run with the same key opens a
-- rerun of that run's lineage, so steps done once are not done again (a
-- scheduler that fires twice does the work once).
--
-- error stays one line (what people read in `sidecar runs` and `show`); the
-- full diagnostics of a failure (detail, hint, context) go to error_detail
-- and step_failures.detail, shown by --json.

ALTER TABLE sidecar.runs ADD COLUMN run_key text;
CREATE UNIQUE INDEX runs_run_key ON sidecar.runs (automation, run_key) WHERE run_key IS NOT NULL;

ALTER TABLE sidecar.runs ADD COLUMN error_detail text;
ALTER TABLE sidecar.step_failures ADD COLUMN detail text;
