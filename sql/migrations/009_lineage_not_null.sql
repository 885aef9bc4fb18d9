-- sidecar migration 009: every run knows its lineage (its own id, or the run
-- it reruns): every function that makes a run sets it, so readers need no
-- coalesce(lineage, run_id).
UPDATE sidecar.runs SET lineage = run_id WHERE lineage IS NULL;
ALTER TABLE sidecar.runs ALTER COLUMN lineage SET NOT NULL;
