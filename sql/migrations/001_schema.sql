-- sidecar shadow schema, migration 001: runs, actions, captured statements,
-- tracked tables and their history tables, the pause gate and the event trail.
--
-- Applied by `sidecar install` inside one transaction. Everything here runs with
-- search_path = pg_catalog, pg_temp: every name below is schema-qualified.
-- Naming follows E-Maj's habit: public functions sidecar.*, internal ones
-- sidecar._*; parameters p_, variables v_, records r_.

CREATE SCHEMA IF NOT EXISTS sidecar;
COMMENT ON SCHEMA sidecar IS
    'rollback sidecar: captured changes of automations, pause gate, undo history';

CREATE TABLE sidecar.migrations (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  name NOT NULL DEFAULT session_user
);

-- Function files (sql/fn_*.sql) are re-applied when their content changes.
CREATE TABLE sidecar.definitions (
    file        text PRIMARY KEY,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Trigger function templates from triggers/*.sql, stored so that the database
-- can re-render a table's capture function itself when the table's shape
-- changes (no Python process needs to be running for that).
CREATE TABLE sidecar.templates (
    name  text PRIMARY KEY,
    body  text NOT NULL
);

-- One row per tracked table. relid is a regclass so that renaming the table
-- keeps it tracked and pg_dump/pg_upgrade keep the reference by name.
CREATE TABLE sidecar.tracked (
    tracked_id    int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid         regclass NOT NULL UNIQUE,
    capture       text NOT NULL DEFAULT 'tagged' CHECK (capture IN ('tagged', 'all')),
    pk_columns    name[] NOT NULL,
    label_column  name,
    display_name  text,
    log_table     name NOT NULL UNIQUE,
    shape         text NOT NULL,
    tracked_at    timestamptz NOT NULL DEFAULT now(),
    tracked_by    name NOT NULL DEFAULT session_user,
    -- untrack removes the triggers but keeps the history: old runs stay undoable.
    active        boolean NOT NULL DEFAULT true
);

-- The history table's columns, mapped to the tracked table's columns by
-- attnum so that a rename follows the column and a retype or drop retires the
-- old history column instead of failing the application's write.
CREATE TABLE sidecar.columns (
    tracked_id  int NOT NULL REFERENCES sidecar.tracked ON DELETE CASCADE,
    attnum      smallint NOT NULL,
    log_column  name NOT NULL,
    type_name   text NOT NULL,
    retired     boolean NOT NULL DEFAULT false,
    -- Statements before this one did not capture this column (it was added
    -- or retyped later): an undo of them leaves the column as it is.
    since_stmt  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tracked_id, log_column)
);
CREATE UNIQUE INDEX columns_active ON sidecar.columns (tracked_id, attnum) WHERE NOT retired;

CREATE TABLE sidecar.runs (
    run_id         uuid PRIMARY KEY,
    automation     text NOT NULL,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'succeeded', 'failed')),
    meta           jsonb NOT NULL DEFAULT '{}',
    started_at     timestamptz NOT NULL DEFAULT now(),
    started_by     name NOT NULL DEFAULT session_user,
    finished_at    timestamptz,
    error          text,
    backend_pid    int,
    backend_start  timestamptz,
    undo_of        uuid REFERENCES sidecar.runs,
    rerun_of       uuid REFERENCES sidecar.runs,
    undone_by      uuid REFERENCES sidecar.runs
);
CREATE INDEX runs_started ON sidecar.runs (started_at DESC);
CREATE INDEX runs_automation ON sidecar.runs (automation, started_at DESC);
CREATE INDEX runs_undo_of ON sidecar.runs (undo_of) WHERE undo_of IS NOT NULL;

-- An action is what a person thinks of as one step; one undo reverses it.
CREATE TABLE sidecar.actions (
    action_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES sidecar.runs,
    key         text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    UNIQUE (run_id, key)
);

-- One row per captured statement on a tracked table. The row images live in
-- the table's own history table (sidecar.tracked.log_table), typed like the
-- table, tagged with stmt_id: kind 'O' is a before-image, 'N' an after-image.
CREATE SEQUENCE sidecar.stmt_seq CACHE 20;
CREATE TABLE sidecar.statements (
    stmt_id     bigint PRIMARY KEY,
    tracked_id  int NOT NULL REFERENCES sidecar.tracked,
    op          "char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
    run_id      uuid REFERENCES sidecar.runs,
    action_id   bigint REFERENCES sidecar.actions,
    txid        bigint NOT NULL,
    db_user     name NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX statements_run ON sidecar.statements (run_id, stmt_id);
CREATE INDEX statements_action ON sidecar.statements (action_id);

-- The gate: a pause of one automation, of every automation ('*'), or of one
-- tracked table. Checked by the capture trigger on every tagged statement.
CREATE TABLE sidecar.pauses (
    scope      text NOT NULL CHECK (scope IN ('automation', 'table')),
    target     text NOT NULL,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  name NOT NULL DEFAULT session_user,
    reason     text NOT NULL,
    PRIMARY KEY (scope, target)
);

-- The event trail: who paused, resumed, undid, approved, reran, when and why.
CREATE TABLE sidecar.events (
    event_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     name NOT NULL DEFAULT session_user,
    kind      text NOT NULL,
    run_id    uuid REFERENCES sidecar.runs,
    summary   text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_at ON sidecar.events (at DESC);
CREATE INDEX events_run ON sidecar.events (run_id);
