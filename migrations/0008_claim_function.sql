-- The claim as one function: the agent's common claim (every NOTIFY) is then one statement and
-- one round trip, outside any explicit transaction, instead of BEGIN, the lock, the claim and
-- COMMIT. The queries.sql block claim_jobs calls it; the unfit check (once per poll interval)
-- calls it inside its own transaction, after failing the jobs that can never run.

-- Claim up to want runnable jobs for node node_name in one statement.
-- Order: fair share across tenants, then priority, then age. A job's share key is its
-- tenant's recent cpu-seconds (scheduler.tenant_recent_cpu, 0007: each usage row decayed with
-- the half-life of scheduler.fair_share_half_life()) plus allocation_seconds for every core its tenant has running or would have with this job
-- and its tenant's earlier queued ones, divided by the tenant's weight: the tenant that used
-- least per unit of weight goes first, and one claim interleaves tenants instead of draining
-- one. Admission: this node's free capacity (node_cpu cores, node_memory_bytes: minus the
-- requests of its running and frozen attempts) and every limit up each job's tenant chain
-- (max_running_jobs, cpu_limit, memory_limit_bytes, summed over all nodes). Each claimed
-- attempt carries the node's lease epoch (lease_epoch).
--
-- VOLATILE (the default) matters: each statement of the function takes a fresh snapshot, so
-- the claim, which runs after the lock is granted, sees every claim committed before.
-- JIT is off: with a long queue the planner's estimates cross jit_above_cost, and compiling
-- the expressions (about 0.5 s on a small host) costs far more than running them.
-- The plan is made once per session and kept (force_generic_plan): with a thousand jobs queued
-- or more, Postgres's own choice was to plan the statement afresh on every call, and planning
-- took two thirds of the claim (2.4 ms a claim against 0.8 ms with the kept plan, measured
-- with 1,000 and 10,000 queued; no slower with 200 tenants and a claim of 64).
-- The parameter names match no column of the tables read (use_column below resolves a clash
-- to the column, which would silently ignore a parameter).
CREATE FUNCTION scheduler.claim_jobs(
    node_name text,
    want integer,
    node_cpu numeric,
    node_memory_bytes bigint,
    allocation_seconds numeric,
    lease_epoch bigint
) RETURNS TABLE (
    id bigint, tenant text, name text, argv text[], env jsonb, cwd text, cpu numeric,
    memory_bytes bigint, pids_max integer, timeout_seconds numeric, priority integer,
    max_attempts integer, attempts integer, desired_state text, submitted_at timestamptz,
    io_read_bps bigint, io_write_bps bigint, network boolean, image text, run_as text,
    usage_seq integer
)
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    -- Serialises claims of all nodes (held to the end of the caller's transaction), so that
    -- tenant limits summed over nodes see every committed claim. The same key as the
    -- queries.sql block claim_lock, which the unfit check takes first in its transaction.
    PERFORM pg_advisory_xact_lock(5918230770001);
    RETURN QUERY
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
        SELECT node_cpu - COALESCE(sum(cpu), 0) AS cpu,
               node_memory_bytes::numeric - COALESCE(sum(memory_bytes), 0) AS mem
        FROM active WHERE node = node_name
    ),
    -- What each tenant's limits leave free after its whole subtree's active jobs (NULL: no
    -- limit).
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
    -- Each tenant's decayed cpu use, kept by the usage inserts (0007), decayed to now.
    recent AS (
        SELECT r.tenant,
               r.cpu_seconds * scheduler.fair_share_decay(extract(epoch FROM now() - r.as_of))
                   AS used
        FROM scheduler.tenant_recent_cpu r
    ),
    running AS (SELECT tenant, sum(cpu) AS cpu FROM active GROUP BY tenant),
    -- Only the head of each tenant's queue can be claimed now (in priority, then age, order):
    -- a top-N per tenant through jobs_queued_tenant_idx keeps the cost independent of how
    -- many jobs a flooding tenant has queued.
    heads AS (
        SELECT j.*
        FROM scheduler.tenants t
        CROSS JOIN LATERAL (
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority
            FROM scheduler.jobs j
            WHERE j.tenant = t.name AND j.state = 'queued'
              -- A job held frozen is not started until thawed.
              AND j.desired_state = 'running'
              AND j.run_at <= now()
            ORDER BY j.priority DESC, j.id
            LIMIT want + 8
        ) j
        WHERE t.name NOT IN (SELECT tenant FROM held)
    ),
    queued AS (
        SELECT h.id, h.tenant, h.cpu, h.memory_bytes, h.priority,
               (COALESCE(r.used, 0)
                + allocation_seconds * (COALESCE(run.cpu, 0) + sum(h.cpu) OVER per_tenant))
                   / t.weight AS share
        FROM heads h
        JOIN scheduler.tenants t ON t.name = h.tenant
        LEFT JOIN recent r ON r.tenant = h.tenant
        LEFT JOIN running run ON run.tenant = h.tenant
        CROSS JOIN node_free nf
        -- Each job on its own must fit what is free now, on the node and up its chain.
        WHERE h.cpu <= nf.cpu AND h.memory_bytes <= nf.mem
          AND NOT EXISTS (
              SELECT 1 FROM lineage l JOIN headroom h2 ON h2.name = l.ancestor
              WHERE l.tenant = h.tenant
                AND (h2.jobs < 1 OR h.cpu > h2.cpu OR h.memory_bytes > h2.mem))
        WINDOW per_tenant AS (PARTITION BY h.tenant ORDER BY h.priority DESC, h.id)
    ),
    ordered AS (
        SELECT q.*, row_number() OVER (ORDER BY q.share, q.priority DESC, q.id) AS rank
        FROM queued q
        ORDER BY rank
        -- Enough candidates to fill a claim even when admission below skips some.
        LIMIT 4 * want + 16
    ),
    -- Greedy admission in that order: running totals per ancestor must stay within its
    -- headroom...
    chain_totals AS (
        SELECT o.rank, l.ancestor,
               count(*) OVER w AS jobs, sum(o.cpu) OVER w AS cpu,
               sum(o.memory_bytes) OVER w AS mem
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
        LIMIT want
    ),
    -- Driven by the few admitted ids (a join, not "id IN (...)": the planner turned that into
    -- a scan of every queued job, re-reading the admitted list for each; 3 ms with 300 queued).
    candidates AS (
        SELECT j.id
        FROM admitted a
        JOIN scheduler.jobs j ON j.id = a.id
        -- Re-checked on the locked row: a user may have frozen or cancelled it meanwhile.
        WHERE j.state = 'queued' AND j.desired_state = 'running'
        -- SKIP LOCKED: a row a user is updating right now is left for the next claim.
        FOR UPDATE OF j SKIP LOCKED
    )
    UPDATE scheduler.jobs j
    SET state = 'running',
        node = node_name,
        attempts = j.attempts + 1,
        -- The lease epoch this attempt runs under: a later epoch of the node fences it.
        node_epoch = lease_epoch,
        started_at = clock_timestamp(),
        exit_code = NULL, signal = NULL, error = NULL, oom_killed = false, finished_at = NULL
    FROM candidates c
    WHERE j.id = c.id
    RETURNING j.id, j.tenant, j.name, j.argv, j.env, j.cwd, j.cpu, j.memory_bytes, j.pids_max,
              j.timeout_seconds, j.priority, j.max_attempts, j.attempts, j.desired_state,
              j.submitted_at, j.io_read_bps, j.io_write_bps,
              -- runtime: the sandbox and root filesystem the job runs in
              j.network, j.image,
              (SELECT t.run_as FROM scheduler.tenants t WHERE t.name = j.tenant),
              -- A retried attempt numbers its billing rows after the job's earlier ones
              -- (closed before it was queued again): the sampler need not ask for them.
              CASE WHEN j.attempts > 1 THEN
                  (SELECT COALESCE(max(u.seq), 0) FROM scheduler.usage u
                   WHERE u.job_id = j.id)
              ELSE 0 END;
END
$$;

-- When the next delayed or backed-off job becomes runnable (queries.sql: next_run_at), asked
-- by the dispatcher before each sleep: a range on run_at instead of a walk over the whole
-- queue (1.25 ms with 10,000 jobs queued, 0.09 ms through this index).
CREATE INDEX jobs_queued_run_at_idx ON scheduler.jobs (run_at) WHERE state = 'queued';

-- The whole queue in priority order served the claim before it took a top-N per tenant
-- (0004); since then it only misled the planner: for a tenant's head it walked this index
-- over every other tenant's jobs (6,665 rows skipped per tenant with 10,000 queued), where
-- jobs_queued_tenant_idx reads the head alone. One index fewer to keep on every insert.
DROP INDEX scheduler.jobs_queued_idx;
