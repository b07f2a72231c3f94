-- Every statement the agent and the CLI send, as named blocks (loaded once by queries.py).

-- name: claim_jobs
-- Claim up to $2 runnable jobs for node $1 in one statement.
WITH candidates AS (
    SELECT j.id
    FROM scheduler.jobs j
    JOIN scheduler.tenants t ON t.name = j.tenant
    WHERE j.state = 'queued'
      -- A job held frozen, or a frozen tenant's job, is not started until thawed.
      AND j.desired_state = 'running'
      AND NOT t.frozen
      AND j.run_at <= now()
    ORDER BY j.priority DESC, j.id
    LIMIT $2
    -- SKIP LOCKED: two agents scanning at once take disjoint rows instead of waiting.
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE scheduler.jobs j
SET state = 'running',
    node = $1,
    attempts = j.attempts + 1,
    started_at = clock_timestamp(),
    exit_code = NULL, signal = NULL, error = NULL, oom_killed = false, finished_at = NULL
FROM candidates c
WHERE j.id = c.id
RETURNING j.id, j.tenant, j.name, j.argv, j.env, j.cwd, j.cpu, j.memory_bytes, j.pids_max,
          j.timeout_seconds, j.priority, j.max_attempts, j.attempts, j.desired_state,
          j.submitted_at;

-- name: tenant_chain
-- The tenant and its ancestors, root first, with their limits.
WITH RECURSIVE chain AS (
    SELECT name, parent, cpu_limit, memory_limit_bytes, pids_limit, weight, 0 AS depth
    FROM scheduler.tenants WHERE name = $1
    UNION ALL
    SELECT t.name, t.parent, t.cpu_limit, t.memory_limit_bytes, t.pids_limit, t.weight,
           c.depth + 1
    FROM scheduler.tenants t JOIN chain c ON t.name = c.parent
    WHERE c.depth < 32
)
SELECT name, cpu_limit, memory_limit_bytes, pids_limit, weight
FROM chain ORDER BY depth DESC;

-- name: finish_job
-- Record an attempt's end; $2 is the final state, or 'queued' for a retry at $13.
UPDATE scheduler.jobs
SET state = $2::text,
    exit_code = $3,
    signal = $4,
    oom_killed = $5,
    error = $6,
    started_at = $7,
    finished_at = CASE WHEN $2::text = 'queued' THEN NULL ELSE $8::timestamptz END,
    cpu_seconds = $9,
    memory_peak_bytes = $10,
    io_read_bytes = $11,
    io_write_bytes = $12,
    run_at = COALESCE($13::timestamptz, run_at),
    node = CASE WHEN $2::text = 'queued' THEN NULL ELSE node END
WHERE id = $1 AND attempts = $14 AND state IN ('running', 'frozen');

-- name: insert_usage
-- The closing billing row of an attempt, numbered after the job's earlier rows. The unique
-- index on (job_id, attempt) WHERE final turns a repeated write into a no-op.
INSERT INTO scheduler.usage
    (job_id, seq, attempt, tenant, node, period_start, period_end, cpu_seconds,
     memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, final)
SELECT $1, COALESCE(max(u.seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, true
FROM scheduler.usage u WHERE u.job_id = $1
ON CONFLICT DO NOTHING;

-- name: next_usage_seq
SELECT COALESCE(max(seq), 0) + 1 FROM scheduler.usage WHERE job_id = $1;

-- name: running_on_node
SELECT count(*) FROM scheduler.jobs WHERE node = $1 AND state IN ('running', 'frozen');

-- name: insert_job
INSERT INTO scheduler.jobs (tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max,
                            timeout_seconds, priority, max_attempts, labels)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING *;

-- name: get_job
SELECT * FROM scheduler.jobs WHERE id = $1;

-- name: list_jobs
SELECT * FROM scheduler.jobs
WHERE ($1::text IS NULL OR tenant = $1)
  AND ($2::text IS NULL OR state = $2)
  AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4;

-- name: active_on_node
-- Attempts this node had started when it last stopped: re-adopted or recorded at start-up.
SELECT id, tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max, timeout_seconds,
       priority, max_attempts, attempts, desired_state, submitted_at
FROM scheduler.jobs
WHERE node = $1 AND state IN ('running', 'frozen')
ORDER BY id;

-- name: insert_usage_periods
-- One sweep's billing rows in one statement. seq is chosen by the sampler from its last
-- committed row, so a retried write of the same batch conflicts on (job_id, seq) and is a
-- no-op instead of billing a period twice.
INSERT INTO scheduler.usage
    (job_id, seq, attempt, tenant, node, period_start, period_end, cpu_seconds,
     memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, final)
SELECT r.job_id, r.seq, r.attempt, r.tenant, r.node, r.period_start, r.period_end,
       r.cpu_seconds, r.memory_byte_seconds, r.memory_peak_bytes, r.io_read_bytes,
       r.io_write_bytes, false
FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::text[], $5::text[],
            $6::timestamptz[], $7::timestamptz[], $8::numeric[], $9::numeric[],
            $10::bigint[], $11::bigint[], $12::bigint[])
    AS r(job_id, seq, attempt, tenant, node, period_start, period_end, cpu_seconds,
         memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes)
ON CONFLICT (job_id, seq) DO NOTHING;

-- name: usage_marks
-- Where metering of each (job $1[i], attempt $2[i]) resumes: the job's last seq, and this
-- attempt's row count, last period end and summed counters (attempts without rows: the
-- claim time). Used after a restart, for retried attempts, and after a failed write.
SELECT a.job_id,
       COALESCE(max(u.seq), 0) AS seq,
       count(u.seq) FILTER (WHERE u.attempt = a.attempt) AS rows,
       COALESCE(max(u.period_end) FILTER (WHERE u.attempt = a.attempt), j.started_at)
           AS period_end,
       COALESCE(sum(u.cpu_seconds) FILTER (WHERE u.attempt = a.attempt), 0) AS cpu_seconds,
       COALESCE(sum(u.io_read_bytes) FILTER (WHERE u.attempt = a.attempt), 0) AS io_read_bytes,
       COALESCE(sum(u.io_write_bytes) FILTER (WHERE u.attempt = a.attempt), 0) AS io_write_bytes,
       COALESCE(max(u.memory_peak_bytes) FILTER (WHERE u.attempt = a.attempt), 0)
           AS memory_peak_bytes
FROM unnest($1::bigint[], $2::integer[]) AS a(job_id, attempt)
JOIN scheduler.jobs j ON j.id = a.job_id
LEFT JOIN scheduler.usage u ON u.job_id = a.job_id
GROUP BY a.job_id, a.attempt, j.started_at;

-- name: job_state_counts
-- Jobs per tenant and state, for scheduler_tenant_jobs and scheduler_queue_depth.
SELECT tenant, state, count(*) AS n FROM scheduler.jobs GROUP BY tenant, state;

-- name: billing_usage
-- The rows a billing window holds: a row belongs to the window in which its period ends.
SELECT u.job_id, j.name AS job_name, u.tenant, u.period_end, u.cpu_seconds,
       u.memory_byte_seconds, u.io_read_bytes, u.io_write_bytes
FROM scheduler.usage u
JOIN scheduler.jobs j ON j.id = u.job_id
WHERE u.period_end >= $1 AND u.period_end < $2
  AND ($3::text IS NULL OR u.tenant = $3)
ORDER BY u.job_id, u.seq;

-- name: billing_rates
-- Every rate; infinite validity bounds come back as NULL.
SELECT id, resource, tenant, price, currency,
       CASE WHEN isfinite(valid_from) THEN valid_from END AS valid_from,
       CASE WHEN isfinite(valid_to) THEN valid_to END AS valid_to
FROM scheduler.rates
ORDER BY id;

-- name: check_jobs
-- Finished jobs of a window (finished_at in [$1, $2)) with their totals, for reconciliation.
SELECT id, tenant, state, attempts, cpu_seconds, memory_peak_bytes, io_read_bytes,
       io_write_bytes
FROM scheduler.jobs
WHERE state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')
  AND finished_at >= $1 AND finished_at < $2
ORDER BY id;

-- name: check_usage
-- Every billing row of the jobs $1, in order.
SELECT job_id, seq, attempt, period_start, period_end, cpu_seconds, memory_peak_bytes,
       io_read_bytes, io_write_bytes, final
FROM scheduler.usage
WHERE job_id = ANY($1::bigint[])
ORDER BY job_id, seq;

-- name: check_node_running
-- Attempts running on node $1 now.
SELECT id, tenant FROM scheduler.jobs WHERE node = $1 AND state IN ('running', 'frozen');

-- name: check_node_billed
-- CPU billed on node $1 per tenant for periods since $2 (the host's boot: older cgroups are gone).
SELECT tenant, sum(cpu_seconds) AS cpu_seconds
FROM scheduler.usage
WHERE node = $1 AND period_start >= $2
GROUP BY tenant;

-- name: check_tenants
SELECT name, parent FROM scheduler.tenants ORDER BY name;

-- name: billing_tenant_exists
SELECT EXISTS (SELECT 1 FROM scheduler.tenants WHERE name = $1);
