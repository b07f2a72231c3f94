-- Tenants who do not trust each other: a uid/gid of its own per tenant, allocated here so that
-- every agent runs a tenant's jobs as the same identity; run_as checked against that range;
-- pids bounded by the tenant chain and a cluster-wide ceiling at submit. Every object here
-- is new (no existing function is replaced).

-- One row: the range tenant ids come from, the next id to hand out, and the most pids any
-- one job may ask for. Changed by the operator with a plain UPDATE (tenant roles have no
-- grant on it); ids already handed out keep their owners.
CREATE TABLE scheduler.isolation (
    singleton    boolean PRIMARY KEY DEFAULT true,
    uid_first    bigint NOT NULL DEFAULT 200000,
    uid_last     bigint NOT NULL DEFAULT 299999,
    uid_next     bigint NOT NULL DEFAULT 200000,
    job_pids_max integer NOT NULL DEFAULT 8192,
    CONSTRAINT isolation_one_row CHECK (singleton),
    -- Below 1000 live the host's system accounts; (uid_t)-1 means "unchanged" to the kernel.
    CONSTRAINT isolation_uid_range CHECK (uid_first >= 1000 AND uid_last >= uid_first
                                          AND uid_last < 4294967295),
    CONSTRAINT isolation_job_pids_max_range CHECK (job_pids_max BETWEEN 1 AND 4194304)
);
INSERT INTO scheduler.isolation DEFAULT VALUES;

COMMENT ON TABLE scheduler.isolation IS
    'Tenant uid/gid range (uid_first..uid_last, never reused: uid_next) and the most pids a '
    'job may ask for (job_pids_max); see docs/operations.md "Tenant isolation"';

ALTER TABLE scheduler.tenants
    ADD COLUMN uid bigint,
    ADD COLUMN gid bigint,
    ADD CONSTRAINT tenant_uid_unique UNIQUE (uid),
    ADD CONSTRAINT tenant_gid_unique UNIQUE (gid),
    ADD CONSTRAINT tenant_ids_range CHECK (uid BETWEEN 1000 AND 4294967294
                                           AND gid BETWEEN 1000 AND 4294967294);

-- The next free id of the range (serialised by the row lock on scheduler.isolation). An id
-- is never handed out twice, even after its tenant is deleted: files it left behind (output,
-- an image's kept layer) must not become another tenant's.
CREATE FUNCTION scheduler.allocate_tenant_id() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    r record;
    candidate bigint;
BEGIN
    SELECT * INTO r FROM scheduler.isolation WHERE singleton FOR UPDATE;
    candidate := greatest(r.uid_next, r.uid_first);
    -- The range may have been moved over ids in use: skip them.
    WHILE EXISTS (SELECT 1 FROM scheduler.tenants t WHERE t.uid = candidate OR t.gid = candidate)
    LOOP
        candidate := candidate + 1;
    END LOOP;
    IF candidate > r.uid_last THEN
        RAISE EXCEPTION 'no tenant uid left in the range %..%', r.uid_first, r.uid_last
            USING ERRCODE = 'check_violation', COLUMN = 'uid',
                  HINT = 'Widen it: UPDATE scheduler.isolation SET uid_last = ...';
    END IF;
    UPDATE scheduler.isolation SET uid_next = candidate + 1 WHERE singleton;
    RETURN candidate;
END;
$$;

-- A tenant's ids are the database's to give and never change: jobs of every agent, files
-- they made, keyrings and inotify quotas are keyed by them.
CREATE FUNCTION scheduler.tenants_assign_ids() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.uid IS DISTINCT FROM OLD.uid OR NEW.gid IS DISTINCT FROM OLD.gid THEN
            RAISE EXCEPTION 'tenant %: uid and gid are allocated once and never change',
                quote_literal(OLD.name)
                USING ERRCODE = 'check_violation', COLUMN = 'uid';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.uid IS NOT NULL OR NEW.gid IS NOT NULL THEN
        RAISE EXCEPTION 'tenant %: uid and gid are allocated by the database, not given',
            quote_literal(NEW.name)
            USING ERRCODE = 'check_violation', COLUMN = 'uid',
                  HINT = 'Leave uid and gid out; the range is in scheduler.isolation.';
    END IF;
    NEW.uid := scheduler.allocate_tenant_id();
    NEW.gid := NEW.uid;
    RETURN NEW;
END;
$$;

CREATE TRIGGER tenants_assign_ids BEFORE INSERT OR UPDATE OF uid, gid ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_assign_ids();

-- Tenants made before this migration get theirs now, in name order.
DO $$
DECLARE
    t record;
    id bigint;
BEGIN
    ALTER TABLE scheduler.tenants DISABLE TRIGGER tenants_assign_ids;
    FOR t IN SELECT name FROM scheduler.tenants ORDER BY name LOOP
        id := scheduler.allocate_tenant_id();
        UPDATE scheduler.tenants SET uid = id, gid = id WHERE name = t.name;
    END LOOP;
    ALTER TABLE scheduler.tenants ENABLE TRIGGER tenants_assign_ids;
END;
$$;

ALTER TABLE scheduler.tenants ALTER COLUMN uid SET NOT NULL, ALTER COLUMN gid SET NOT NULL;

-- run_as is the operator's override of a tenant's identity: a tenant's own role may not set
-- it, and a numeric id must not be root, a system id, below the range, or another tenant's
-- (a user name is resolved and checked the same way by the agent, on the node).
-- Not SECURITY DEFINER: current_user must be the caller's role.
CREATE FUNCTION scheduler.tenants_check_run_as() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    r record;
    ids bigint[];
    id bigint;
    owner text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.run_as IS NOT DISTINCT FROM OLD.run_as THEN
        RETURN NEW;
    END IF;
    IF NEW.run_as IS NULL THEN
        RETURN NEW;
    END IF;
    IF scheduler.role_tenants(current_user) IS NOT NULL THEN
        RAISE EXCEPTION 'run_as is set by the operator only'
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'run_as';
    END IF;
    -- Names are the agent's to resolve; malformed values are left to tenant_run_as_format
    -- (CHECK constraints run after BEFORE triggers).
    IF NEW.run_as !~ '^[1-9][0-9]{0,9}(:[1-9][0-9]{0,9})?$' THEN
        RETURN NEW;
    END IF;
    SELECT * INTO r FROM scheduler.isolation WHERE singleton;
    ids := string_to_array(NEW.run_as, ':')::bigint[];
    FOREACH id IN ARRAY ids LOOP
        IF id = NEW.uid THEN
            CONTINUE;  -- the tenant's own id
        END IF;
        IF id < 1000 OR id < r.uid_first THEN
            RAISE EXCEPTION 'run_as %: % is a system id (below 1000 or below the tenant range %..%)',
                quote_literal(NEW.run_as), id, r.uid_first, r.uid_last
                USING ERRCODE = 'check_violation', COLUMN = 'run_as';
        END IF;
        SELECT t.name INTO owner FROM scheduler.tenants t
        WHERE (t.uid = id OR t.gid = id) AND t.name <> NEW.name LIMIT 1;
        IF owner IS NOT NULL THEN
            RAISE EXCEPTION 'run_as %: % is tenant %''s id', quote_literal(NEW.run_as), id,
                quote_literal(owner)
                USING ERRCODE = 'check_violation', COLUMN = 'run_as';
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;

-- After tenants_assign_ids (trigger order is by name), so NEW.uid is set.
CREATE TRIGGER tenants_check_run_as BEFORE INSERT OR UPDATE OF run_as ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_check_run_as();

-- pids at submit: a job may not ask for more than the lowest pids_limit on its tenant's chain
-- nor more than scheduler.isolation.job_pids_max. Checked once per INSERT statement (a bulk
-- INSERT ... SELECT costs one query, not one per row).
CREATE FUNCTION scheduler.jobs_pids_cap(tenant_names text[])
RETURNS TABLE (tenant text, cap integer, limited_by text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    WITH RECURSIVE chain AS (
        SELECT t.name AS tenant, t.name AS at, t.parent, t.pids_limit, 0 AS depth
        FROM scheduler.tenants t WHERE t.name = ANY (tenant_names)
        UNION ALL
        SELECT c.tenant, p.name, p.parent, p.pids_limit, c.depth + 1
        FROM chain c JOIN scheduler.tenants p ON p.name = c.parent
        WHERE c.depth < 32
    ), lowest AS (
        SELECT DISTINCT ON (c.tenant) c.tenant, c.pids_limit, c.at
        FROM chain c WHERE c.pids_limit IS NOT NULL
        ORDER BY c.tenant, c.pids_limit, c.depth
    )
    SELECT n.tenant,
           least(l.pids_limit, i.job_pids_max),
           CASE WHEN l.pids_limit IS NOT NULL AND l.pids_limit < i.job_pids_max
                THEN 'tenant ' || quote_literal(l.at) || '''s pids_limit'
                ELSE 'the job_pids_max of scheduler.isolation' END
    FROM unnest(tenant_names) AS n (tenant)
    LEFT JOIN lowest l ON l.tenant = n.tenant
    CROSS JOIN scheduler.isolation i
$$;

CREATE FUNCTION scheduler.jobs_check_pids_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, n.pids_max, c.tenant, c.cap, c.limited_by INTO bad
    FROM new_rows n
    JOIN scheduler.jobs_pids_cap(ARRAY(SELECT DISTINCT tenant FROM new_rows)) c
      ON c.tenant = n.tenant
    WHERE n.pids_max > c.cap
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pids_max % is above % (%) for tenant %', bad.pids_max, bad.cap,
            bad.limited_by, quote_literal(bad.tenant)
            USING ERRCODE = 'check_violation', COLUMN = 'pids_max',
                  HINT = format('Ask for at most %s pids.', bad.cap);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_check_pids_inserted AFTER INSERT ON scheduler.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.jobs_check_pids_inserted();

CREATE FUNCTION scheduler.jobs_check_pids_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    SELECT * INTO c FROM scheduler.jobs_pids_cap(ARRAY[NEW.tenant]);
    IF NEW.pids_max > c.cap THEN
        RAISE EXCEPTION 'pids_max % is above % (%) for tenant %', NEW.pids_max, c.cap,
            c.limited_by, quote_literal(NEW.tenant)
            USING ERRCODE = 'check_violation', COLUMN = 'pids_max',
                  HINT = format('Ask for at most %s pids.', c.cap);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_check_pids_updated BEFORE UPDATE OF pids_max, tenant ON scheduler.jobs
    FOR EACH ROW
    WHEN (NEW.pids_max IS DISTINCT FROM OLD.pids_max OR NEW.tenant IS DISTINCT FROM OLD.tenant)
    EXECUTE FUNCTION scheduler.jobs_check_pids_updated();

GRANT SELECT ON scheduler.isolation TO scheduler_tenant;
