-- The claim: one statement that picks, orders and starts the jobs a node may run now.
-- This file is the function's one place. The migrator applies it after the numbered
-- migrations whenever its text changed (scheduler/db/migrate.py, table
-- scheduler.schema_definitions): change the claim here, in place, and the diff shows what
-- changed. Its earlier texts are in 0008, 0010, 0014, 0016 and 0017 (each a whole copy, the
-- reason this file exists); "0020" marks what changed since 0017. It may refer to anything
-- the numbered migrations create.
CREATE OR REPLACE FUNCTION scheduler.claim_jobs(
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
DECLARE
    -- 0016: the claiming node's labels and drain (no row: no labels, not drained).
    node_labels jsonb := '{}';
    node_drained boolean := false;
    -- 0020: whether this claim writes pending reasons (see below).
    note_reasons boolean;
BEGIN
    -- Serialises claims of all nodes (held to the end of the caller's transaction), so that
    -- tenant limits summed over nodes see every committed claim. The queries.sql block
    -- claim_lock takes the same row first in the unfit check's transaction. Only the owner
    -- can lock this row: a tenant role gets "permission denied" here.
    PERFORM 1 FROM scheduler.claim_lock FOR UPDATE;
    -- 0020: the claim writes the reasons of the heads it does not start at most once a second
    -- (fleet-wide, under the lock just taken). Written on every claim, nearly every job got
    -- a row update ('capacity') in the few milliseconds between reaching a tenant's head and
    -- starting: a whole UPDATE with its triggers per job on the launch path.
    UPDATE scheduler.claim_lock SET reasons_noted_at = clock_timestamp()
    WHERE reasons_noted_at <= clock_timestamp() - interval '1 second'
    RETURNING true INTO note_reasons;
    note_reasons := COALESCE(note_reasons, false);
    -- The outcome columns below are the agent's (jobs_agent_columns): this transaction writes
    -- them as the agent.
    PERFORM set_config('scheduler.writer', 'agent', true);
    -- 0016: a drained node claims nothing new.
    SELECT n.labels, n.drained INTO node_labels, node_drained
    FROM scheduler.nodes n WHERE n.name = node_name;
    IF node_drained THEN
        RETURN;
    END IF;
    node_labels := COALESCE(node_labels, '{}');
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
    -- A frozen tenant holds the queued jobs of its whole subtree (so does a reached budget;
    -- why: 1 operator hold, 2 tenant freeze, 3 budget).
    held AS (
        SELECT l.tenant,
               min(CASE WHEN t.operator_hold THEN 1 WHEN t.frozen THEN 2 ELSE 3 END) AS why
        FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
        WHERE t.frozen OR t.name IN (SELECT b.tenant FROM scheduler.budget_reached b)
        GROUP BY l.tenant
    ),
    -- Each tenant's own use: decayed cpu (0007), decayed to now, and its running cores.
    own AS (
        SELECT COALESCE(r.tenant, run.tenant) AS tenant,
               COALESCE(r.cpu_seconds
                        * scheduler.fair_share_decay(extract(epoch FROM now() - r.as_of)), 0)
               + allocation_seconds * COALESCE(run.cpu, 0) AS used
        FROM scheduler.tenant_recent_cpu r
        FULL JOIN (SELECT tenant, sum(cpu) AS cpu FROM active GROUP BY tenant) run
            ON run.tenant = r.tenant
    ),
    -- Only the head of each tenant's queue can be claimed now (in priority, then age, order):
    -- a top-N per tenant through jobs_queued_tenant_idx keeps the cost independent of how
    -- many jobs a flooding tenant has queued.
    heads AS (
        SELECT j.*
        FROM scheduler.tenants t
        CROSS JOIN LATERAL (
            -- 0016: only jobs whose constraints this node's labels satisfy, found among at
            -- most 1024 more of the tenant's queue than before (a bound on the rows read
            -- past jobs meant for other nodes, so the cost stays flat in queue depth).
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority, j.pending_reason
            FROM (
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority, j.pending_reason,
                   j.constraints
            FROM scheduler.jobs j
            WHERE j.tenant = t.name AND j.state = 'queued'
              -- 0016: a gated array member waits for its turn (jobs_queued_tenant_idx).
              AND NOT j.array_waiting
              -- 0014: every job it depends on has succeeded.
              AND j.deps_waiting = 0
              -- A job held frozen is not started until thawed.
              AND j.desired_state = 'running'
              AND j.run_at <= now()
            ORDER BY j.priority DESC, j.id
            LIMIT want + 8 + 1024
            ) j
            WHERE j.constraints <@ node_labels
            LIMIT want + 8
        ) j
        WHERE t.name NOT IN (SELECT tenant FROM held)
    ),
    -- Each job on its own must fit what is free now, on the node and up its chain; with the
    -- cores of its tenant's fitting jobs ahead of it (itself included).
    fit AS (
        SELECT h.id, h.tenant, h.cpu, h.memory_bytes, h.priority,
               sum(h.cpu) OVER (PARTITION BY h.tenant ORDER BY h.priority DESC, h.id) AS ahead
        FROM heads h CROSS JOIN node_free nf
        WHERE h.cpu <= nf.cpu AND h.memory_bytes <= nf.mem
          AND NOT EXISTS (
              SELECT 1 FROM lineage l JOIN headroom h2 ON h2.name = l.ancestor
              WHERE l.tenant = h.tenant
                AND (h2.jobs < 1 OR h.cpu > h2.cpu OR h.memory_bytes > h2.mem))
    ),
    -- Tenants whose subtree runs something or has a job that could start: the siblings
    -- among which a share is divided.
    busy AS (
        SELECT DISTINCT l.ancestor AS name
        FROM lineage l
        WHERE l.tenant IN (SELECT f.tenant FROM fit f UNION SELECT a.tenant FROM active a)
    ),
    part AS (
        SELECT t.name,
               t.weight::float8 / sum(t.weight) OVER (PARTITION BY t.parent) AS part
        FROM scheduler.tenants t JOIN busy b ON b.name = t.name
    ),
    -- Each busy tenant's share (the product of its parts up the chain) and its subtree's
    -- use. Keys are float8: they only order jobs, and numeric arithmetic on the shares'
    -- long fractions made the claim several times slower with a few hundred tenants.
    subtree AS (
        SELECT sh.name, sh.share, COALESCE(u.used, 0) AS used
        FROM (SELECT l.tenant AS name, exp(sum(ln(p.part))) AS share
              FROM lineage l JOIN part p ON p.name = l.ancestor
              WHERE l.tenant IN (SELECT b.name FROM busy b)
              GROUP BY l.tenant) sh
        LEFT JOIN (SELECT l.ancestor, sum(o.used)::float8 AS used
                   FROM own o JOIN lineage l ON l.tenant = o.tenant
                   GROUP BY l.ancestor) u ON u.ancestor = sh.name
    ),
    tenant_keyed AS (
        SELECT f.*,
               (s.used + allocation_seconds::float8 * f.ahead::float8) / s.share AS tenant_key
        FROM fit f JOIN subtree s ON s.name = f.tenant
    ),
    -- Per subtree the job belongs to: that subtree's key for it. A tenant without children
    -- is its own subtree, whose key is the tenant key: only ancestors, and tenants with
    -- children, are computed here (none at all when every tenant is a root).
    level_keys AS (
        SELECT k.id,
               (s.used + allocation_seconds::float8
                   * sum(k.cpu::float8) OVER (PARTITION BY l.ancestor ORDER BY k.tenant_key, k.id))
               / s.share AS key
        FROM tenant_keyed k
        JOIN lineage l ON l.tenant = k.tenant
        JOIN subtree s ON s.name = l.ancestor
        WHERE l.depth > 0
           OR l.ancestor IN (SELECT c.parent FROM scheduler.tenants c WHERE c.parent IS NOT NULL)
    ),
    queued AS (
        SELECT k.id, k.tenant, k.cpu, k.memory_bytes, k.priority,
               greatest(k.tenant_key, m.key) AS share
        FROM tenant_keyed k
        LEFT JOIN (SELECT lk.id, max(lk.key) AS key FROM level_keys lk GROUP BY lk.id) m
            ON m.id = k.id
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
    -- MATERIALIZED (0020): referenced once, in a correlated NOT EXISTS, the CTE was inlined
    -- and its window recomputed for every candidate (quadratic: 11 ms at 72 candidates).
    chain_totals AS MATERIALIZED (
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
    -- Why the heads examined and not admitted wait (a held tenant's heads: why it is held).
    -- A new gate's reason is one WHEN here, in the order the gates are checked.
    waiting AS (
        SELECT h.id, h.pending_reason AS was,
               CASE
                   WHEN h.cpu > nf.cpu OR h.memory_bytes > nf.mem THEN 'capacity'
                   WHEN EXISTS (SELECT 1 FROM lineage l JOIN headroom h2 ON h2.name = l.ancestor
                                WHERE l.tenant = h.tenant AND h2.jobs < 1)
                       THEN 'max_running_jobs'
                   WHEN h.id NOT IN (SELECT f.id FROM fit f) THEN 'tenant_limit'
                   WHEN h.id IN (SELECT o.id FROM ordered o)
                        AND h.id NOT IN (SELECT c.id FROM chain_ok c) THEN 'tenant_limit'
                   ELSE 'capacity'
               END AS reason
        FROM heads h CROSS JOIN node_free nf
        WHERE h.id NOT IN (SELECT a.id FROM admitted a)
        UNION ALL
        SELECT j.id, j.pending_reason, (ARRAY['operator_hold', 'tenant_frozen', 'budget'])[hd.why]
        FROM held hd
        CROSS JOIN LATERAL (
            SELECT j.id, j.pending_reason FROM scheduler.jobs j
            WHERE j.tenant = hd.tenant AND j.state = 'queued'
              AND j.deps_waiting = 0 AND NOT j.array_waiting
              AND j.desired_state = 'running' AND j.run_at <= now()
            ORDER BY j.priority DESC, j.id
            LIMIT want + 8
        ) j
    ),
    -- Written only where it changed (steady state writes nothing); a row a user is updating
    -- now is left for the next claim (SKIP LOCKED: a tenant holding a row lock must not stall
    -- every claim). Only heads whose reason (read with the head) changes are looked up again,
    -- one row each (LATERAL): a plain join was planned as a hash join over every job (3 ms
    -- with 10,000 queued).
    noted AS (
        UPDATE scheduler.jobs j SET pending_reason = w.reason
        FROM waiting w
        CROSS JOIN LATERAL (
            SELECT j2.id FROM scheduler.jobs j2
            -- IS NOT DISTINCT FROM (0020), not =: the planner cannot prove the partial
            -- jobs_queued_run_at_idx from it, and took that index (every queued row, the id
            -- as a filter) over the primary key for each lookup.
            WHERE j2.id = w.id AND j2.state IS NOT DISTINCT FROM 'queued'
              AND j2.pending_reason IS DISTINCT FROM w.reason
            FOR UPDATE SKIP LOCKED
        ) l
        WHERE note_reasons AND w.reason IS DISTINCT FROM w.was AND j.id = l.id
    ),
    -- Driven by the few admitted ids (a join, not "id IN (...)": the planner turned that into
    -- a scan of every queued job, re-reading the admitted list for each; 3 ms with 300 queued).
    candidates AS (
        SELECT j.id
        FROM admitted a
        JOIN scheduler.jobs j ON j.id = a.id
        -- Re-checked on the locked row: a user may have frozen or cancelled it meanwhile.
        -- IS NOT DISTINCT FROM (0020): a primary-key lookup per admitted id (see noted).
        WHERE j.state IS NOT DISTINCT FROM 'queued' AND j.desired_state = 'running'
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
