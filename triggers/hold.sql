-- Hold trigger function for one tracked table that has hold rules.
--
-- Rendered by sidecar._render_hold() whenever a rule of the table is added or
-- dropped; it exists only while the table has active rules. Three tokens
-- (each written between at-signs in the body below) are replaced by text
-- quoted with format('%I') / format('%L') first, or built by the renderer
-- from integers and validated predicates:
--   FUNC        the function's qualified name
--   TRACKED_ID  sidecar.tracked.tracked_id
--   CHECKS      one block per active rule, in rule order: a 'row' rule is
--               IF (<predicate>) THEN <add rule id> END IF; a 'rows' rule
--               counts the statement's (matching) rows in a transaction-local
--               setting, which a BEFORE STATEMENT trigger resets to 0
--               (sidecar._hold_reset), and adds its id past max_rows.
--
-- It fires BEFORE each row (INSERT, UPDATE, DELETE) of a tagged write that
-- may match a rule: the triggers' WHEN clauses (one trigger per event, made
-- by sidecar._render_hold) leave writes without sidecar.run_id alone and,
-- where they can, rows no predicate matches. For a row that matches a rule,
-- sidecar._hold decides (automation filter, undo runs and approvals go
-- through), records the row in sidecar.pending and says so: the trigger then
-- returns NULL, so the row does not land while the statement succeeds.
CREATE OR REPLACE FUNCTION @FUNC@() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $hold$
DECLARE
    v_rules  int[] := '{}';
    v_rows   bigint;
BEGIN
@CHECKS@

    IF cardinality(v_rules) > 0
       AND sidecar._hold(@TRACKED_ID@, v_rules, TG_OP, to_jsonb(OLD), to_jsonb(NEW)) THEN
        RETURN NULL;
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$hold$;
