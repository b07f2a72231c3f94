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
          j.submitted_at, j.io_read_bps, j.io_write_bps;

-- name: tenant_chain
-- The tenant and its ancestors, root first, with their limits.
WITH RECURSIVE chain AS (
    SELECT name, parent, cpu_limit, memory_limit_bytes, pids_limit, weight, io_read_bps,
           io_write_bps, 0 AS depth
    FROM scheduler.tenants WHERE name = $1
    UNION ALL
    SELECT t.name, t.parent, t.cpu_limit, t.memory_limit_bytes, t.pids_limit, t.weight,
           t.io_read_bps, t.io_write_bps, c.depth + 1
    FROM scheduler.tenants t JOIN chain c ON t.name = c.parent
    WHERE c.depth < 32
)
SELECT name, cpu_limit, memory_limit_bytes, pids_limit, weight, io_read_bps, io_write_bps
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
       priority, max_attempts, attempts, desired_state, submitted_at, io_read_bps, io_write_bps
FROM scheduler.jobs
WHERE node = $1 AND state IN ('running', 'frozen')
ORDER BY id;

-- name: control_jobs
-- What the users ask of this node's running attempts ($1: their ids).
SELECT id, attempts, desired_state FROM scheduler.jobs
WHERE id = ANY($1::bigint[]) AND node = $2 AND state IN ('running', 'frozen');

-- name: set_job_state
-- The state column follows the kernel: 'frozen' once the freezer confirmed it, else 'running'.
UPDATE scheduler.jobs SET state = $2::text
WHERE id = $1 AND attempts = $3 AND state IN ('running', 'frozen');

-- name: set_job_error
-- A control action the kernel refused (the job keeps running); the end of the attempt
-- overwrites it with the attempt's own outcome.
UPDATE scheduler.jobs SET error = $2
WHERE id = $1 AND attempts = $3 AND state IN ('running', 'frozen');

-- name: tenant_tree
-- Every tenant with its cgroup path (root tenant first), limits and freeze flag, parents first.
WITH RECURSIVE tree AS (
    SELECT name, ARRAY[name] AS path, cpu_limit, memory_limit_bytes, pids_limit, weight,
           io_read_bps, io_write_bps, frozen
    FROM scheduler.tenants WHERE parent IS NULL
    UNION ALL
    SELECT t.name, tree.path || t.name, t.cpu_limit, t.memory_limit_bytes, t.pids_limit,
           t.weight, t.io_read_bps, t.io_write_bps, t.frozen
    FROM scheduler.tenants t JOIN tree ON t.parent = tree.name
    WHERE cardinality(tree.path) < 32
)
SELECT * FROM tree ORDER BY cardinality(path), name;

-- name: set_desired_state
-- What a user asks of a job; the triggers cancel a queued job at once and NOTIFY the agents.
UPDATE scheduler.jobs SET desired_state = $2 WHERE id = $1 RETURNING *;

-- name: list_tenants
SELECT t.*,
       (SELECT count(*) FROM scheduler.jobs j
        WHERE j.tenant = t.name AND j.state IN ('running', 'frozen')) AS active_jobs,
       (SELECT count(*) FROM scheduler.jobs j
        WHERE j.tenant = t.name AND j.state = 'queued') AS queued_jobs
FROM scheduler.tenants t ORDER BY t.name;

-- name: get_tenant
SELECT * FROM scheduler.tenants WHERE name = $1;

-- name: set_tenant_frozen
UPDATE scheduler.tenants SET frozen = $2 WHERE name = $1 RETURNING *;
