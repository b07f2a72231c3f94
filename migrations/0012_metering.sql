-- Metering (issue 16): rates that price what a job reserved, and the cap on a job's output.

-- Request-based billing, by choice: the requested cores (jobs.cpu) and memory
-- (jobs.memory_bytes) times each usage row's wall time. A reservation resource is priced only
-- where a rate for it exists; the usage resources keep needing theirs.
ALTER TABLE scheduler.rates DROP CONSTRAINT rate_resource_valid;
ALTER TABLE scheduler.rates ADD CONSTRAINT rate_resource_valid CHECK (resource IN
    ('cpu_second', 'memory_gib_hour', 'io_gib',
     'cpu_core_second_reserved', 'memory_gib_hour_reserved'));

-- The most bytes of a job's stdout and stderr (together) kept on the node's state disk; past
-- it the rest is dropped after a marker line. NULL: the tenant's (or its nearest ancestor's)
-- output_limit_bytes, else the node's. A job or tenant can lower the node's limit, never
-- raise it (the agent takes the smallest that applies).
ALTER TABLE scheduler.jobs ADD COLUMN output_limit_bytes bigint;
ALTER TABLE scheduler.jobs ADD CONSTRAINT job_output_limit_nonnegative
    CHECK (output_limit_bytes IS NULL OR output_limit_bytes >= 0);
ALTER TABLE scheduler.tenants ADD COLUMN output_limit_bytes bigint;
ALTER TABLE scheduler.tenants ADD CONSTRAINT tenant_output_limit_nonnegative
    CHECK (output_limit_bytes IS NULL OR output_limit_bytes >= 0);

COMMENT ON COLUMN scheduler.jobs.output_limit_bytes IS
    'Most bytes of stdout+stderr kept (NULL: tenant, then node default; never above them).';
COMMENT ON COLUMN scheduler.tenants.output_limit_bytes IS
    'Default and ceiling of output_limit_bytes for the jobs of this tenant and its subtree.';

-- A tenant role may lower its own job's output limit (the agent keeps the smallest of the
-- job's, the tenant chain's and the node's), so the column is one it may insert (0010 grants
-- INSERT column by column); and a schedule's template may carry it like any job field.
GRANT INSERT (output_limit_bytes) ON scheduler.jobs TO scheduler_tenant;

CREATE OR REPLACE FUNCTION scheduler.schedule_job_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['argv', 'cpu', 'cwd', 'env', 'image', 'io_read_bps', 'io_write_bps', 'labels',
                 'max_attempts', 'memory_bytes', 'name', 'network', 'output_limit_bytes',
                 'pids_max', 'priority', 'timeout_seconds']
$$;
