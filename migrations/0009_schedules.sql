-- Schedules (issue 18, item 3): a cron expression in a time zone and a job template; the agents
-- fire one job per due time. The database checks what it can without a cron parser (5 fields,
-- a known time zone, the template exactly as a job insert would check it); the agents parse the
-- expression (croniter), plan next_run_at, and disable a row whose expression they cannot read,
-- with the reason in `error`.

ALTER TABLE scheduler.jobs
    -- The schedule that made the job (its tenant is the job's) and the due time it fired for.
    ADD COLUMN schedule text,
    ADD COLUMN schedule_due timestamptz,
    ADD CONSTRAINT job_schedule_due_paired CHECK ((schedule IS NULL) = (schedule_due IS NULL));

-- One job per schedule and due time, whatever the agents do: a second fire cannot commit.
CREATE UNIQUE INDEX jobs_schedule_due_idx ON scheduler.jobs (tenant, schedule, schedule_due)
    WHERE schedule IS NOT NULL;
-- overlap = 'skip' asks at each due time whether the schedule still has an unfinished job.
CREATE INDEX jobs_schedule_active_idx ON scheduler.jobs (tenant, schedule)
    WHERE schedule IS NOT NULL AND state IN ('queued', 'running', 'frozen');

CREATE TABLE scheduler.schedules (
    name            text NOT NULL,
    tenant          text NOT NULL DEFAULT 'default' REFERENCES scheduler.tenants (name),
    cron            text NOT NULL,
    timezone        text NOT NULL DEFAULT 'UTC',
    job             jsonb NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    overlap         text NOT NULL DEFAULT 'skip',
    -- The due time last handled (fired or skipped); the next one, planned by an agent or the
    -- writer (NULL: not planned yet, paused, or disabled for an error).
    last_run_at     timestamptz,
    next_run_at     timestamptz,
    last_job_id     bigint,
    skipped_runs    bigint NOT NULL DEFAULT 0,
    last_skipped_at timestamptz,
    -- Why an agent disabled the schedule (an expression croniter refuses, a template the
    -- database stopped accepting); cleared when cron, timezone or job change or it is resumed.
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name),
    CONSTRAINT schedule_overlap_valid CHECK (overlap IN ('skip', 'queue'))
);

-- The agents' wake-up: the earliest planned due time of the enabled schedules.
CREATE INDEX schedules_next_run_idx ON scheduler.schedules (next_run_at) WHERE enabled;

-- The fields a template may carry: the job's own (not tenant: the schedule's; not run_at: the
-- due time). scheduler/api/bodies.py JOB_FIELDS is tested against this list.
CREATE FUNCTION scheduler.schedule_job_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['argv', 'cpu', 'cwd', 'env', 'image', 'io_read_bps', 'io_write_bps', 'labels',
                 'max_attempts', 'memory_bytes', 'name', 'network', 'pids_max', 'priority',
                 'timeout_seconds']
$$;

-- Insert the job a template describes, as the caller (row-level security and the jobs'
-- triggers apply as to any insert). With s_name NULL it is the plain job (the add-time trial);
-- with a name the job carries the schedule and due time, and its name defaults to the
-- schedule's. Fields the template leaves out take the jobs table's defaults.
CREATE FUNCTION scheduler.schedule_job_insert(
    s_tenant text, s_name text, template jsonb, due timestamptz
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    bad text;
    columns text;
    picked text;
    new_id bigint;
BEGIN
    IF template IS NULL OR jsonb_typeof(template) <> 'object' THEN
        RAISE EXCEPTION 'job must be a JSON object of job fields (argv, cpu, memory_bytes, ...)'
            USING ERRCODE = 'check_violation', COLUMN = 'job';
    END IF;
    SELECT k INTO bad FROM jsonb_object_keys(template) k
        WHERE k <> ALL (scheduler.schedule_job_fields()) ORDER BY k LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'job field % cannot be set in a schedule''s template: expected some of %',
            quote_literal(bad), array_to_string(scheduler.schedule_job_fields(), ', ')
            USING ERRCODE = 'check_violation', COLUMN = 'job',
                  HINT = 'The tenant is the schedule''s and the job runs at its due time.';
    END IF;
    IF NOT template ? 'argv' THEN
        RAISE EXCEPTION 'job must name a program in argv, e.g. {"argv": ["sh", "-c", "date"]}'
            USING ERRCODE = 'check_violation', COLUMN = 'job';
    END IF;
    IF s_name IS NOT NULL AND NOT template ? 'name' THEN
        template := template || jsonb_build_object('name', s_name);
    END IF;
    -- Column names come from the list above only (checked), quoted all the same.
    SELECT string_agg(format('%I', k), ', ' ORDER BY k),
           string_agg(format('r.%I', k), ', ' ORDER BY k)
        INTO columns, picked
        FROM jsonb_object_keys(template) k;
    -- The add-time trial names only the columns a tenant may insert (its role is granted
    -- INSERT on those alone); the agent's fire also sets the schedule and its due time.
    IF s_name IS NULL THEN
        EXECUTE format(
            'INSERT INTO scheduler.jobs (tenant, %s) '
            'SELECT $1, %s FROM jsonb_populate_record(NULL::scheduler.jobs, $2) r '
            'RETURNING id', columns, picked)
            INTO new_id USING s_tenant, template;
    ELSE
        EXECUTE format(
            'INSERT INTO scheduler.jobs (tenant, schedule, schedule_due, %s) '
            'SELECT $1, $2, $3, %s FROM jsonb_populate_record(NULL::scheduler.jobs, $4) r '
            'RETURNING id', columns, picked)
            INTO new_id USING s_tenant, s_name, due, template;
    END IF;
    RETURN new_id;
END;
$$;

-- Only agents make scheduled jobs: a tenant's own insert naming a schedule could block its
-- next fire (the unique due time) or hold it (overlap = skip).
CREATE FUNCTION scheduler.jobs_schedule_by_agent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.schedule IS NOT NULL OR NEW.schedule_due IS NOT NULL)
       AND scheduler.role_tenants(current_user) IS NOT NULL THEN
        RAISE EXCEPTION 'schedule and schedule_due are set by the agent that fires a schedule'
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'schedule';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_schedule_by_agent BEFORE INSERT ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_schedule_by_agent();

-- Every rule of a schedule row with a message naming it; the template is tried as a real job
-- insert inside a subtransaction that is then rolled back (its NOTIFY goes with it).
CREATE FUNCTION scheduler.schedules_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    message text;
    state text;
    hint text;
BEGIN
    IF NEW.name IS NULL OR NEW.name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'schedule name % is not valid', quote_nullable(NEW.name)
            USING ERRCODE = 'check_violation', COLUMN = 'name',
                  HINT = 'Schedule names match [a-z0-9][a-z0-9_.-]{0,62}.';
    END IF;
    IF NEW.cron IS NULL OR length(NEW.cron) > 200
       OR cardinality(regexp_split_to_array(btrim(NEW.cron), '\s+')) <> 5 THEN
        RAISE EXCEPTION 'cron must have 5 fields (minute hour day-of-month month day-of-week): got %',
            quote_nullable(NEW.cron)
            USING ERRCODE = 'check_violation', COLUMN = 'cron',
                  HINT = 'For example ''*/15 * * * *'' or ''0 3 * * mon-fri''.';
    END IF;
    IF NEW.timezone IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = NEW.timezone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_nullable(NEW.timezone)
            USING ERRCODE = 'check_violation', COLUMN = 'timezone',
                  HINT = 'Use an IANA name such as UTC or Europe/Paris.';
    END IF;
    IF TG_OP = 'INSERT' OR NEW.job IS DISTINCT FROM OLD.job
       OR NEW.tenant IS DISTINCT FROM OLD.tenant THEN
        BEGIN
            PERFORM scheduler.schedule_job_insert(NEW.tenant, NULL, NEW.job, NULL);
            -- The trial succeeded: undo it.
            RAISE EXCEPTION 'trial insert' USING ERRCODE = 'SCH01';
        EXCEPTION
            WHEN SQLSTATE 'SCH01' THEN
                NULL;
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, state = RETURNED_SQLSTATE,
                                        hint = PG_EXCEPTION_HINT;
                RAISE EXCEPTION 'schedule %: the job template is refused: %', NEW.name, message
                    USING ERRCODE = state, COLUMN = 'job', HINT = hint;
        END;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- A paused schedule has no due time; a resumed one or a new expression is planned
        -- again from now (by the writer, or else by an agent): times missed while paused are
        -- not made up.
        IF NOT NEW.enabled THEN
            NEW.next_run_at := NULL;
        ELSIF (NEW.cron IS DISTINCT FROM OLD.cron OR NEW.timezone IS DISTINCT FROM OLD.timezone)
              AND NEW.next_run_at IS NOT DISTINCT FROM OLD.next_run_at THEN
            NEW.next_run_at := NULL;
        END IF;
        IF NEW.cron IS DISTINCT FROM OLD.cron OR NEW.timezone IS DISTINCT FROM OLD.timezone
           OR NEW.job IS DISTINCT FROM OLD.job OR (NEW.enabled AND NOT OLD.enabled) THEN
            NEW.error := NULL;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedules_before_write BEFORE INSERT OR UPDATE ON scheduler.schedules
    FOR EACH ROW EXECUTE FUNCTION scheduler.schedules_before_write();

-- Wake the agents' schedule loops when a due time may have come closer (a new schedule, a
-- resume, a new expression); the agents' own advances of next_run_at wake nobody.
CREATE FUNCTION scheduler.schedules_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scheduler_schedules', 'changed');
    RETURN NULL;
END;
$$;

CREATE TRIGGER schedules_notify_insert AFTER INSERT ON scheduler.schedules
    FOR EACH ROW EXECUTE FUNCTION scheduler.schedules_notify();
CREATE TRIGGER schedules_notify_update AFTER UPDATE ON scheduler.schedules
    FOR EACH ROW
    WHEN (NEW.cron IS DISTINCT FROM OLD.cron OR NEW.timezone IS DISTINCT FROM OLD.timezone
          OR NEW.enabled IS DISTINCT FROM OLD.enabled OR NEW.next_run_at IS NULL
          OR NEW.next_run_at < OLD.next_run_at)
    EXECUTE FUNCTION scheduler.schedules_notify();

-- Tenants: the same row-level security as jobs, and only the columns a person sets.
ALTER TABLE scheduler.schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.schedules FORCE ROW LEVEL SECURITY;
CREATE POLICY schedules_tenant_rows ON scheduler.schedules
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL
                OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));

GRANT SELECT, DELETE ON scheduler.schedules TO scheduler_tenant;
GRANT INSERT (name, tenant, cron, timezone, job, enabled, overlap)
    ON scheduler.schedules TO scheduler_tenant;
GRANT UPDATE (cron, timezone, job, enabled, overlap) ON scheduler.schedules TO scheduler_tenant;
