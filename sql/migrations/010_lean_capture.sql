-- sidecar migration 010: less work per captured statement.
-- statements.op is written only by capture functions, with a literal; its
-- CHECK was compiled anew for every captured statement. actions rows are
-- written only by sidecar._tag() with a run id it has just read, and the
-- foreign key took a row lock on the run for every transaction of it.
ALTER TABLE sidecar.statements DROP CONSTRAINT IF EXISTS statements_op_check;
ALTER TABLE sidecar.actions DROP CONSTRAINT IF EXISTS actions_run_id_fkey;
-- Statement ids order what happened to a row across sessions: a history
-- column retired by an ALTER TABLE in one session must be older than the
-- next write in another, and two sessions of one run writing the same row
-- must be undone in the order they wrote it. Values cached per session
-- (CACHE 20) broke both; one at a time, they follow the order of the writes,
-- which row and table locks already serialize.
ALTER SEQUENCE sidecar.stmt_seq CACHE 1;
-- Whether the table's capture function was rendered without the
-- per-statement shape check (sidecar's event triggers watch its shape):
-- `sidecar install` renders it anew when that is no longer so.
ALTER TABLE sidecar.tracked ADD COLUMN shape_watched boolean NOT NULL DEFAULT false;
-- What the capture trigger keeps of a transaction's run and action, in a
-- transaction-local setting, between its statements.
CREATE TYPE sidecar.tag AS (action_id bigint, is_undo boolean, automation text);
