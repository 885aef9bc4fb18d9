-- sidecar migration 027: row mode writes only row images; statement rows are
-- made from them when history is read (issue 22).
--
-- A statement row per captured statement, with its gate query, cost a row
-- trigger 112k instructions a statement: more than E-Maj's whole trigger. In
-- row mode the first image of a statement now carries what its statement row
-- would hold (_head, below), and every other image of the statement only its
-- statement id. sidecar._settle() (fn_settle.sql), called by every reader of
-- history before it reads, makes the statement rows (and the actions of
-- transactions that registered none) from those heads; the history itself is
-- the same as before, so readers read either mode the same way.
--
-- The gate of a row-mode write is no longer a query per statement: a session
-- that found no pause for its run keeps that answer (sidecar._gate_ok) and
-- checks only that sidecar.gate_seq has not moved since. Everything that can
-- make a write of a run refused or change what it must do moves that
-- sequence: a pause, finishing a run, undoing one.
CREATE TYPE sidecar.stmt_head AS (
    op       "char",
    run_id   uuid,
    action   text,         -- sidecar.action when set; else the action is 'tx:' || txid
    txid     bigint,
    db_user  name,
    at       timestamptz
);
COMMENT ON TYPE sidecar.stmt_head IS
    'what a row-mode statement''s first image says of its statement, until sidecar._settle() writes its row';

DO $heads$
DECLARE
    v_log name;
BEGIN
    FOR v_log IN SELECT t.log_table FROM sidecar.tracked t ORDER BY t.tracked_id LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = format('sidecar.%I', v_log)::regclass AND a.attname = '_head'
                     AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'sidecar: history table sidecar.% already has a column _head', v_log
                USING ERRCODE = 'SC004',
                      HINT = 'Its tracked table has a column _head: rename it, then run sidecar install again.';
        END IF;
        EXECUTE format('ALTER TABLE sidecar.%I ADD COLUMN _head sidecar.stmt_head', v_log);
    END LOOP;
END
$heads$;

-- Moved by whatever can change what a row-mode session's next write must do.
CREATE SEQUENCE sidecar.gate_seq;
SELECT nextval('sidecar.gate_seq');  -- so that pg_sequence_last_value() reads a number

-- How far history is settled: every row-mode statement with an id below
-- `below` has its statement row. The next settle may raise `below` to
-- `next_below` once every transaction that was open when `next_below` was
-- read has ended (the oldest open transaction is at or past `next_after`).
CREATE TABLE sidecar.settled (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    below       bigint NOT NULL DEFAULT 0,
    next_below  bigint,
    next_after  bigint
);
INSERT INTO sidecar.settled DEFAULT VALUES;
