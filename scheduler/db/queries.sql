-- Every statement the agent and the CLI send, as named blocks (loaded once by queries.py).

-- name: claim_jobs
-- Claim up to $2 runnable jobs for node $1 ($3 cores, $4 bytes of capacity; $5 the seconds a
-- running core counts for in fair share; $6 the node's lease epoch): one statement, taking
-- the claim lock itself, so outside a transaction it is one round trip. The claim's SQL is
-- the function's (migrations/0008_claim_function.sql, replaced in 0010_control_plane.sql).
-- The job's output limit (migration
-- 0012), kill grace (0015) and array place (0016) are read beside it, by a function whose query sees what the
-- claim saw (a subquery here would read the statement's older snapshot: NULL for a job
-- committed between the two, migration 0015).
SELECT c.*, x.output_limit_bytes, x.kill_grace_seconds,
       -- The array member's place (migration 0016): SCHEDULER_ARRAY_ID and _INDEX.
       x.array_id, x.array_index
FROM scheduler.claim_jobs($1, $2, $3, $4, $5, $6) c
LEFT JOIN LATERAL scheduler.claimed_columns(c.id) x ON true;

-- name: claimed_on_node
-- The attempts Postgres gives node $1 under epoch $2, with the columns claim_jobs returns
-- (but usage_seq: their billing rows are read as after a restart): after a claim whose answer
-- was lost, the dispatcher starts those it never heard of.
SELECT j.id, j.tenant, j.name, j.argv, j.env, j.cwd, j.cpu, j.memory_bytes, j.pids_max,
       j.timeout_seconds, j.priority, j.max_attempts, j.attempts, j.desired_state,
       j.submitted_at, j.io_read_bps, j.io_write_bps, j.network, j.image,
       (SELECT t.run_as FROM scheduler.tenants t WHERE t.name = j.tenant) AS run_as,
       j.output_limit_bytes, j.array_id, j.array_index, j.kill_grace_seconds
FROM scheduler.jobs j
WHERE j.node = $1 AND j.node_epoch IS NOT DISTINCT FROM $2 AND j.state IN ('running', 'frozen')
ORDER BY j.id;

-- name: tenant_chain
-- The tenant and its ancestors, root first, with their limits.
WITH RECURSIVE chain AS (
    SELECT name, parent, cpu_limit, memory_limit_bytes, pids_limit, weight, io_read_bps,
           io_write_bps, output_limit_bytes, 0 AS depth
    FROM scheduler.tenants WHERE name = $1
    UNION ALL
    SELECT t.name, t.parent, t.cpu_limit, t.memory_limit_bytes, t.pids_limit, t.weight,
           t.io_read_bps, t.io_write_bps, t.output_limit_bytes, c.depth + 1
    FROM scheduler.tenants t JOIN chain c ON t.name = c.parent
    WHERE c.depth < 32
)
SELECT c.name, c.cpu_limit, c.memory_limit_bytes, c.pids_limit, c.weight, c.io_read_bps,
       c.io_write_bps, c.output_limit_bytes, t.uid, t.gid,
       (SELECT i.uid_first FROM scheduler.isolation i) AS uid_first
FROM chain c JOIN scheduler.tenants t ON t.name = c.name ORDER BY c.depth DESC;

-- name: finish_jobs
-- Record a batch of attempts' ends in one statement: for each, $2 is the final state, or
-- 'queued' for a retry at $13; only the attempt still running ($14) is touched.
UPDATE scheduler.jobs j
SET state = r.state,
    exit_code = r.exit_code,
    signal = r.signal,
    oom_killed = r.oom_killed,
    error = r.error,
    started_at = r.started_at,
    finished_at = CASE WHEN r.state = 'queued' THEN NULL ELSE r.finished_at END,
    cpu_seconds = r.cpu_seconds,
    memory_peak_bytes = r.memory_peak_bytes,
    io_read_bytes = r.io_read_bytes,
    io_write_bytes = r.io_write_bytes,
    run_at = COALESCE(r.run_at, j.run_at),
    node = CASE WHEN r.state = 'queued' THEN NULL ELSE j.node END
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::integer[], $5::boolean[],
            $6::text[], $7::timestamptz[], $8::timestamptz[], $9::numeric[], $10::bigint[],
            $11::bigint[], $12::bigint[], $13::timestamptz[], $14::integer[])
    AS r(id, state, exit_code, signal, oom_killed, error, started_at, finished_at,
         cpu_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, run_at, attempt)
WHERE j.id = r.id AND j.attempts = r.attempt AND j.state IN ('running', 'frozen');

-- name: release_claims
-- Attempts this node claimed but could not start for a fault of its own (a full state disk):
-- back to the queue as if never claimed ($1 job ids, $2 their attempt numbers, $3 why), so
-- the attempt does not count against max_attempts. An attempt that already has usage rows
-- (its init ran) is left alone: the caller records it as usual.
UPDATE scheduler.jobs j
SET state = 'queued', node = NULL, node_epoch = NULL, attempts = j.attempts - 1,
    started_at = NULL, error = r.reason
FROM unnest($1::bigint[], $2::int[], $3::text[]) AS r (id, attempt, reason)
WHERE j.id = r.id AND j.attempts = r.attempt AND j.state IN ('running', 'frozen')
  AND NOT EXISTS (
      SELECT 1 FROM scheduler.usage u WHERE u.job_id = r.id AND u.attempt = r.attempt)
RETURNING j.id;

-- name: insert_closing_usage
-- The closing billing rows of a batch of attempts (one per job: a job's next attempt starts
-- only once this one is recorded), each numbered after its job's earlier rows, in one
-- statement. The unique index on (job_id, attempt) WHERE final turns a repeated write into a
-- no-op.
INSERT INTO scheduler.usage
    (job_id, seq, attempt, tenant, node, period_start, period_end, cpu_seconds,
     memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, final)
SELECT r.job_id,
       COALESCE((SELECT max(u.seq) FROM scheduler.usage u WHERE u.job_id = r.job_id), 0) + 1,
       r.attempt, r.tenant, r.node, r.period_start, r.period_end, r.cpu_seconds,
       r.memory_byte_seconds, r.memory_peak_bytes, r.io_read_bytes, r.io_write_bytes, true
FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::numeric[], $8::numeric[], $9::bigint[], $10::bigint[],
            $11::bigint[])
    AS r(job_id, attempt, tenant, node, period_start, period_end, cpu_seconds,
         memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes)
ORDER BY r.tenant, r.job_id
ON CONFLICT DO NOTHING;

-- name: next_usage_seq
SELECT COALESCE(max(seq), 0) + 1 FROM scheduler.usage WHERE job_id = $1;

-- name: running_on_node
SELECT count(*) FROM scheduler.jobs WHERE node = $1 AND state IN ('running', 'frozen');

-- name: insert_job
INSERT INTO scheduler.jobs (tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max,
                            timeout_seconds, priority, max_attempts, labels, run_at,
                            image, network, io_read_bps, io_write_bps, output_limit_bytes,
                            depends_on, constraints, kill_grace_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, COALESCE($13, now()),
        $14, $15, $16, $17, $18, $19, $20, COALESCE($21::numeric, 10))
RETURNING *;

-- name: insert_job_array
-- An array: one job per index in [$22, $23] with insert_job's fields, sharing a new array_id;
-- the members past the first $24 (max_running) start gated (migration 0016).
INSERT INTO scheduler.jobs (tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max,
                            timeout_seconds, priority, max_attempts, labels, run_at,
                            image, network, io_read_bps, io_write_bps, output_limit_bytes,
                            depends_on, constraints, kill_grace_seconds, array_id,
                            array_index, array_waiting)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, COALESCE($13, now()),
       $14, $15, $16, $17, $18, $19, $20, COALESCE($21::numeric, 10), a.id, i,
       i - $22::int >= $24::int
FROM (SELECT nextval('scheduler.job_array_ids') AS id) a,
     generate_series($22::int, $23::int) i
ORDER BY i
RETURNING *;

-- name: set_array_desired_state
-- Cancel, freeze or thaw every unfinished member of array $1 ($3: the tenants the caller
-- may steer, NULL: all), in one statement; the members it changed. $4 (a cancel --now): no
-- grace after SIGTERM, also for members already waiting out theirs (migration 0015).
UPDATE scheduler.jobs
SET desired_state = $2,
    kill_grace_seconds = CASE WHEN $4::boolean THEN 0 ELSE kill_grace_seconds END
WHERE array_id = $1 AND ($3::text[] IS NULL OR tenant = ANY ($3))
  AND state IN ('queued', 'running', 'frozen')
  AND (desired_state <> $2 OR ($4::boolean AND kill_grace_seconds <> 0))
RETURNING id, tenant, state, desired_state;

-- name: array_exists
SELECT EXISTS (SELECT 1 FROM scheduler.jobs
               WHERE array_id = $1 AND ($2::text[] IS NULL OR tenant = ANY ($2)));

-- name: get_job
SELECT * FROM scheduler.jobs WHERE id = $1;

-- name: list_jobs
SELECT * FROM scheduler.jobs
WHERE ($1::text IS NULL OR tenant = $1)
  AND ($2::text IS NULL OR state = $2)
  AND ($3::bigint IS NULL OR id < $3)
  AND ($5::text[] IS NULL OR tenant = ANY ($5))
  AND ($6::bigint IS NULL OR array_id = $6)
ORDER BY id DESC
LIMIT $4;

-- name: active_on_node
-- Attempts this node had started when it last stopped: re-adopted or recorded at start-up.
SELECT id, tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max, timeout_seconds,
       priority, max_attempts, attempts, desired_state, submitted_at, io_read_bps, io_write_bps,
       output_limit_bytes, kill_grace_seconds
FROM scheduler.jobs
WHERE node = $1 AND state IN ('running', 'frozen')
ORDER BY id;

-- name: control_jobs
-- What the users ask of this node's running attempts ($1: their ids), with the grace a
-- cancel gives them (read each time: cancel --now lowers it to 0 while the job stops).
SELECT id, attempts, state, desired_state, kill_grace_seconds FROM scheduler.jobs
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
-- budget_frozen: the tenant's budget (action freeze) is reached; kept apart from frozen (the
-- operator's or tenant's flag), so that a raised budget thaws only what the budget froze.
SELECT tree.*,
       tree.name IN (SELECT b.tenant FROM scheduler.budget_reached b WHERE b.action = 'freeze')
           AS budget_frozen
FROM tree ORDER BY cardinality(path), name;

-- name: set_desired_state
-- What a user asks of a job; the triggers cancel a queued job at once and NOTIFY the agents.
UPDATE scheduler.jobs SET desired_state = $2 WHERE id = $1 RETURNING *;

-- name: retention_lock
-- Held by the retention sweep's batch transaction: only one agent deletes job rows at a time
-- (only the owner may lock the row, so no tenant role can stop the sweep). No row back: another
-- agent is sweeping.
SELECT 1 FROM scheduler.retention_lock FOR UPDATE SKIP LOCKED;

-- name: delete_old_jobs
-- Up to $2 finished jobs that ended more than $1 seconds ago, with their idempotency keys. A
-- job with billing rows stays: usage is append-only and references it, so it goes once its
-- months were detached and dropped (docs/operations.md, "Archiving billing months").
WITH doomed AS (
    SELECT j.id FROM scheduler.jobs j
    WHERE j.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')
      AND j.finished_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM scheduler.usage u WHERE u.job_id = j.id)
    ORDER BY j.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
keys AS (
    DELETE FROM scheduler.idempotency_keys k USING doomed d WHERE k.job_id = d.id
)
DELETE FROM scheduler.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id;

-- name: usage_partitions_ahead
-- This month's usage partition and the next two (migration 0015), made if missing; bounded
-- wait for the table lock that making one takes (a long billing read holds it off).
-- (Two statements, no parameters: run with execute() in a transaction.)
SET LOCAL lock_timeout = '5s';
SELECT scheduler.usage_partitions_ahead(2);

-- name: cancel_now
-- Cancel without the grace between SIGTERM and the kill (scheduler cancel --now): one UPDATE,
-- so the agent never sees the cancel with the old grace.
UPDATE scheduler.jobs SET desired_state = 'cancelled', kill_grace_seconds = 0
WHERE id = $1 RETURNING *;

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
-- The lock that serialises claims of all nodes (the row scheduler.claim_jobs locks; held to
-- the end of the transaction; only the owner may lock it, so no tenant role can hold it),
-- taken first by the transaction that checks for jobs that can never run and then claims.
-- JIT is off for that check too: with a long queue the planner's estimates cross
-- jit_above_cost, and compiling (about 0.5 s on a small host) costs far more than running it.
-- The transaction then writes outcome columns (fail_jobs) as the agent.
SELECT set_config('jit', 'off', true), set_config('scheduler.writer', 'agent', true)
FROM scheduler.claim_lock FOR UPDATE;

-- name: unfit_jobs
-- Queued jobs that can never run: that no node of the fleet could take (its capacity and
-- labels: every row of scheduler.nodes, up, down or drained, and this node, $1 with $2 cores
-- and $3 bytes), or larger than a limit of their tenant chain, with the reason (fail_jobs then
-- fails them at once, instead of letting them wait forever). A job too big for this node
-- waits for a larger one; a job waiting for a node that is down waits for it to come back
-- (scheduler nodes forget removes a node gone for good). A plain SELECT: an UPDATE joined to
-- this scan made Postgres hash the whole queue on every claim.
WITH RECURSIVE lineage AS (
    SELECT name AS tenant, name AS ancestor, 0 AS depth FROM scheduler.tenants
    UNION ALL
    SELECT l.tenant, t.parent, l.depth + 1
    FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
    WHERE t.parent IS NOT NULL AND l.depth < 32
),
-- The tightest limits up each tenant's chain: one join instead of a walk per job.
chain AS (
    SELECT l.tenant, min(t.cpu_limit) AS cpu, min(t.memory_limit_bytes) AS mem,
           bool_or(t.max_running_jobs = 0) AS closed
    FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
    GROUP BY l.tenant
),
-- Every node a job could run on, this one included (also when it has no row yet).
fleet AS MATERIALIZED (
    SELECT n.name, n.cpu, n.memory_bytes::numeric AS mem, n.labels
    FROM scheduler.nodes n WHERE n.name <> $1::text
    UNION ALL
    SELECT $1::text, $2::numeric, $3::bigint::numeric,
           COALESCE((SELECT n.labels FROM scheduler.nodes n WHERE n.name = $1::text), '{}')
),
-- The smallest node's size: a job within it and without constraints fits every node, and
-- needs no per-node test (most of the queue).
smallest AS (
    SELECT min(f.cpu) AS cpu, min(f.mem) AS mem FROM fleet f
),
unfit AS (
    SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.constraints,
           COALESCE(c.closed OR j.cpu > c.cpu OR j.memory_bytes > c.mem, false) AS over_tenant
    FROM scheduler.jobs j JOIN chain c ON c.tenant = j.tenant CROSS JOIN smallest g
    WHERE j.state = 'queued'
      AND (c.closed OR j.cpu > c.cpu OR j.memory_bytes > c.mem
           OR ((j.constraints <> '{}' OR j.cpu > g.cpu OR j.memory_bytes > g.mem)
               AND NOT EXISTS (
                   SELECT 1 FROM fleet f
                   WHERE j.cpu <= f.cpu AND j.memory_bytes <= f.mem
                     AND j.constraints <@ f.labels)))
),
-- The reason names the nearest tenant whose limit is in the way, or what no node has: the
-- labels, or the size among the nodes that have them.
reasons AS (
    SELECT u.id, CASE
        WHEN NOT u.over_tenant THEN (
            SELECT CASE
                WHEN count(f.name) = 0 THEN format(
                    'cannot ever run: no node has the labels %s', u.constraints)
                WHEN u.cpu > max(f.cpu) THEN format(
                    'cannot ever run: asks for %s cpu cores, the largest node%s has %s',
                    u.cpu, CASE WHEN u.constraints <> '{}' THEN ' with its labels' ELSE '' END,
                    max(f.cpu))
                WHEN u.memory_bytes > max(f.mem) THEN format(
                    'cannot ever run: asks for %s bytes of memory, the largest node%s has %s',
                    u.memory_bytes,
                    CASE WHEN u.constraints <> '{}' THEN ' with its labels' ELSE '' END,
                    max(f.mem))
                ELSE format(
                    'cannot ever run: no node%s has both %s cpu cores and %s bytes of memory',
                    CASE WHEN u.constraints <> '{}' THEN ' with its labels' ELSE '' END,
                    u.cpu, u.memory_bytes)
                END
            FROM fleet f WHERE u.constraints <@ f.labels)
        ELSE (
            SELECT CASE
                WHEN t.max_running_jobs = 0 THEN format(
                    'cannot ever run: tenant %s allows no running jobs (max_running_jobs = 0)',
                    t.name)
                WHEN u.cpu > t.cpu_limit THEN format(
                    'cannot ever run: asks for %s cpu cores, tenant %s allows %s',
                    u.cpu, t.name, t.cpu_limit)
                ELSE format(
                    'cannot ever run: asks for %s bytes of memory, tenant %s allows %s',
                    u.memory_bytes, t.name, t.memory_limit_bytes)
                END
            FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
            WHERE l.tenant = u.tenant
              AND (t.max_running_jobs = 0 OR u.cpu > t.cpu_limit
                   OR u.memory_bytes > t.memory_limit_bytes)
            ORDER BY l.depth LIMIT 1)
        END AS reason
    FROM unfit u
)
SELECT id, reason FROM reasons;

-- name: fail_jobs
-- Fail queued jobs ($1 ids) with their reasons ($2), as unfit_jobs found them.
UPDATE scheduler.jobs j
SET state = 'failed', error = f.reason, finished_at = clock_timestamp()
FROM unnest($1::bigint[], $2::text[]) AS f(id, reason)
WHERE j.id = f.id AND j.state = 'queued'
RETURNING j.id, j.tenant, j.error;

-- name: next_run_at
-- Seconds until the earliest delayed (run_at) or backed-off queued job becomes runnable
-- (through jobs_queued_run_at_idx).
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM scheduler.jobs
WHERE state = 'queued' AND desired_state = 'running' AND run_at > now();
-- name: insert_usage_periods
-- One sweep's billing rows in one statement, also spooled rows replayed once the database is
-- back (agent/spool.py). seq is chosen by the sampler from its last committed row, so a
-- retried write of the same batch conflicts on (job_id, seq) and is a no-op instead of
-- billing a period twice (the unique key is (job_id, seq, period_start) since usage is
-- partitioned by month, migration 0015; its trigger usage_dedupe drops a row whose
-- (job_id, seq) is in another month). A row of an attempt that has its closing row by now is dropped:
-- no period may follow the row that closed its attempt (the attempt was closed by
-- expire_nodes while this node was away, or a paused agent resumed late).
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
WHERE NOT EXISTS (SELECT 1 FROM scheduler.usage f
                  WHERE f.job_id = r.job_id AND f.attempt = r.attempt AND f.final)
ON CONFLICT DO NOTHING;

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
-- The rows a billing window holds: a row belongs to the window in which its period ends,
-- unless it arrived late for a closed month (0018: its month is closed and that month's
-- statement does not cover it), when billing_late_usage bills it in a later month instead.
-- With what the job reserved (cores, memory), the row's wall time in exact seconds and the
-- job's labels (as jsonb prints them: the same text every time).
SELECT u.job_id, u.seq, j.name AS job_name, u.tenant, u.period_end, u.cpu_seconds,
       u.memory_byte_seconds, u.io_read_bytes, u.io_write_bytes,
       j.cpu AS cpu_reserved, j.memory_bytes AS memory_reserved_bytes,
       extract(epoch FROM u.period_end - u.period_start) AS wall_seconds,
       j.labels::text AS labels
FROM scheduler.usage u
JOIN scheduler.jobs j ON j.id = u.job_id
WHERE u.period_end >= $1 AND u.period_end < $2
  AND ($3::text IS NULL OR u.tenant = $3)
  AND (NOT EXISTS (SELECT 1 FROM scheduler.billing_periods p
                   WHERE p.period = date_trunc('month', u.period_end AT TIME ZONE 'UTC')::date)
       OR EXISTS (SELECT 1 FROM scheduler.statement_usage su
                  WHERE su.job_id = u.job_id AND u.seq <@ su.seqs
                    AND su.period = date_trunc('month', u.period_end AT TIME ZONE 'UTC')::date))
ORDER BY u.job_id, u.seq;

-- name: billing_late_usage
-- Rows that arrived late for a closed month: their period ends in [$1, $2) (the closed
-- months), their month's statement does not cover them. billed_period: the later statement
-- that sealed them, NULL while none has (the first open month bills them).
SELECT u.job_id, u.seq, j.name AS job_name, u.tenant, u.period_end, u.cpu_seconds,
       u.memory_byte_seconds, u.io_read_bytes, u.io_write_bytes,
       j.cpu AS cpu_reserved, j.memory_bytes AS memory_reserved_bytes,
       extract(epoch FROM u.period_end - u.period_start) AS wall_seconds,
       j.labels::text AS labels,
       (SELECT su.period FROM scheduler.statement_usage su
        WHERE su.job_id = u.job_id AND u.seq <@ su.seqs
        ORDER BY su.period LIMIT 1) AS billed_period
FROM scheduler.usage u
JOIN scheduler.jobs j ON j.id = u.job_id
WHERE u.period_end >= $1 AND u.period_end < $2
  AND ($3::text IS NULL OR u.tenant = $3)
  AND NOT EXISTS (SELECT 1 FROM scheduler.statement_usage su
                  WHERE su.job_id = u.job_id AND u.seq <@ su.seqs
                    AND su.period = date_trunc('month', u.period_end AT TIME ZONE 'UTC')::date)
ORDER BY u.job_id, u.seq;

-- name: billing_closed_range
-- The first and the last closed month (NULL, NULL: none closed yet).
SELECT min(period) AS first, max(period) AS last FROM scheduler.billing_periods;

-- name: billing_lock_periods
-- One close at a time (held to the end of the transaction); exports and verify still read.
LOCK TABLE scheduler.billing_periods IN EXCLUSIVE MODE;

-- name: billing_close_period
INSERT INTO scheduler.billing_periods (period) VALUES ($1) RETURNING closed_at;

-- name: billing_add_statement
INSERT INTO scheduler.statements
    (period, tenant, body, sha256, totals, lines, usage_rows, late_rows)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8)
RETURNING id;

-- name: billing_add_statement_usage
-- The usage rows statement $1 priced: per job, its seqs as one multirange.
INSERT INTO scheduler.statement_usage (statement_id, period, tenant, job_id, seqs)
SELECT $1, s.period, $2, c.job_id, range_agg(int4range(c.seq, c.seq, '[]'))
FROM unnest($3::bigint[], $4::int[]) AS c (job_id, seq)
JOIN scheduler.statements s ON s.id = $1
GROUP BY s.period, c.job_id;

-- name: billing_statements
-- Closed statements, oldest first; $1: one month only, $2: one tenant only.
SELECT s.id, s.period, s.tenant, s.body, s.sha256, s.totals::text AS totals, s.lines,
       s.usage_rows, s.late_rows, p.closed_at, p.closed_by
FROM scheduler.statements s
JOIN scheduler.billing_periods p ON p.period = s.period
WHERE ($1::date IS NULL OR s.period = $1) AND ($2::text IS NULL OR s.tenant = $2)
ORDER BY s.period, s.tenant;

-- name: billing_statement_rows
-- The usage rows statement $1 covers, as they are now; `period` is the month of the rows'
-- period end (a row of an earlier month is late usage the statement billed).
SELECT u.job_id, u.seq, j.name AS job_name, u.tenant, u.period_end, u.cpu_seconds,
       u.memory_byte_seconds, u.io_read_bytes, u.io_write_bytes,
       j.cpu AS cpu_reserved, j.memory_bytes AS memory_reserved_bytes,
       extract(epoch FROM u.period_end - u.period_start) AS wall_seconds,
       j.labels::text AS labels
FROM scheduler.statement_usage su
JOIN scheduler.usage u ON u.job_id = su.job_id AND u.seq <@ su.seqs
JOIN scheduler.jobs j ON j.id = u.job_id
WHERE su.statement_id = $1
ORDER BY u.job_id, u.seq;

-- name: billing_statement_coverage
-- How many usage rows statement $1 recorded as covered (each seq of each multirange), in
-- coverage rows that name its month (the exports go by that month).
SELECT COALESCE(sum(upper(r) - lower(r)), 0)::bigint
FROM scheduler.statement_usage su
JOIN scheduler.statements s ON s.id = su.statement_id AND s.period = su.period,
     unnest(su.seqs) AS r
WHERE su.statement_id = $1;

-- name: billing_rates
-- Every rate; infinite validity bounds come back as NULL.
SELECT id, resource, tenant, price, currency,
       CASE WHEN isfinite(valid_from) THEN valid_from END AS valid_from,
       CASE WHEN isfinite(valid_to) THEN valid_to END AS valid_to
FROM scheduler.rates
ORDER BY id;

-- name: check_jobs
-- Finished jobs of a window (finished_at in [$1, $2)) with their totals, for reconciliation;
-- and, in every window, finished jobs without an end time (never written so by the agent).
SELECT id, tenant, state, attempts, cpu_seconds, memory_peak_bytes, io_read_bytes,
       io_write_bytes, finished_at
FROM scheduler.jobs
WHERE state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')
  AND ((finished_at >= $1 AND finished_at < $2) OR finished_at IS NULL)
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
-- CPU billed on node $1 per tenant for periods since $2 (the host's boot: older cgroups are gone),
-- and how many attempts (each its own cgroup, its counter truncated on its own) it came from.
SELECT tenant, sum(cpu_seconds) AS cpu_seconds, count(DISTINCT (job_id, attempt)) AS attempts
FROM scheduler.usage
WHERE node = $1 AND period_start >= $2
GROUP BY tenant;

-- name: check_tenants
SELECT name, parent FROM scheduler.tenants ORDER BY name;

-- name: billing_tenant_exists
SELECT EXISTS (SELECT 1 FROM scheduler.tenants WHERE name = $1);

-- name: node_lock
-- Serialises agents registering one node name (held to the end of the transaction): the
-- name's row in scheduler.node_locks, made or locked by the upsert. A row lock, not an
-- advisory one, so that no tenant role can take it.
INSERT INTO scheduler.node_locks (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name;

-- name: get_node
-- The node's row, and whether its lease still runs (by the database's clock).
SELECT *, lease_expires_at > now() AS lease_live FROM scheduler.nodes WHERE name = $1;

-- name: register_node
-- Take node $1 for a lease of $2 seconds: a new row at epoch 1, or the next epoch.
INSERT INTO scheduler.nodes AS n
    (name, epoch, state, lease_expires_at, started_at, heartbeat_at, version, cgroup_driver,
     cpu, memory_bytes, boot_id, pid, labels)
VALUES ($1, 1, 'up', now() + make_interval(secs => $2), now(), now(), $3, $4, $5, $6, $7, $8,
        $9::jsonb)
ON CONFLICT (name) DO UPDATE
SET epoch = n.epoch + 1, state = 'up', lease_expires_at = EXCLUDED.lease_expires_at,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at,
    version = EXCLUDED.version, cgroup_driver = EXCLUDED.cgroup_driver, cpu = EXCLUDED.cpu,
    memory_bytes = EXCLUDED.memory_bytes, boot_id = EXCLUDED.boot_id, pid = EXCLUDED.pid,
    -- The labels are this agent's configuration; drained stays as the operator left it.
    labels = EXCLUDED.labels
RETURNING epoch;

-- name: adopt_node_jobs
-- Attempts still recorded on node $1 (nobody marked it down) continue under its new epoch $2.
UPDATE scheduler.jobs SET node_epoch = $2
WHERE node = $1 AND state IN ('running', 'frozen');

-- name: renew_lease
-- The heartbeat: extend the lease of node $1 held at epoch $2 by $3 seconds. No row: lost.
UPDATE scheduler.nodes
SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $3)
WHERE name = $1 AND epoch = $2 AND state = 'up'
RETURNING lease_expires_at;

-- name: set_node_drained
-- Drain (true) or undrain node $1: a drained node claims nothing new (scheduler.claim_jobs).
UPDATE scheduler.nodes SET drained = $2 WHERE name = $1
RETURNING name, state, drained, labels;

-- name: forget_node
-- Remove a node gone for good (down: its jobs were requeued or lost when it went down), so
-- that queued jobs only it could take fail as unfit instead of waiting for it.
DELETE FROM scheduler.nodes n WHERE n.name = $1 AND n.state = 'down'
  AND NOT EXISTS (SELECT 1 FROM scheduler.jobs j
                  WHERE j.node = n.name AND j.state IN ('running', 'frozen'))
RETURNING n.name;

-- name: release_node
-- A stopping agent no longer holds the node (its jobs keep the lease until it expires).
UPDATE scheduler.nodes SET pid = NULL WHERE name = $1 AND epoch = $2;

-- name: expire_nodes
-- Mark down every node whose lease expired more than $1 seconds ago, and end its attempts:
-- requeued when attempts remain, else lost (cancelled if its user cancelled it). SKIP LOCKED: one agent handles each node. Each
-- ended attempt gets its closing usage row (zero beyond what was billed): the rows already
-- committed stay, and the unique final row per attempt keeps the old node from adding one.
WITH expired AS (
    SELECT name, epoch, lease_expires_at FROM scheduler.nodes
    WHERE state = 'up' AND lease_expires_at < now() - make_interval(secs => $1)
    FOR UPDATE SKIP LOCKED
),
down AS (
    UPDATE scheduler.nodes n SET state = 'down', pid = NULL
    FROM expired e WHERE n.name = e.name
    RETURNING n.name, n.epoch, e.lease_expires_at
),
marks AS (
    SELECT j.id, d.name AS node, d.epoch, d.lease_expires_at,
           j.attempts < j.max_attempts AND j.desired_state <> 'cancelled' AS requeue,
           j.desired_state = 'cancelled' AS cancelled,
           COALESCE(max(u.seq), 0) AS seq,
           COALESCE(max(u.period_end) FILTER (WHERE u.attempt = j.attempts), j.started_at)
               AS period_end,
           COALESCE(sum(u.cpu_seconds) FILTER (WHERE u.attempt = j.attempts), 0) AS cpu,
           COALESCE(max(u.memory_peak_bytes) FILTER (WHERE u.attempt = j.attempts), 0) AS peak,
           COALESCE(sum(u.io_read_bytes) FILTER (WHERE u.attempt = j.attempts), 0) AS io_r,
           COALESCE(sum(u.io_write_bytes) FILTER (WHERE u.attempt = j.attempts), 0) AS io_w
    FROM scheduler.jobs j
    JOIN down d ON d.name = j.node
    LEFT JOIN scheduler.usage u ON u.job_id = j.id
    WHERE j.state IN ('running', 'frozen')
    GROUP BY j.id, d.name, d.epoch, d.lease_expires_at
),
ended AS (
    UPDATE scheduler.jobs j
    -- A job its user cancelled meanwhile ends cancelled, not requeued.
    SET state = CASE WHEN m.requeue THEN 'queued' WHEN m.cancelled THEN 'cancelled'
                     ELSE 'lost' END,
        node = CASE WHEN m.requeue THEN NULL ELSE j.node END,
        finished_at = CASE WHEN m.requeue THEN NULL ELSE clock_timestamp() END,
        run_at = CASE WHEN m.requeue THEN now() ELSE j.run_at END,
        error = format('node %s (epoch %s) stopped renewing its lease, which expired at %s;'
                       ' its attempt %s was lost', m.node, m.epoch, m.lease_expires_at,
                       j.attempts),
        cpu_seconds = m.cpu, memory_peak_bytes = m.peak,
        io_read_bytes = m.io_r, io_write_bytes = m.io_w
    FROM marks m
    WHERE j.id = m.id AND j.state IN ('running', 'frozen')
    RETURNING j.id, j.tenant, j.attempts, j.state, m.node, m.seq, m.period_end, m.peak
),
closing AS (
    INSERT INTO scheduler.usage
        (job_id, seq, attempt, tenant, node, period_start, period_end, cpu_seconds,
         memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, final)
    SELECT e.id, e.seq + 1, e.attempts, e.tenant, e.node, e.period_end, e.period_end, 0, 0,
           e.peak, 0, 0, true
    FROM ended e
    ON CONFLICT DO NOTHING
)
SELECT d.name AS node, d.epoch, e.id AS job_id, e.tenant, e.attempts, e.state
FROM down d LEFT JOIN ended e ON e.node = d.name
ORDER BY d.name, e.id;

-- name: list_nodes
-- Every node with its lease and load: running and frozen jobs and the sum of their requests.
SELECT n.name, n.state, n.epoch, n.lease_expires_at, n.heartbeat_at, n.started_at,
       n.version, n.cgroup_driver, n.cpu, n.memory_bytes, n.boot_id, n.pid, n.labels,
       n.drained,
       GREATEST(extract(epoch FROM n.lease_expires_at - now()), 0)::float8 AS lease_left_seconds,
       l.jobs, l.cpu_requested, l.memory_requested
FROM scheduler.nodes n
CROSS JOIN LATERAL (
    SELECT count(*) AS jobs, COALESCE(sum(j.cpu), 0) AS cpu_requested,
           COALESCE(sum(j.memory_bytes), 0)::bigint AS memory_requested
    FROM scheduler.jobs j WHERE j.node = n.name AND j.state IN ('running', 'frozen')
) l
ORDER BY n.name;

-- name: unplanned_schedules
-- Enabled schedules no agent has planned yet (new, resumed or changed through SQL).
SELECT tenant, name, cron, timezone FROM scheduler.schedules
WHERE enabled AND next_run_at IS NULL
ORDER BY tenant, name
LIMIT $1;

-- name: plan_schedule
-- The first due time of a schedule, unless its expression changed since it was read.
UPDATE scheduler.schedules SET next_run_at = $5
WHERE tenant = $1 AND name = $2 AND cron = $3 AND timezone = $4
  AND enabled AND next_run_at IS NULL;

-- name: disable_schedule
-- A schedule that cannot fire (an expression croniter refuses, a template the database no
-- longer accepts): off, with the reason ($5), unless its expression changed meanwhile.
UPDATE scheduler.schedules SET enabled = false, next_run_at = NULL, error = $5
WHERE tenant = $1 AND name = $2 AND cron = $3 AND timezone = $4;

-- name: due_schedules
-- The schedules due at $1, locked for this agent's transaction: another agent skips them
-- (SKIP LOCKED), and once this one commits it finds next_run_at advanced (FOR UPDATE reads the
-- newest row version again), so each due time fires once.
SELECT tenant, name, cron, timezone, job, overlap, next_run_at FROM scheduler.schedules
WHERE enabled AND next_run_at <= $1
ORDER BY next_run_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: schedule_unfinished_job
-- The schedule's job that has not ended yet, if any (overlap = 'skip').
SELECT id FROM scheduler.jobs
WHERE tenant = $1 AND schedule = $2 AND state IN ('queued', 'running', 'frozen')
LIMIT 1;

-- name: schedule_insert_job
-- The job of one due time ($4), from the template ($3), as the jobs' own rules check it.
SELECT scheduler.schedule_job_insert($1, $2, $3, $4);

-- name: schedule_fired
-- Due time $3 handled by job $5 (NULL: the job of that due time existed already).
UPDATE scheduler.schedules
SET last_run_at = $3, next_run_at = $4, last_job_id = COALESCE($5, last_job_id)
WHERE tenant = $1 AND name = $2;

-- name: schedule_skipped
UPDATE scheduler.schedules
SET last_run_at = $3, next_run_at = $4, skipped_runs = skipped_runs + 1, last_skipped_at = $3
WHERE tenant = $1 AND name = $2;

-- name: next_schedule_due
SELECT min(next_run_at) FROM scheduler.schedules WHERE enabled;

-- name: insert_schedule
INSERT INTO scheduler.schedules (tenant, name, cron, timezone, job, overlap, enabled,
                                 next_run_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: list_schedules
SELECT * FROM scheduler.schedules
WHERE ($1::text IS NULL OR tenant = $1)
  AND ($2::text[] IS NULL OR tenant = ANY ($2))
ORDER BY tenant, name
LIMIT $3;

-- name: get_schedule
SELECT * FROM scheduler.schedules WHERE tenant = $1 AND name = $2;

-- name: set_schedule_enabled
-- Pause, or resume planned from now ($4): times missed while paused are not made up.
UPDATE scheduler.schedules
SET enabled = $3, next_run_at = CASE WHEN NOT $3 THEN NULL WHEN enabled THEN next_run_at ELSE $4 END
WHERE tenant = $1 AND name = $2
RETURNING *;

-- name: delete_schedule
DELETE FROM scheduler.schedules WHERE tenant = $1 AND name = $2 RETURNING *;
-- name: end_tenant_blockers
-- Tenant sessions (scheduler.is_tenant_role) that have blocked a session named $1 (this
-- agent's) for more than $2 seconds, ended (agent/blockers.py).
SELECT x.pid, x.role, pg_terminate_backend(x.pid) AS ended
FROM (
    SELECT DISTINCT b.pid, s.usename::text AS role
    FROM pg_stat_activity a
    CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS b (pid)
    JOIN pg_stat_activity s ON s.pid = b.pid
    WHERE a.application_name = $1 AND a.wait_event_type = 'Lock'
      AND a.query_start < clock_timestamp() - make_interval(secs => $2)
      AND scheduler.is_tenant_role(s.usename)
) x;
-- name: database_identity
-- Who this database is, for the runtime records of its attempts (migration 0011): its
-- random id and its oid (a copy or restore into a new database gets a new one).
SELECT i.id::text || '.' || d.oid::text
FROM scheduler.instance i, pg_database d
WHERE d.datname = current_database();

-- name: node_billed_totals
-- What node $1 billed each tenant, all time: where the tenant counters on /metrics start
-- when the agent does (accounting/ledger.py).
SELECT tenant, sum(cpu_seconds) AS cpu_seconds, sum(io_read_bytes) AS io_read_bytes,
       sum(io_write_bytes) AS io_write_bytes
FROM scheduler.usage
WHERE node = $1
GROUP BY tenant;

-- name: set_tenant_budget
-- The operator sets (or with a NULL amount clears) a tenant's budget (tenant callers are
-- refused by the trigger tenants_budget_operator_only, 0017).
UPDATE scheduler.tenants
SET budget = $2, budget_currency = $3, budget_period = $4, budget_action = $5
WHERE name = $1
RETURNING name, budget, budget_currency, budget_period, budget_action;

-- name: budget_status
-- Every budget (or tenant $1's) with its subtree's spend this period.
SELECT tenant, budget, currency, period, action, spend, spend >= budget AS reached
FROM scheduler.budget_status
WHERE $1::text IS NULL OR tenant = $1
ORDER BY tenant;

-- name: notify_node_undrained
-- An undrained node's dispatcher may claim at once rather than at its next poll.
SELECT pg_notify('scheduler_jobs', 'queued');
-- name: array_members
-- (This block and the ones after it to job_page_usage: the API and CLI side's repositories,
-- scheduler/repos/, issue 21.) Every member of array $1 of tenant $2, in index order (an
-- idempotent array's replay).
SELECT * FROM scheduler.jobs WHERE array_id = $1 AND tenant = $2 ORDER BY array_index;

-- name: claim_idempotency_key
-- Take (tenant $1, key $2) for a request whose digest is $3; no row if it was taken before
-- (a concurrent claim of the same key waits here on the unique index until the first commits).
INSERT INTO scheduler.idempotency_keys (tenant, key, request_hash)
VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true;

-- name: set_idempotency_job
-- Name job $3 as what (tenant $1, key $2) made.
UPDATE scheduler.idempotency_keys SET job_id = $3 WHERE tenant = $1 AND key = $2;

-- name: get_idempotency_key
SELECT request_hash, job_id FROM scheduler.idempotency_keys WHERE tenant = $1 AND key = $2;

-- name: job_usage
-- Every usage row of job $1, oldest first.
SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq;

-- name: job_state
SELECT state FROM scheduler.jobs WHERE id = $1;

-- name: job_progress
-- What a follower of job $1's output waits on: has an attempt started, and where.
SELECT state, attempts, node FROM scheduler.jobs WHERE id = $1;

-- name: list_tenant_rows
-- Every tenant's row (no job counts: what GET /v1/tenants answers).
SELECT * FROM scheduler.tenants ORDER BY name;

-- name: tenant_exists
SELECT true FROM scheduler.tenants WHERE name = $1;

-- name: act_as_tenant
-- For the rest of the transaction the database treats the request as tenant $1's (its
-- checks of a child's limits, operator holds), not as the API session's (migrations/0010).
SELECT set_config('scheduler.acting_tenant', $1, true);

-- name: token_principal
-- The tenant of live token hash $1 and the names of its subtree (tenant NULL: no such token).
WITH RECURSIVE owner AS (
    SELECT tenant FROM scheduler.api_tokens
    WHERE token_hash = $1 AND revoked_at IS NULL
), subtree AS (
    SELECT name FROM scheduler.tenants WHERE name = (SELECT tenant FROM owner)
    UNION
    SELECT t.name FROM scheduler.tenants t JOIN subtree s ON t.parent = s.name
)
SELECT (SELECT tenant FROM owner) AS tenant, array_agg(name) AS tenants FROM subtree;

-- name: insert_api_token
INSERT INTO scheduler.api_tokens (tenant, token_hash, description) VALUES ($1, $2, $3)
RETURNING id;

-- name: revoke_api_token
UPDATE scheduler.api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL;

-- name: role_exists
SELECT true FROM pg_roles WHERE rolname = $1;

-- name: quote_literal
-- $1 as an SQL literal, for DDL that takes no bind parameters (a role's password).
SELECT quote_literal($1);

-- name: map_tenant_role
-- Role $1 speaks for tenant $2 (the row-level security policies read this map).
INSERT INTO scheduler.tenant_roles (role_name, tenant) VALUES ($1, $2)
ON CONFLICT (role_name) DO UPDATE SET tenant = EXCLUDED.tenant;

-- name: unmap_tenant_role
DELETE FROM scheduler.tenant_roles WHERE role_name = $1 RETURNING true;

-- name: overview_queued
-- The overview's queue: queued jobs of tenants $1 (NULL: all), first to run first, at most $2.
SELECT id, tenant, name, priority, run_at, submitted_at, desired_state
FROM scheduler.jobs WHERE state = 'queued'
AND ($1::text[] IS NULL OR tenant = ANY($1))
ORDER BY priority DESC, submitted_at LIMIT $2;

-- name: overview_running
-- The overview's running jobs of tenants $1 (NULL: all) with their latest usage period,
-- newest first, at most $2.
SELECT j.id, j.tenant, j.name, j.state, j.node, j.cpu, j.memory_bytes,
       j.started_at, u.period_start, u.period_end, u.cpu_seconds,
       u.memory_byte_seconds, u.memory_peak_bytes
FROM scheduler.jobs j LEFT JOIN LATERAL (
    SELECT * FROM scheduler.usage s WHERE s.job_id = j.id AND s.attempt = j.attempts
    ORDER BY s.seq DESC LIMIT 1) u ON true
WHERE j.state IN ('running', 'frozen')
AND ($1::text[] IS NULL OR j.tenant = ANY($1))
ORDER BY j.id DESC LIMIT $2;

-- name: overview_failures
-- The overview's recent failures of tenants $1 (NULL: all), latest first, at most $2.
SELECT id, tenant, name, state, exit_code, signal, error, finished_at
FROM scheduler.jobs WHERE state IN ('failed', 'timed_out', 'lost')
AND ($1::text[] IS NULL OR tenant = ANY($1))
ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT $2;

-- name: job_page_usage
-- Job $1's latest $2 usage rows, newest first (the job page).
SELECT seq, attempt, node, period_start, period_end, cpu_seconds,
       memory_peak_bytes, io_read_bytes, io_write_bytes, final
FROM scheduler.usage WHERE job_id = $1 ORDER BY seq DESC LIMIT $2;
-- name: notify_jobs_done
-- Capacity was freed (jobs ended or failed): waiting dispatchers claim again.
SELECT pg_notify('scheduler_done', '');

-- name: notify_jobs_queued
-- Jobs were put back in the queue: every dispatcher may claim them now.
SELECT pg_notify('scheduler_jobs', 'queued');

-- name: notify_jobs_requeued
-- A down node's attempts were requeued or lost: both claimable jobs and freed capacity.
SELECT pg_notify('scheduler_jobs', 'queued'), pg_notify('scheduler_done', '');

-- name: usage_partition_count
-- How many partitions scheduler.usage has (the retention sweep's figure).
SELECT count(*) FROM pg_inherits WHERE inhparent = 'scheduler.usage'::regclass;

-- name: billing_caller_is_tenant
SELECT scheduler.caller_is_tenant();

-- name: billing_now
-- The database's clock (the transaction's start): what "a month is over" is judged by.
SELECT now();

-- name: billing_period_closed
SELECT closed_at, closed_by FROM scheduler.billing_periods WHERE period = $1;
