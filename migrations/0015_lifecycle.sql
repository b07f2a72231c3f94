-- Job lifecycle (issue 18, items 4 and 5): graceful cancel, retention, usage by month.

------------------------------------------------------------------------------------------
-- Graceful cancel.
------------------------------------------------------------------------------------------
-- Cancelling a running job (and its time limit) sends SIGTERM to its processes, then kills
-- its cgroup once kill_grace_seconds have passed; a frozen job is killed at once. The agent
-- caps the grace at its node's term_grace_seconds. The job's owner may set it at insert and
-- lower or raise it later (within the bounds): it only decides how long the owner's own job
-- may take to stop. `scheduler cancel --now` is desired_state = 'cancelled' and
-- kill_grace_seconds = 0 in one UPDATE.
ALTER TABLE scheduler.jobs ADD COLUMN kill_grace_seconds numeric NOT NULL DEFAULT 10;
ALTER TABLE scheduler.jobs ADD CONSTRAINT job_kill_grace_range
    CHECK (kill_grace_seconds >= 0 AND kill_grace_seconds <= 3600);
COMMENT ON COLUMN scheduler.jobs.kill_grace_seconds IS
    'Seconds between SIGTERM and the kill at a cancel or the time limit (0: kill at once).';
GRANT INSERT (kill_grace_seconds), UPDATE (kill_grace_seconds) ON scheduler.jobs
    TO scheduler_tenant;

-- A grace lowered while the job is already stopping (cancel --now after a cancel: the
-- desired_state does not change, so jobs_before_update sends nothing) wakes the agent
-- running it, with the same payload as a change of desired_state.
CREATE FUNCTION scheduler.jobs_grace_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.node IS NOT NULL AND NEW.state IN ('running', 'frozen') THEN
        PERFORM pg_notify('scheduler_control', 'node:' || NEW.node);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_grace_notify AFTER UPDATE OF kill_grace_seconds ON scheduler.jobs
    FOR EACH ROW WHEN (NEW.kill_grace_seconds IS DISTINCT FROM OLD.kill_grace_seconds)
    EXECUTE FUNCTION scheduler.jobs_grace_notify();

-- The job columns the claim does not return, read beside it (db/queries.sql claim_jobs). A
-- subquery of the claiming statement reads the statement's snapshot, taken before the claim
-- function's own: a job committed in between is claimed, and read there as NULL (its output
-- limit and grace lost). A volatile function's query takes a snapshot of its own.
CREATE FUNCTION scheduler.claimed_columns(job bigint)
RETURNS TABLE (output_limit_bytes bigint, kill_grace_seconds numeric)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY SELECT j.output_limit_bytes, j.kill_grace_seconds
                 FROM scheduler.jobs j WHERE j.id = job;
END;
$$;
REVOKE ALL ON FUNCTION scheduler.claimed_columns(bigint) FROM PUBLIC;

-- A schedule's job template may carry it like any job field (replaces 0012's list).
CREATE OR REPLACE FUNCTION scheduler.schedule_job_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['argv', 'cpu', 'cwd', 'env', 'image', 'io_read_bps', 'io_write_bps',
                 'kill_grace_seconds', 'labels', 'max_attempts', 'memory_bytes', 'name',
                 'network', 'output_limit_bytes', 'pids_max', 'priority', 'timeout_seconds']
$$;

------------------------------------------------------------------------------------------
-- Retention: one agent at a time deletes old finished job rows.
------------------------------------------------------------------------------------------
-- The sweep's transaction locks this row (SKIP LOCKED: an agent that finds it taken skips
-- its sweep). Only the owner may lock it, so no tenant role can hold it to stop the sweep
-- (an advisory lock is open to every role).
CREATE TABLE scheduler.retention_lock (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row));
INSERT INTO scheduler.retention_lock DEFAULT VALUES;
REVOKE ALL ON scheduler.retention_lock FROM PUBLIC;
-- The sweep finds old finished jobs by their end without reading the others.
CREATE INDEX jobs_finished_idx ON scheduler.jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost');

------------------------------------------------------------------------------------------
-- usage, partitioned by month of period_start (UTC).
------------------------------------------------------------------------------------------
-- Still append-only (no UPDATE, DELETE or TRUNCATE, on the table or on any month): an old
-- month leaves by DETACH PARTITION once its statements are closed, is dumped, then dropped
-- (docs/operations.md, "Archiving billing months"). A unique key of a partitioned table must
-- hold the partition key, so the primary key is (job_id, seq, period_start) and the one
-- closing row per attempt is unique on (job_id, attempt, period_start); usage_dedupe keeps
-- both old guarantees across months: a row whose (job_id, seq) exists, or a second closing
-- row of an attempt, is dropped, as ON CONFLICT DO NOTHING dropped it before.
ALTER TABLE scheduler.usage RENAME TO usage_unpartitioned;
ALTER INDEX scheduler.usage_pkey RENAME TO usage_unpartitioned_pkey;
ALTER INDEX scheduler.usage_period_idx RENAME TO usage_unpartitioned_period_idx;
ALTER INDEX scheduler.usage_one_final_per_attempt RENAME TO usage_unpartitioned_final;
ALTER INDEX scheduler.usage_tenant_recent_idx RENAME TO usage_unpartitioned_recent_idx;

CREATE TABLE scheduler.usage (
    job_id              bigint NOT NULL CONSTRAINT usage_job_id_fkey
                            REFERENCES scheduler.jobs (id),
    seq                 integer NOT NULL,
    attempt             integer NOT NULL,
    tenant              text NOT NULL CONSTRAINT usage_tenant_fkey
                            REFERENCES scheduler.tenants (name),
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
    PRIMARY KEY (job_id, seq, period_start),
    CONSTRAINT usage_period_ordered CHECK (period_end >= period_start),
    CONSTRAINT usage_nonnegative CHECK (cpu_seconds >= 0 AND memory_byte_seconds >= 0
        AND memory_peak_bytes >= 0 AND io_read_bytes >= 0 AND io_write_bytes >= 0)
) PARTITION BY RANGE (period_start);
CREATE INDEX usage_period_idx ON scheduler.usage (period_end, tenant);
CREATE INDEX usage_tenant_recent_idx ON scheduler.usage (tenant, period_end);
CREATE UNIQUE INDEX usage_one_final_per_attempt ON scheduler.usage (job_id, attempt, period_start)
    WHERE final;

-- Rows of a month that has no partition of its own (a clock far off, a late row of a month
-- already archived) land here rather than being refused: billing rows are never lost. A
-- month's partition cannot be made while this one holds rows of that month
-- (usage_partition says so).
CREATE TABLE scheduler.usage_default PARTITION OF scheduler.usage DEFAULT;
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON scheduler.usage_default
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_append_only();

-- The partition of the month holding ``day`` (UTC), made if missing (with the guard that a
-- TRUNCATE of the month alone would otherwise pass: statement triggers are not inherited).
-- Called by the agent for this month and the next ones, ahead of their rows.
CREATE FUNCTION scheduler.usage_partition(day date) RETURNS regclass
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name text := 'usage_' || to_char(first, 'YYYY_MM');
    made regclass := to_regclass('scheduler.' || name);
BEGIN
    IF made IS NOT NULL THEN
        RETURN made;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE scheduler.%I PARTITION OF scheduler.usage'
                       ' FOR VALUES FROM (%L) TO (%L)', name,
                       first::timestamp AT TIME ZONE 'UTC',
                       (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    EXCEPTION WHEN duplicate_table THEN
        RETURN to_regclass('scheduler.' || name);  -- another agent made it just now
    WHEN check_violation THEN
        RAISE EXCEPTION 'usage rows of % are in scheduler.usage_default: its partition cannot'
                        ' be made until they are moved (docs/operations.md)', to_char(first, 'YYYY-MM')
            USING ERRCODE = 'check_violation';
    END;
    EXECUTE format('CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON scheduler.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_append_only()', name);
    RETURN ('scheduler.' || name)::regclass;
END;
$$;
REVOKE ALL ON FUNCTION scheduler.usage_partition(date) FROM PUBLIC;

-- This month's partition and the next ``months`` ones (the agent calls it at start and at
-- each retention sweep).
CREATE FUNCTION scheduler.usage_partitions_ahead(months integer) RETURNS SETOF regclass
LANGUAGE sql AS $$
    SELECT scheduler.usage_partition((date_trunc('month', now() AT TIME ZONE 'UTC')
                                      + make_interval(months => m))::date)
    FROM generate_series(0, greatest(least(months, 24), 0)) AS m
$$;
REVOKE ALL ON FUNCTION scheduler.usage_partitions_ahead(integer) FROM PUBLIC;

-- The existing rows, each month into its own partition (before the triggers: copying them
-- must not count their cpu into fair share a second time).
SELECT scheduler.usage_partition(m::date)
FROM (SELECT DISTINCT date_trunc('month', period_start AT TIME ZONE 'UTC') AS m
      FROM scheduler.usage_unpartitioned) months;
SELECT scheduler.usage_partitions_ahead(2);
INSERT INTO scheduler.usage SELECT * FROM scheduler.usage_unpartitioned;

CREATE FUNCTION scheduler.usage_dedupe() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM scheduler.usage u WHERE u.job_id = NEW.job_id AND u.seq = NEW.seq)
       OR (NEW.final AND EXISTS (SELECT 1 FROM scheduler.usage u
                                 WHERE u.job_id = NEW.job_id AND u.attempt = NEW.attempt
                                   AND u.final)) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER usage_dedupe BEFORE INSERT ON scheduler.usage
    FOR EACH ROW EXECUTE FUNCTION scheduler.usage_dedupe();
CREATE TRIGGER usage_append_only BEFORE UPDATE OR DELETE ON scheduler.usage
    FOR EACH ROW EXECUTE FUNCTION scheduler.usage_append_only();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON scheduler.usage
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_append_only();
CREATE TRIGGER usage_recent_cpu AFTER INSERT ON scheduler.usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_recent_cpu();

-- Tenant roles read their subtree's rows through the parent only (no grant on a partition).
ALTER TABLE scheduler.usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.usage FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_tenant_rows ON scheduler.usage
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL
                OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));
GRANT SELECT ON scheduler.usage TO scheduler_tenant;

-- The rollups (0005) read the old table by its identity: made again, unchanged.
DROP VIEW scheduler.usage_hourly;
DROP VIEW scheduler.usage_daily;
DROP TABLE scheduler.usage_unpartitioned;

CREATE VIEW scheduler.usage_hourly AS
SELECT date_trunc('hour', u.period_end AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS "time",
       u.tenant,
       count(DISTINCT u.job_id) AS jobs,
       count(*) AS periods,
       sum(u.cpu_seconds) AS cpu_seconds,
       sum(u.memory_byte_seconds) AS memory_byte_seconds,
       sum(u.memory_byte_seconds) / (1073741824::numeric * 3600) AS memory_gib_hours,
       max(u.memory_peak_bytes) AS memory_peak_bytes,
       sum(u.io_read_bytes)::numeric AS io_read_bytes,
       sum(u.io_write_bytes)::numeric AS io_write_bytes
FROM scheduler.usage u
GROUP BY 1, u.tenant;
COMMENT ON VIEW scheduler.usage_hourly IS
    'Billing rows summed per tenant and UTC hour of period_end ("time" is what Grafana plots).';

CREATE VIEW scheduler.usage_daily AS
SELECT date_trunc('day', u.period_end AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS "time",
       u.tenant,
       count(DISTINCT u.job_id) AS jobs,
       count(*) AS periods,
       sum(u.cpu_seconds) AS cpu_seconds,
       sum(u.memory_byte_seconds) AS memory_byte_seconds,
       sum(u.memory_byte_seconds) / (1073741824::numeric * 3600) AS memory_gib_hours,
       max(u.memory_peak_bytes) AS memory_peak_bytes,
       sum(u.io_read_bytes)::numeric AS io_read_bytes,
       sum(u.io_write_bytes)::numeric AS io_write_bytes
FROM scheduler.usage u
GROUP BY 1, u.tenant;
COMMENT ON VIEW scheduler.usage_daily IS
    'Billing rows summed per tenant and UTC day of period_end ("time" is what Grafana plots).';
