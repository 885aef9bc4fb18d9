-- sidecar migration 008: sidecar.statements gets one row per captured
-- statement, on the application's write path. Its foreign keys cost three
-- lookups per statement; only sidecar's own definer functions write it, with
-- ids they have just read or made, so the keys go (the columns and indexes stay).
ALTER TABLE sidecar.statements DROP CONSTRAINT IF EXISTS statements_tracked_id_fkey;
ALTER TABLE sidecar.statements DROP CONSTRAINT IF EXISTS statements_run_id_fkey;
ALTER TABLE sidecar.statements DROP CONSTRAINT IF EXISTS statements_action_id_fkey;
