-- Drop every function of the sidecar schema (uninstall --keep-history).
DO $drop_functions$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'sidecar'::regnamespace
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', v_function);
    END LOOP;
END
$drop_functions$;
