-- HTTP API and tenant SQL access: bearer tokens, idempotency keys, and row-level security that
-- lets a tenant's own Postgres role see and steer only its own subtree.

CREATE TABLE scheduler.api_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text NOT NULL REFERENCES scheduler.tenants (name),
    -- Only a SHA-256 of the token is stored: a database dump does not hand out access.
    token_hash  text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE scheduler.idempotency_keys (
    tenant       text NOT NULL REFERENCES scheduler.tenants (name),
    key          text NOT NULL,
    request_hash text NOT NULL,
    job_id       bigint REFERENCES scheduler.jobs (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key),
    CONSTRAINT idempotency_key_length CHECK (length(key) BETWEEN 1 AND 255)
);

-- Which Postgres role speaks for which tenant (filled by `scheduler tenants grant-sql`).
CREATE TABLE scheduler.tenant_roles (
    role_name name PRIMARY KEY,
    tenant    text NOT NULL REFERENCES scheduler.tenants (name)
);

-- The tenants a role may see: its tenant and every descendant; NULL for roles that are not
-- tenant roles (the agent, operators), which row-level security leaves unrestricted.
CREATE FUNCTION scheduler.role_tenants(role name) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    WITH RECURSIVE mine AS (
        SELECT t.name FROM scheduler.tenants t
        JOIN scheduler.tenant_roles r ON r.tenant = t.name
        WHERE r.role_name = role
        UNION
        SELECT c.name FROM scheduler.tenants c JOIN mine m ON c.parent = m.name
    )
    SELECT CASE WHEN EXISTS (SELECT 1 FROM scheduler.tenant_roles WHERE role_name = role)
                THEN (SELECT array_agg(name) FROM mine) END
$$;

-- The insert trigger reads scheduler.tenants; as SECURITY DEFINER it works for tenant roles,
-- which cannot read other tenants' rows.
ALTER FUNCTION scheduler.jobs_before_insert() SECURITY DEFINER;
ALTER FUNCTION scheduler.jobs_before_insert() SET search_path = pg_catalog, scheduler;

ALTER TABLE scheduler.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY jobs_tenant_rows ON scheduler.jobs
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL
                OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));

ALTER TABLE scheduler.usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.usage FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_tenant_rows ON scheduler.usage
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL
                OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));

ALTER TABLE scheduler.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenants_tenant_rows ON scheduler.tenants
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR name = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL
                OR name = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));

-- The group every tenant role belongs to: what a tenant may do at all, before RLS narrows it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'scheduler_tenant') THEN
        CREATE ROLE scheduler_tenant NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA scheduler TO scheduler_tenant;
GRANT SELECT, INSERT ON scheduler.jobs TO scheduler_tenant;
GRANT UPDATE (desired_state) ON scheduler.jobs TO scheduler_tenant;
GRANT SELECT ON scheduler.usage TO scheduler_tenant;
GRANT SELECT ON scheduler.tenants TO scheduler_tenant;
GRANT UPDATE (frozen) ON scheduler.tenants TO scheduler_tenant;
GRANT SELECT ON scheduler.rates TO scheduler_tenant;
