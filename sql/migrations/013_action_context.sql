-- sidecar migration 013: why an automation did what it did.
-- An action (or step) may carry the context its automation gave it with
-- sidecar.set_context(): the model's reason ("why"), what it read to decide
-- ("read": row references and short texts), how sure it was ("confidence",
-- 0..1) and any other keys. Stored on the action row, so a write that sets no
-- context costs what it did: capture never reads or writes this column (the
-- column has no default, and a NULL costs a bit in the row's null bitmap).
-- Hold rules read it (CONTEXT.confidence); show, the queue and the console
-- print it. It lives as long as the action: a purge that keeps the run's
-- actions keeps it too.
ALTER TABLE sidecar.actions ADD COLUMN context jsonb;
COMMENT ON COLUMN sidecar.actions.context IS
    'what the automation said about this action: {"why", "read": [...], "confidence", ...} (sidecar.set_context)';

-- A hold rule's predicate as its author wrote it (checked and normalized by
-- sqlglot: CONTEXT.confidence < 0.8, REF(customer_id).tier = 'enterprise'),
-- for people; sidecar.rules.predicate stays what is compiled into the trigger.
ALTER TABLE sidecar.rules ADD COLUMN written text;
