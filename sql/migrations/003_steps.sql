-- sidecar migration 003: steps and reruns.
--
-- A step is one unit of an automation's work with a stable key
-- ('note:ticket-42'). Its completion is written in the same transaction as
-- its writes, and is unique within the run's lineage (the original run and
-- its reruns), so a step is never done twice.

-- The run a lineage started from: the original run for reruns, itself otherwise.
ALTER TABLE sidecar.runs ADD COLUMN lineage uuid;
UPDATE sidecar.runs SET lineage = run_id WHERE lineage IS NULL;
CREATE INDEX runs_lineage ON sidecar.runs (lineage);

CREATE TABLE sidecar.steps (
    lineage       uuid NOT NULL,
    key           text NOT NULL,
    run_id        uuid NOT NULL REFERENCES sidecar.runs,
    action_id     bigint REFERENCES sidecar.actions,
    completed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_by  name NOT NULL DEFAULT session_user,
    PRIMARY KEY (lineage, key)
);
CREATE INDEX steps_run ON sidecar.steps (run_id);

-- The steps a run means to do, declared up front, with the rows each will
-- touch and a fingerprint of those rows then: a rerun refuses a step whose
-- rows a person changed since.
CREATE TABLE sidecar.step_plan (
    run_id   uuid NOT NULL REFERENCES sidecar.runs,
    key      text NOT NULL,
    ord      int NOT NULL,
    targets  jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, key)
);

-- Attempts that failed (recorded after the step's own transaction rolled back).
CREATE TABLE sidecar.step_failures (
    failure_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES sidecar.runs,
    key         text NOT NULL,
    error       text,
    failed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX step_failures_run ON sidecar.step_failures (run_id, key);

-- Steps a rerun must not redo (their rows changed since), with the reason.
CREATE TABLE sidecar.step_blocks (
    run_id  uuid NOT NULL REFERENCES sidecar.runs,
    key     text NOT NULL,
    reason  text NOT NULL,
    PRIMARY KEY (run_id, key)
);
