-- sidecar migration 024: an undo points at the images of what it reverses
-- rather than capturing its restore (issue 22).
--
-- An undo that reverses one statement of a table exactly (every row that
-- statement wrote, each put back as it was before, nothing skipped) writes
-- its restore with sidecar's capture triggers off and records one statement
-- row whose images are those of the statement it reversed, read with the
-- before- (O) and after-image (N) swapped: the run's after-image is what the
-- undo found, its before-image what the undo wrote. docs/undo.md has the
-- design; sidecar._history_from() is how readers see such a statement's
-- images as its own.
--   images_of       the statement whose images are this statement's (always
--                   one that holds images of its own: an undo of an undo
--                   points at the original statement, not at the first undo)
--   images_swapped  read them with O and N swapped (an undo: true; the undo
--                   of that undo: false)
-- Retention keeps the images a statement points at (sidecar._purge_run).
ALTER TABLE sidecar.statements ADD COLUMN images_of bigint, ADD COLUMN images_swapped boolean;
CREATE INDEX statements_images_of ON sidecar.statements (images_of) WHERE images_of IS NOT NULL;
COMMENT ON COLUMN sidecar.statements.images_of IS
    'an undo''s statement: the statement whose images it reads (see images_swapped) instead of images of its own';
COMMENT ON COLUMN sidecar.statements.images_swapped IS
    'images_of''s images are read with the before-image (O) and after-image (N) swapped';
-- The undo function's write step takes one argument more (pointer mode).
DROP FUNCTION IF EXISTS sidecar._undo_write(int, uuid, text, boolean);
