-- The spine: tenants, jobs, billing rows and rates, with the rules the database itself enforces.
-- Every rule a tenant can break through a plain INSERT is checked here, so psql is as safe a
-- client as the HTTP API; messages name the column and what was expected.

CREATE TABLE scheduler.tenants (
    name               text PRIMARY KEY,
    parent             text REFERENCES scheduler.tenants (name) ON DELETE RESTRICT,
    cpu_limit          numeric,
    memory_limit_bytes bigint,
    pids_limit         integer,
    max_running_jobs   integer,
    weight             integer NOT NULL DEFAULT 100,
    frozen             boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Tenant names become cgroup directory names: no dots, no slashes, bounded length.
    CONSTRAINT tenant_name_format CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT tenant_not_own_parent CHECK (parent IS DISTINCT FROM name),
    CONSTRAINT tenant_cpu_limit_positive CHECK (cpu_limit IS NULL OR cpu_limit > 0),
    CONSTRAINT tenant_memory_limit_positive CHECK (memory_limit_bytes IS NULL OR memory_limit_bytes > 0),
    CONSTRAINT tenant_pids_limit_positive CHECK (pids_limit IS NULL OR pids_limit > 0),
    CONSTRAINT tenant_max_running_jobs_nonnegative CHECK (max_running_jobs IS NULL OR max_running_jobs >= 0),
    CONSTRAINT tenant_weight_range CHECK (weight BETWEEN 1 AND 10000)
);

INSERT INTO scheduler.tenants (name) VALUES ('default');

CREATE TABLE scheduler.jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    name              text NOT NULL DEFAULT '',
    argv              text[] NOT NULL,
    env               jsonb NOT NULL DEFAULT '{}',
    cwd               text NOT NULL DEFAULT '/',
    cpu               numeric NOT NULL DEFAULT 1,
    memory_bytes      bigint NOT NULL DEFAULT 536870912,
    pids_max          integer NOT NULL DEFAULT 1024,
    timeout_seconds   numeric,
    priority          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 1,
    attempts          integer NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL DEFAULT now(),
    labels            jsonb NOT NULL DEFAULT '{}',
    state             text NOT NULL DEFAULT 'queued',
    desired_state     text NOT NULL DEFAULT 'running',
    node              text,
    exit_code         integer,
    signal            integer,
    oom_killed        boolean NOT NULL DEFAULT false,
    error             text,
    submitted_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    cpu_seconds       numeric,
    memory_peak_bytes bigint,
    io_read_bytes     bigint,
    io_write_bytes    bigint,
    CONSTRAINT job_tenant_exists FOREIGN KEY (tenant) REFERENCES scheduler.tenants (name),
    CONSTRAINT job_state_valid CHECK (state IN
        ('queued', 'running', 'frozen', 'succeeded', 'failed', 'cancelled', 'timed_out', 'lost')),
    CONSTRAINT job_desired_state_valid CHECK (desired_state IN ('running', 'frozen', 'cancelled')),
    CONSTRAINT job_cpu_range CHECK (cpu > 0 AND cpu <= 4096),
    CONSTRAINT job_memory_positive CHECK (memory_bytes >= 1048576),
    CONSTRAINT job_pids_max_positive CHECK (pids_max >= 1),
    CONSTRAINT job_timeout_positive CHECK (timeout_seconds IS NULL OR timeout_seconds > 0),
    CONSTRAINT job_priority_range CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT job_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT job_env_object CHECK (jsonb_typeof(env) = 'object'),
    CONSTRAINT job_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT job_cwd_absolute CHECK (left(cwd, 1) = '/')
);

-- The dispatcher's claim scans queued jobs in priority order; finished jobs never enter it.
CREATE INDEX jobs_queued_idx ON scheduler.jobs (priority DESC, id)
    WHERE state = 'queued';
CREATE INDEX jobs_tenant_state_idx ON scheduler.jobs (tenant, state);
CREATE INDEX jobs_node_active_idx ON scheduler.jobs (node)
    WHERE state IN ('running', 'frozen');

CREATE TABLE scheduler.usage (
    job_id              bigint NOT NULL REFERENCES scheduler.jobs (id),
    seq                 integer NOT NULL,
    attempt             integer NOT NULL,
    tenant              text NOT NULL REFERENCES scheduler.tenants (name),
    node                text NOT NULL,
    period_start        timestamptz NOT NULL,
    period_end          timestamptz NOT NULL,
    cpu_seconds         numeric NOT NULL,
    memory_byte_seconds numeric NOT NULL,
    memory_peak_bytes   bigint NOT NULL,
    io_read_bytes       bigint NOT NULL,
    io_write_bytes      bigint NOT NULL,
    final               boolean NOT NULL DEFAULT false,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq),
    CONSTRAINT usage_period_ordered CHECK (period_end >= period_start),
    CONSTRAINT usage_nonnegative CHECK (cpu_seconds >= 0 AND memory_byte_seconds >= 0
        AND memory_peak_bytes >= 0 AND io_read_bytes >= 0 AND io_write_bytes >= 0)
);
CREATE INDEX usage_period_idx ON scheduler.usage (period_end, tenant);
-- One closing row per attempt: a retried write of the final row cannot bill a job twice.
CREATE UNIQUE INDEX usage_one_final_per_attempt ON scheduler.usage (job_id, attempt) WHERE final;

CREATE TABLE scheduler.rates (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource   text NOT NULL,
    tenant     text REFERENCES scheduler.tenants (name),
    price      numeric NOT NULL,
    currency   text NOT NULL DEFAULT 'USD',
    valid_from timestamptz NOT NULL DEFAULT '-infinity',
    valid_to   timestamptz NOT NULL DEFAULT 'infinity',
    CONSTRAINT rate_resource_valid CHECK (resource IN ('cpu_second', 'memory_gib_hour', 'io_gib')),
    CONSTRAINT rate_price_nonnegative CHECK (price >= 0),
    CONSTRAINT rate_currency_iso CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT rate_validity_ordered CHECK (valid_to > valid_from)
);

-- Checks that need a readable message or more than one column live in one trigger.
CREATE FUNCTION scheduler.jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad_key text;
BEGIN
    IF NEW.argv IS NULL OR cardinality(NEW.argv) = 0 THEN
        RAISE EXCEPTION 'argv must name a program: got an empty array'
            USING ERRCODE = 'check_violation', COLUMN = 'argv',
                  HINT = 'Use ARRAY[''sh'', ''-c'', ''echo hello''].';
    END IF;
    IF array_position(NEW.argv, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'argv must not contain NULL elements'
            USING ERRCODE = 'check_violation', COLUMN = 'argv';
    END IF;
    IF NEW.argv[1] = '' THEN
        RAISE EXCEPTION 'argv[1] (the program) must not be empty'
            USING ERRCODE = 'check_violation', COLUMN = 'argv';
    END IF;
    IF NEW.tenant IS NULL OR NEW.tenant !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION 'tenant % is not a valid tenant name', quote_nullable(NEW.tenant)
            USING ERRCODE = 'check_violation', COLUMN = 'tenant',
                  HINT = 'Tenant names match [a-z0-9][a-z0-9_-]{0,62}.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM scheduler.tenants t WHERE t.name = NEW.tenant) THEN
        RAISE EXCEPTION 'unknown tenant %', quote_literal(NEW.tenant)
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'tenant',
                  HINT = 'Create it first: INSERT INTO scheduler.tenants (name) VALUES (...).';
    END IF;
    IF NEW.memory_bytes IS NULL OR NEW.memory_bytes < 1048576 THEN
        RAISE EXCEPTION 'memory_bytes must be at least 1048576 (1 MiB): got %', quote_nullable(NEW.memory_bytes)
            USING ERRCODE = 'check_violation', COLUMN = 'memory_bytes';
    END IF;
    IF NEW.cpu IS NULL OR NEW.cpu <= 0 OR NEW.cpu > 4096 THEN
        RAISE EXCEPTION 'cpu must be a number of cores in (0, 4096]: got %', quote_nullable(NEW.cpu)
            USING ERRCODE = 'check_violation', COLUMN = 'cpu';
    END IF;
    IF NEW.pids_max IS NULL OR NEW.pids_max < 1 THEN
        RAISE EXCEPTION 'pids_max must be at least 1: got %', quote_nullable(NEW.pids_max)
            USING ERRCODE = 'check_violation', COLUMN = 'pids_max';
    END IF;
    IF NEW.env IS NULL OR jsonb_typeof(NEW.env) <> 'object' THEN
        RAISE EXCEPTION 'env must be a JSON object of strings'
            USING ERRCODE = 'check_violation', COLUMN = 'env';
    END IF;
    SELECT key INTO bad_key FROM jsonb_each(NEW.env)
        WHERE jsonb_typeof(value) <> 'string' OR key = '' OR position('=' IN key) > 0
        LIMIT 1;
    IF bad_key IS NOT NULL THEN
        RAISE EXCEPTION 'env key % must be a non-empty name without "=" and map to a string', quote_literal(bad_key)
            USING ERRCODE = 'check_violation', COLUMN = 'env';
    END IF;
    IF NEW.cwd IS NULL OR left(NEW.cwd, 1) <> '/' THEN
        RAISE EXCEPTION 'cwd must be an absolute path: got %', quote_nullable(NEW.cwd)
            USING ERRCODE = 'check_violation', COLUMN = 'cwd';
    END IF;
    -- A job starts its life queued: the outcome columns belong to the agent.
    NEW.state := CASE WHEN NEW.desired_state = 'cancelled' THEN 'cancelled' ELSE 'queued' END;
    NEW.attempts := 0;
    NEW.node := NULL;
    NEW.exit_code := NULL;
    NEW.signal := NULL;
    NEW.oom_killed := false;
    NEW.error := NULL;
    NEW.started_at := NULL;
    NEW.finished_at := CASE WHEN NEW.state = 'cancelled' THEN clock_timestamp() END;
    NEW.cpu_seconds := NULL;
    NEW.memory_peak_bytes := NULL;
    NEW.io_read_bytes := NULL;
    NEW.io_write_bytes := NULL;
    NEW.submitted_at := clock_timestamp();
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_before_insert BEFORE INSERT ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_before_insert();

-- One NOTIFY per statement: identical payloads in a transaction are folded into one by Postgres,
-- so a bulk INSERT ... SELECT wakes each dispatcher once, after commit.
CREATE FUNCTION scheduler.jobs_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scheduler_jobs', 'queued');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON scheduler.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.jobs_notify_insert();

-- Steering through UPDATE: a queued job is cancelled by the database itself; anything that
-- needs the kernel (freeze, thaw, kill) is left to the agent that owns the job, woken by NOTIFY.
CREATE FUNCTION scheduler.jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.desired_state IS DISTINCT FROM OLD.desired_state THEN
        IF OLD.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost') THEN
            RAISE EXCEPTION 'job % already finished as %: its desired_state cannot change', OLD.id, OLD.state
                USING ERRCODE = 'check_violation', COLUMN = 'desired_state';
        END IF;
        IF NEW.desired_state = 'cancelled' AND OLD.state = 'queued' THEN
            NEW.state := 'cancelled';
            NEW.finished_at := clock_timestamp();
        END IF;
        PERFORM pg_notify('scheduler_control', NEW.id::text);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_before_update BEFORE UPDATE ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_before_update();

CREATE FUNCTION scheduler.tenants_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scheduler_control', 'tenant:' || NEW.name);
    IF TG_OP = 'UPDATE' AND NEW.frozen = false AND OLD.frozen = true THEN
        -- Thawing a tenant may release held queued jobs.
        PERFORM pg_notify('scheduler_jobs', 'queued');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_notify();

-- Billing rows are append-only: corrections are new rows, never edits.
CREATE FUNCTION scheduler.usage_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'scheduler.usage is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER usage_append_only BEFORE UPDATE OR DELETE ON scheduler.usage
    FOR EACH ROW EXECUTE FUNCTION scheduler.usage_append_only();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON scheduler.usage
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_append_only();
