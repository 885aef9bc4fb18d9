-- sidecar migration 004: retention. Purging a run removes its captured row
-- images and statements; the run itself, its actions and the event trail
-- stay, marked purged, so that the story remains readable.
ALTER TABLE sidecar.runs ADD COLUMN purged_at timestamptz;
