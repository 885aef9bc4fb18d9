-- sidecar migration 002: hold rules and the review queue.
--
-- A rule holds an automation's write to a tracked table for review instead of
-- letting it land: kind 'row' when a predicate over OLD/NEW is true, kind
-- 'rows' once a statement has written more than max_rows rows (counting only
-- rows that match the predicate, when the rule has one). The table's hold
-- trigger (triggers/hold.sql, rendered by sidecar._render_hold) compiles the
-- active rules; a table without rules has no hold trigger at all.
--
-- A held row goes to sidecar.pending with its run, action, the row as it was
-- (old_row) and as the automation wanted it (new_row); the automation's
-- statement succeeds without touching it. An operator approves it (applied
-- under the original run and action, so it can be undone) or rejects it.

CREATE TABLE sidecar.rules (
    rule_id     int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tracked_id  int NOT NULL REFERENCES sidecar.tracked,
    kind        text NOT NULL CHECK (kind IN ('row', 'rows')),
    -- The predicate as validated and rendered by the sidecar library (sqlglot):
    -- column references NEW."col" / OLD."col", literals, operators and a few
    -- immutable functions only. Compiled verbatim into the hold trigger.
    predicate   text,
    max_rows    int CHECK (max_rows >= 0),
    -- Only this automation's runs are held; NULL: every automation.
    automation  text,
    reason      text NOT NULL CHECK (btrim(reason) <> ''),
    created_by  name NOT NULL DEFAULT session_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A dropped rule is kept (inactive): held items still name it.
    active      boolean NOT NULL DEFAULT true,
    CHECK (kind = 'row' AND predicate IS NOT NULL AND max_rows IS NULL
           OR kind = 'rows' AND max_rows IS NOT NULL)
);
CREATE INDEX rules_tracked ON sidecar.rules (tracked_id) WHERE active;

CREATE TABLE sidecar.pending (
    pending_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid NOT NULL REFERENCES sidecar.runs,
    action_id     bigint NOT NULL REFERENCES sidecar.actions,
    tracked_id    int NOT NULL REFERENCES sidecar.tracked,
    op            "char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
    -- The primary key of the row the write was for (OLD's for U and D, NEW's for I).
    key           jsonb NOT NULL,
    old_row       jsonb,              -- to_jsonb(OLD): NULL for an insert
    new_row       jsonb,              -- to_jsonb(NEW), the full proposed row: NULL for a delete
    rule_id       int NOT NULL REFERENCES sidecar.rules,
    reason        text NOT NULL,
    held_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    held_by       name NOT NULL DEFAULT session_user,
    -- conflict: an approval was refused because the row changed since it was
    -- held; the item still waits for a decision (approve again, or reject).
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'rejected', 'conflict')),
    decided_by    name,
    decided_at    timestamptz,
    decided_why   text,
    -- Set by sidecar.approve in the transaction that applies the item: the
    -- hold trigger lets exactly that write through (no setting can forge it).
    applied_txid  bigint
);
CREATE INDEX pending_open ON sidecar.pending (held_at) WHERE status IN ('pending', 'conflict');
CREATE INDEX pending_action ON sidecar.pending (run_id, action_id);
