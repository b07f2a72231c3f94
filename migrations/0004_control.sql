-- Control and policy: tenant trees without cycles, and the index the fair-share claim reads.
-- Kept apart from the spine (0001) so that it can be renumbered at merge; every object here
-- has a name of its own.

-- Nested tenants become nested cgroups: a parent cycle would be an endless path, so it is
-- refused when it is made, with the chain that would close it.
CREATE FUNCTION scheduler.tenants_check_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cursor_name text := NEW.parent;
    depth integer := 0;
BEGIN
    WHILE cursor_name IS NOT NULL LOOP
        IF cursor_name = NEW.name THEN
            RAISE EXCEPTION 'tenant % cannot have parent %: that would make a cycle',
                quote_literal(NEW.name), quote_literal(NEW.parent)
                USING ERRCODE = 'check_violation', COLUMN = 'parent';
        END IF;
        depth := depth + 1;
        IF depth > 30 THEN
            RAISE EXCEPTION 'tenant % would be nested deeper than 30 levels', quote_literal(NEW.name)
                USING ERRCODE = 'check_violation', COLUMN = 'parent';
        END IF;
        SELECT t.parent INTO cursor_name FROM scheduler.tenants t WHERE t.name = cursor_name;
    END LOOP;
    RETURN NEW;
END;
$$;

CREATE TRIGGER tenants_check_parent BEFORE INSERT OR UPDATE OF parent ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_check_parent();

-- The fair-share claim sums recently finished usage per tenant: a range on period_end.
CREATE INDEX usage_tenant_recent_idx ON scheduler.usage (tenant, period_end);

-- Disk bandwidth limits (bytes per second), for a tenant's subtree or one job: written as
-- io.max (v2) or blkio.throttle.*_bps_device (v1) for the configured block devices.
ALTER TABLE scheduler.tenants
    ADD COLUMN io_read_bps bigint,
    ADD COLUMN io_write_bps bigint,
    ADD CONSTRAINT tenant_io_bps_positive
        CHECK ((io_read_bps IS NULL OR io_read_bps > 0) AND (io_write_bps IS NULL OR io_write_bps > 0));
ALTER TABLE scheduler.jobs
    ADD COLUMN io_read_bps bigint,
    ADD COLUMN io_write_bps bigint,
    ADD CONSTRAINT job_io_bps_positive
        CHECK ((io_read_bps IS NULL OR io_read_bps > 0) AND (io_write_bps IS NULL OR io_write_bps > 0));

-- The claim takes the head of each tenant's queue (priority, then age): a top-N per tenant.
CREATE INDEX jobs_queued_tenant_idx ON scheduler.jobs (tenant, priority DESC, id)
    WHERE state = 'queued';
