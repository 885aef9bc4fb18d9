-- sidecar migration 005: the table inventory. Teams decide which records
-- matter most and name an owner for each: who answers for the table (a team
-- or a person, free text), how much harm a bad write does (risk), and whether
-- its rows are drafts a person still reviews or final records (kind).
-- Set with `sidecar track TABLE --owner NAME --risk high --kind final`
-- (sidecar.set_table_info); read by `sidecar inventory`.
ALTER TABLE sidecar.tracked
    ADD COLUMN owner text CHECK (btrim(owner) <> ''),
    ADD COLUMN risk  text CHECK (risk IN ('low', 'medium', 'high')),
    ADD COLUMN kind  text CHECK (kind IN ('draft', 'final'));
