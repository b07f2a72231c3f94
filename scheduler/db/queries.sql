-- Every statement the agent and the CLI send, as named blocks (loaded once by queries.py).

-- name: claim_jobs
-- Claim up to $2 runnable jobs for node $1 in one statement.
-- Order: fair share across tenants, then priority, then age. A job's share key is its
-- tenant's recent cpu-seconds (each usage row decayed with half-life $5 seconds) plus $6
-- seconds for every core its tenant has running or would have with this job and its
-- tenant's earlier queued ones, divided by the tenant's weight: the tenant that used least
-- per unit of weight goes first, and one claim interleaves tenants instead of draining one.
-- Admission: this node's free capacity ($3 cores, $4 bytes: minus the requests of its
-- running and frozen attempts) and every limit up each job's tenant chain (max_running_jobs,
-- cpu_limit, memory_limit_bytes, summed over all nodes). The caller holds the claim lock
-- (claim_lock), so claims of other nodes are committed and visible here.
WITH RECURSIVE
-- (tenant, ancestor) for each tenant and each of its ancestors, itself included.
lineage AS (
    SELECT name AS tenant, name AS ancestor, 0 AS depth FROM scheduler.tenants
    UNION ALL
    SELECT l.tenant, t.parent, l.depth + 1
    FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
    WHERE t.parent IS NOT NULL AND l.depth < 32
),
active AS (
    SELECT tenant, node, cpu, memory_bytes FROM scheduler.jobs
    WHERE state IN ('running', 'frozen')
),
node_free AS (
    SELECT $3::numeric - COALESCE(sum(cpu), 0) AS cpu,
           $4::numeric - COALESCE(sum(memory_bytes), 0) AS mem
    FROM active WHERE node = $1
),
-- What each tenant's limits leave free after its whole subtree's active jobs (NULL: no limit).
headroom AS (
    SELECT t.name,
           t.max_running_jobs - count(a.tenant) AS jobs,
           t.cpu_limit - COALESCE(sum(a.cpu), 0) AS cpu,
           t.memory_limit_bytes - COALESCE(sum(a.memory_bytes), 0) AS mem
    FROM scheduler.tenants t
    JOIN lineage l ON l.ancestor = t.name
    LEFT JOIN active a ON a.tenant = l.tenant
    GROUP BY t.name, t.max_running_jobs, t.cpu_limit, t.memory_limit_bytes
),
-- A frozen tenant holds the queued jobs of its whole subtree.
held AS (
    SELECT DISTINCT l.tenant
    FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
    WHERE t.frozen
),
recent AS (
    SELECT u.tenant,
           sum(u.cpu_seconds * exp(-ln(2) * extract(epoch FROM now() - u.period_end) / $5))
               AS used
    FROM scheduler.usage u
    WHERE u.period_end > now() - make_interval(secs => 10 * $5)
    GROUP BY u.tenant
),
running AS (SELECT tenant, sum(cpu) AS cpu FROM active GROUP BY tenant),
queued AS (
    SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority,
           (COALESCE(r.used, 0) + $6 * (COALESCE(run.cpu, 0) + sum(j.cpu) OVER per_tenant))
               / t.weight AS share
    FROM scheduler.jobs j
    JOIN scheduler.tenants t ON t.name = j.tenant
    LEFT JOIN recent r ON r.tenant = j.tenant
    LEFT JOIN running run ON run.tenant = j.tenant
    CROSS JOIN node_free nf
    WHERE j.state = 'queued'
      -- A job held frozen is not started until thawed.
      AND j.desired_state = 'running'
      AND j.run_at <= now()
      AND j.tenant NOT IN (SELECT tenant FROM held)
      -- Each job on its own must fit what is free now, on the node and up its chain.
      AND j.cpu <= nf.cpu AND j.memory_bytes <= nf.mem
      AND NOT EXISTS (
          SELECT 1 FROM lineage l JOIN headroom h ON h.name = l.ancestor
          WHERE l.tenant = j.tenant
            AND (h.jobs < 1 OR j.cpu > h.cpu OR j.memory_bytes > h.mem))
    WINDOW per_tenant AS (PARTITION BY j.tenant ORDER BY j.priority DESC, j.id)
),
ordered AS (
    SELECT q.*, row_number() OVER (ORDER BY q.share, q.priority DESC, q.id) AS rank
    FROM queued q
    ORDER BY rank
    -- Enough candidates to fill a claim even when admission below skips some.
    LIMIT 4 * $2 + 16
),
-- Greedy admission in that order: running totals per ancestor must stay within its headroom...
chain_totals AS (
    SELECT o.rank, l.ancestor,
           count(*) OVER w AS jobs, sum(o.cpu) OVER w AS cpu, sum(o.memory_bytes) OVER w AS mem
    FROM ordered o JOIN lineage l ON l.tenant = o.tenant
    WINDOW w AS (PARTITION BY l.ancestor ORDER BY o.rank)
),
chain_ok AS (
    SELECT o.* FROM ordered o
    WHERE NOT EXISTS (
        SELECT 1 FROM chain_totals c JOIN headroom h ON h.name = c.ancestor
        WHERE c.rank = o.rank AND (c.jobs > h.jobs OR c.cpu > h.cpu OR c.mem > h.mem))
),
-- ...and the running total of the node's requests within its free capacity.
admitted AS (
    SELECT a.id, a.rank FROM (
        SELECT c.id, c.rank,
               sum(c.cpu) OVER (ORDER BY c.rank) AS cpu,
               sum(c.memory_bytes) OVER (ORDER BY c.rank) AS mem
        FROM chain_ok c
    ) a CROSS JOIN node_free nf
    WHERE a.cpu <= nf.cpu AND a.mem <= nf.mem
    ORDER BY a.rank
    LIMIT $2
),
candidates AS (
    SELECT j.id
    FROM scheduler.jobs j
    WHERE j.id IN (SELECT id FROM admitted)
      -- Re-checked on the locked row: a user may have frozen or cancelled it meanwhile.
      AND j.state = 'queued' AND j.desired_state = 'running'
    -- SKIP LOCKED: a row a user is updating right now is left for the next claim.
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

-- name: claim_lock
-- Serialises claims of all nodes (held to the end of the claim's transaction), so that
-- tenant limits summed over nodes see every committed claim.
SELECT pg_advisory_xact_lock(5918230770001);

-- name: fail_unfit_jobs
-- Queued jobs that can never run: larger than this node ($1 node, $2 cores, $3 bytes) or than
-- a limit of their tenant chain. They fail at once with the reason, instead of waiting forever.
WITH RECURSIVE lineage AS (
    SELECT name AS tenant, name AS ancestor, 0 AS depth FROM scheduler.tenants
    UNION ALL
    SELECT l.tenant, t.parent, l.depth + 1
    FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
    WHERE t.parent IS NOT NULL AND l.depth < 32
),
unfit AS (
    SELECT j.id, CASE
        WHEN j.cpu > $2::numeric THEN format(
            'cannot ever run: asks for %s cpu cores, node %s has %s', j.cpu, $1::text, $2::numeric)
        WHEN j.memory_bytes > $3::bigint THEN format(
            'cannot ever run: asks for %s bytes of memory, node %s has %s',
            j.memory_bytes, $1::text, $3::bigint)
        ELSE (
            SELECT CASE
                WHEN t.max_running_jobs = 0 THEN format(
                    'cannot ever run: tenant %s allows no running jobs (max_running_jobs = 0)',
                    t.name)
                WHEN j.cpu > t.cpu_limit THEN format(
                    'cannot ever run: asks for %s cpu cores, tenant %s allows %s',
                    j.cpu, t.name, t.cpu_limit)
                ELSE format(
                    'cannot ever run: asks for %s bytes of memory, tenant %s allows %s',
                    j.memory_bytes, t.name, t.memory_limit_bytes)
                END
            FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
            WHERE l.tenant = j.tenant
              AND (t.max_running_jobs = 0 OR j.cpu > t.cpu_limit
                   OR j.memory_bytes > t.memory_limit_bytes)
            ORDER BY l.depth LIMIT 1)
        END AS reason
    FROM scheduler.jobs j
    WHERE j.state = 'queued'
)
UPDATE scheduler.jobs j
SET state = 'failed', error = u.reason, finished_at = clock_timestamp()
FROM unfit u
WHERE j.id = u.id AND u.reason IS NOT NULL AND j.state = 'queued'
RETURNING j.id, j.tenant, j.error;

-- name: next_run_at
-- Seconds until the earliest delayed (run_at) or backed-off queued job becomes runnable.
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM scheduler.jobs
WHERE state = 'queued' AND desired_state = 'running' AND run_at > now();
