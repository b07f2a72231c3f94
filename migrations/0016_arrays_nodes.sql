-- Arrays and nodes of different sizes (issue 18 items 2 and 6): a job array's members and the
-- gate that caps how many of them run at once; node labels, job constraints and drain.
-- Replaces (CREATE OR REPLACE) scheduler.claim_jobs (0014: 0010 with the dependency gate,
-- kept here), scheduler.schedule_job_fields (0015's list plus constraints) and
-- scheduler.claimed_columns (0015's plus the array columns); replaces the index
-- jobs_queued_tenant_idx (0004).

------------------------------------------------------------------------------------------
-- Labels: what a node has and what a job asks for.
------------------------------------------------------------------------------------------
-- A label set is a JSON object of at most 32 string values; keys match
-- [A-Za-z0-9][A-Za-z0-9._-]{0,62} and values [A-Za-z0-9._-]{0,63} (the same rule as
-- SCHEDULER_NODE_LABELS, scheduler/labels.py). Bounded so that a hostile constraint can make
-- neither the claim's containment test nor the unfit check's reason expensive.
CREATE FUNCTION scheduler.label_set_valid(labels jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
    -- CASE, not AND: jsonb_each must never see an array or a scalar.
    SELECT CASE WHEN jsonb_typeof(labels) IS DISTINCT FROM 'object' THEN false ELSE
           (SELECT count(*) <= 32
                   AND COALESCE(bool_and(
                       e.key ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'
                       AND jsonb_typeof(e.value) = 'string'
                       AND (e.value #>> '{}') ~ '^[A-Za-z0-9._-]{0,63}$'), true)
            FROM jsonb_each(labels) e) END
$$;

ALTER TABLE scheduler.nodes
    -- SCHEDULER_NODE_LABELS of the agent that last registered the node.
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}',
    -- Drained by the operator (scheduler nodes drain): the node claims nothing new; its
    -- running jobs finish. Kept across the agent's restarts until undrained.
    ADD COLUMN drained boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT node_labels_valid CHECK (scheduler.label_set_valid(labels));

-- The labels a node must have for the job to run there (all of them, with these values).
ALTER TABLE scheduler.jobs
    ADD COLUMN constraints jsonb NOT NULL DEFAULT '{}',
    ADD CONSTRAINT job_constraints_valid CHECK (scheduler.label_set_valid(constraints));

------------------------------------------------------------------------------------------
-- Arrays.
------------------------------------------------------------------------------------------
-- Members of one submission share array_id (from the sequence below) and have their own
-- array_index (the job sees it as SCHEDULER_ARRAY_INDEX). array_waiting is the gate of
-- max_running: a member submitted beyond max_running starts gated and the claim skips it;
-- each time a member that was not gated ends for good, the trigger below ungates the next
-- gated member, in index order. The cap costs the claim nothing (the gate is in the queue
-- index's predicate) and a member's end one index probe.
ALTER TABLE scheduler.jobs
    ADD COLUMN array_id bigint,
    ADD COLUMN array_index integer,
    ADD COLUMN array_waiting boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT job_array_both CHECK ((array_id IS NULL) = (array_index IS NULL)),
    ADD CONSTRAINT job_array_index_range CHECK (array_index >= 0),
    ADD CONSTRAINT job_array_waiting_member CHECK (NOT array_waiting OR array_id IS NOT NULL);

CREATE SEQUENCE scheduler.job_array_ids AS bigint;
GRANT USAGE ON SEQUENCE scheduler.job_array_ids TO scheduler_tenant;

-- A tenant role may make arrays in SQL (docs/operations.md) and set constraints; it may lift
-- the gate of its own members (its own cap, on its own rows under row-level security).
GRANT INSERT (constraints, array_id, array_index, array_waiting)
    ON scheduler.jobs TO scheduler_tenant;
GRANT UPDATE (array_waiting) ON scheduler.jobs TO scheduler_tenant;

-- A whole array, for listing, cancel and freeze.
CREATE INDEX jobs_array_idx ON scheduler.jobs (array_id, array_index) WHERE array_id IS NOT NULL;
-- The next gated member of an array. The tenant is part of the key: another tenant's rows
-- inserted with the same array_id are never ungated by this array's members (nor these by
-- theirs).
CREATE INDEX jobs_array_gate_idx ON scheduler.jobs (array_id, tenant, array_index)
    WHERE array_waiting AND state = 'queued';

-- The claim's heads scan: gated members are not in it at all.
DROP INDEX scheduler.jobs_queued_tenant_idx;
CREATE INDEX jobs_queued_tenant_idx ON scheduler.jobs (tenant, priority DESC, id)
    WHERE state = 'queued' AND deps_waiting = 0 AND NOT array_waiting;

-- A member that was not gated ended for good (from queued, running or frozen: a retry, which
-- goes back to queued, keeps its place): the next gated member of its array may start. SKIP
-- LOCKED: two members ending at once in two transactions ungate two different members (a
-- row the other just ungated fails the recheck of array_waiting and the scan goes on), and a
-- member a user is cancelling right now is passed over instead of waited for.
CREATE FUNCTION scheduler.jobs_array_release() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    next_id bigint;
BEGIN
    SELECT j.id INTO next_id FROM scheduler.jobs j
    WHERE j.array_id = OLD.array_id AND j.tenant = OLD.tenant AND j.array_waiting
      AND j.state = 'queued'
    ORDER BY j.array_index
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF next_id IS NOT NULL THEN
        UPDATE scheduler.jobs SET array_waiting = false WHERE id = next_id;
        PERFORM pg_notify('scheduler_jobs', 'queued');
    END IF;
    RETURN NULL;
END
$$;

-- Not UPDATE OF state: a cancel names only desired_state (jobs_before_update sets the state).
CREATE TRIGGER jobs_array_release AFTER UPDATE ON scheduler.jobs
    FOR EACH ROW
    WHEN (OLD.array_id IS NOT NULL AND NOT OLD.array_waiting
          AND OLD.state IN ('queued', 'running', 'frozen')
          AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost'))
    EXECUTE FUNCTION scheduler.jobs_array_release();

------------------------------------------------------------------------------------------
-- Schedules may set constraints (the job's own field).
------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION scheduler.schedule_job_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['argv', 'constraints', 'cpu', 'cwd', 'env', 'image', 'io_read_bps',
                 'io_write_bps', 'kill_grace_seconds', 'labels', 'max_attempts', 'memory_bytes',
                 'name', 'network', 'output_limit_bytes', 'pids_max', 'priority',
                 'timeout_seconds']
$$;

-- The columns read beside the claim (0015) gain the array member's place, read the same way
-- (a job committed while the claim waited for its lock is seen, not read as NULL).
DROP FUNCTION scheduler.claimed_columns(bigint);
CREATE FUNCTION scheduler.claimed_columns(job bigint)
RETURNS TABLE (output_limit_bytes bigint, kill_grace_seconds numeric, array_id bigint,
               array_index integer)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY SELECT j.output_limit_bytes, j.kill_grace_seconds, j.array_id, j.array_index
                 FROM scheduler.jobs j WHERE j.id = job;
END;
$$;
REVOKE ALL ON FUNCTION scheduler.claimed_columns(bigint) FROM PUBLIC;

------------------------------------------------------------------------------------------
-- The claim (replaces 0010's): the copy of 0010's text with three changes, marked "0016":
-- a drained node claims nothing; a gated array member is not a head; a job's constraints
-- must be among the node's labels (read from the node's row: no new parameter).
------------------------------------------------------------------------------------------
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
BEGIN
    -- Serialises claims of all nodes (held to the end of the caller's transaction), so that
    -- tenant limits summed over nodes see every committed claim. The queries.sql block
    -- claim_lock takes the same row first in the unfit check's transaction. Only the owner
    -- can lock this row: a tenant role gets "permission denied" here.
    PERFORM 1 FROM scheduler.claim_lock FOR UPDATE;
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
    -- A frozen tenant holds the queued jobs of its whole subtree.
    held AS (
        SELECT DISTINCT l.tenant
        FROM lineage l JOIN scheduler.tenants t ON t.name = l.ancestor
        WHERE t.frozen
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
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority
            FROM (
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority, j.constraints
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
