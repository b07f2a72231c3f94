-- A cap on how many schedules one tenant may keep (issue 18, item 3, left open by 0009): each
-- enabled schedule costs every agent a planned wake-up and a row in the due-time index, and a
-- tenant role could otherwise insert them without bound. The operator sets the cap per tenant.

ALTER TABLE scheduler.tenants
    ADD COLUMN max_schedules integer NOT NULL DEFAULT 100,
    ADD CONSTRAINT tenant_max_schedules_range CHECK (max_schedules BETWEEN 0 AND 100000);

-- Runs as the inserting role: a tenant role counts its own schedules (row-level security
-- lets it see them all) and locks its own tenant row only (it is granted UPDATE (frozen)). The
-- lock orders two concurrent inserts of one tenant, so the cap cannot be passed by racing.
-- A row for a tenant the role cannot see is left to the policy, which refuses it next.
CREATE FUNCTION scheduler.schedules_within_cap() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cap integer;
    kept bigint;
BEGIN
    SELECT t.max_schedules INTO cap FROM scheduler.tenants t WHERE t.name = NEW.tenant FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    SELECT count(*) INTO kept FROM scheduler.schedules s WHERE s.tenant = NEW.tenant;
    IF kept >= cap THEN
        RAISE EXCEPTION 'tenant % already has % schedules, its limit (max_schedules = %)',
            quote_literal(NEW.tenant), kept, cap
            USING ERRCODE = 'check_violation', COLUMN = 'tenant',
                  HINT = 'Remove one (scheduler schedules rm) or ask the operator to raise '
                         'tenants.max_schedules.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedules_within_cap BEFORE INSERT ON scheduler.schedules
    FOR EACH ROW EXECUTE FUNCTION scheduler.schedules_within_cap();
