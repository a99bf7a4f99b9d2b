-- Roles (cluster-wide, so created only when missing):
--   pledged_daemon    DML on the billing tables, no DDL
--   pledged_ops       what pledgectl needs
--   pledged_readonly  finance exports
-- Log-in users are granted one of these by the operator, e.g.
--   CREATE ROLE billing LOGIN IN ROLE pledged_daemon;
-- When the migrating user may not create roles and they do not exist yet,
-- the grants are skipped with a notice (a superuser can re-run this file's
-- statements later); the schema itself is complete either way.
DO $$
DECLARE
    r text;
    can_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO can_create FROM pg_roles WHERE rolname = current_user;
    FOREACH r IN ARRAY ARRAY['pledged_daemon', 'pledged_ops', 'pledged_readonly'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            IF NOT can_create THEN
                RAISE NOTICE 'role % does not exist and % may not create roles: grants skipped', r, current_user;
                RETURN;
            END IF;
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;

    GRANT USAGE ON SCHEMA public TO pledged_daemon, pledged_ops, pledged_readonly;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO pledged_daemon, pledged_ops, pledged_readonly;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO pledged_daemon, pledged_ops, pledged_readonly;

    GRANT INSERT, UPDATE ON pledge, charge, charge_attempt, payment_method, refund,
        webhook_event, daemon_node TO pledged_daemon;
    GRANT INSERT ON event TO pledged_daemon;

    GRANT INSERT, UPDATE ON donor, payment_method, pledge, charge, charge_attempt, refund,
        receipt, receipt_line, receipt_counter TO pledged_ops;
    GRANT UPDATE (test_now) ON instance TO pledged_ops;
    GRANT INSERT ON event TO pledged_ops;
END $$;
