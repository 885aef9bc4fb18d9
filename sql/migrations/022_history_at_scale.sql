-- sidecar migration 022: readers whose cost follows what they report, not how
-- much history is kept (issue 25).
--
-- sidecar.statements grows by one row per captured statement for as long as
-- capture is on. Two readers looked at all of it on every call:
--
-- * `sidecar inventory` found the automations that ever wrote each table by
--   reading every statement. sidecar.table_writers keeps that answer: the
--   pairs (table, automation) seen so far, and up to which statement they
--   were read (sidecar.table_writers_read). sidecar.table_writers_ever()
--   reads only the statements since, so each call reads what was captured
--   since the last one. A purge keeps the pairs: the table was written by
--   that automation, whether or not its images are still kept.
--
-- * the inventory's window ("rows written in the last N days") and its
--   transaction lookup found the window's statements by their time with a
--   sequential scan. Statements are appended in time order, so a BRIN index
--   on `at` finds them at almost no cost to capture: inserting into a block
--   range not yet summarized does nothing, and each range is summarized once
--   full (autosummarize), as the history tables' indexes are (migration 012).

CREATE INDEX statements_at ON sidecar.statements USING brin (at) WITH (autosummarize = on);

CREATE TABLE sidecar.table_writers (
    tracked_id  int NOT NULL REFERENCES sidecar.tracked ON DELETE CASCADE,
    automation  text NOT NULL,
    PRIMARY KEY (tracked_id, automation)
);
COMMENT ON TABLE sidecar.table_writers IS
    'automations that wrote each tracked table (undo runs left out), kept by sidecar.table_writers_ever()';

-- One row: the statements up to read_upto were summarized into table_writers.
CREATE TABLE sidecar.table_writers_read (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    read_upto  bigint NOT NULL DEFAULT 0,
    read_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sidecar.table_writers_read DEFAULT VALUES;
