-- Workflows (issue 18 items 1 and 7): jobs that start after others succeeded, and a
-- notification when a job ends. Replaces (CREATE OR REPLACE) scheduler.claim_jobs (0010: one
-- condition added to the heads scan) and the index jobs_queued_tenant_idx (0004: the gate
-- joins its predicate).

------------------------------------------------------------------------------------------
-- Dependencies.
------------------------------------------------------------------------------------------
-- depends_on: the jobs (of the same tenant) that must succeed first; fixed at submit.
-- deps_waiting: how many of them have not succeeded yet; the claim takes only jobs at 0.
-- Kept by triggers: set at insert, decremented by one statement when a listed job succeeds.
ALTER TABLE scheduler.jobs
    ADD COLUMN depends_on bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN deps_waiting integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT job_deps_waiting_nonnegative CHECK (deps_waiting >= 0);

COMMENT ON COLUMN scheduler.jobs.depends_on IS
    'Jobs of the same tenant that must succeed before this one starts (fixed at submit).';
COMMENT ON COLUMN scheduler.jobs.deps_waiting IS
    'How many of depends_on have not succeeded yet (kept by the database; claimed at 0).';

-- The most jobs one job may wait for: a bound on the work of one insert's check and lock.
CREATE FUNCTION scheduler.depends_on_max() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1000 $$;

-- Checked at insert. SECURITY DEFINER: it reads (and share-locks) the listed jobs whatever
-- the caller's row-level security, but only those of the new job's own tenant, so an id of
-- another tenant gets exactly the answer an id that does not exist gets. The share lock
-- orders this insert against the listed jobs' end: an end committed first is seen here (a
-- job that ended otherwise than succeeded is refused), an end committed later waits for this
-- insert and then sees its row (and decrements or cancels it). Ids in depends_on can only be
-- those of jobs that already exist, and depends_on never changes, so no cycle can form.
CREATE FUNCTION scheduler.jobs_depends_on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    listed integer;
    dup bigint;
    found_count integer;
    waiting integer;
    missing bigint;
    ended record;
BEGIN
    NEW.deps_waiting := 0;
    IF NEW.depends_on IS NULL OR cardinality(NEW.depends_on) = 0 THEN
        RETURN NEW;  -- NULL: the NOT NULL constraint names it
    END IF;
    listed := cardinality(NEW.depends_on);
    IF listed > scheduler.depends_on_max() THEN
        RAISE EXCEPTION 'depends_on lists % jobs: at most % are allowed', listed,
            scheduler.depends_on_max()
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    IF array_ndims(NEW.depends_on) > 1 THEN
        RAISE EXCEPTION 'depends_on must be a one-dimensional array of job ids'
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    IF array_position(NEW.depends_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on must not contain NULL'
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    IF NEW.id = ANY (NEW.depends_on) THEN
        RAISE EXCEPTION 'depends_on: job % cannot depend on itself', NEW.id
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    SELECT d INTO dup FROM unnest(NEW.depends_on) AS d GROUP BY d HAVING count(*) > 1
    ORDER BY d LIMIT 1;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on lists job % more than once', dup
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    -- In id order, so that two inserts lock common jobs in the same order.
    WITH locked AS (
        SELECT j.id, j.state FROM scheduler.jobs j
        WHERE j.id = ANY (NEW.depends_on) AND j.tenant = NEW.tenant
        ORDER BY j.id
        FOR SHARE
    )
    SELECT count(*), count(*) FILTER (WHERE l.state IN ('queued', 'running', 'frozen'))
    INTO found_count, waiting
    FROM locked l;
    IF found_count < listed THEN
        SELECT d INTO missing FROM unnest(NEW.depends_on) AS d
        WHERE NOT EXISTS (SELECT 1 FROM scheduler.jobs j WHERE j.id = d AND j.tenant = NEW.tenant)
        ORDER BY d LIMIT 1;
        -- One message for "no such job" and "another tenant's job".
        RAISE EXCEPTION 'depends_on: % is not a job of tenant %', missing, quote_literal(NEW.tenant)
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'depends_on';
    END IF;
    -- A job listed that already ended otherwise than succeeded: the new job could never
    -- start, and saying so now beats a job that is born cancelled.
    SELECT j.id, j.state INTO ended FROM scheduler.jobs j
    WHERE j.id = ANY (NEW.depends_on) AND j.tenant = NEW.tenant
      AND j.state IN ('failed', 'cancelled', 'timed_out', 'lost')
    ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'depends_on: job % already ended %, so this job could never start',
            ended.id, ended.state
            USING ERRCODE = 'check_violation', COLUMN = 'depends_on';
    END IF;
    NEW.deps_waiting := waiting;
    RETURN NEW;
END;
$$;

-- Named after jobs_before_insert (triggers fire in name order), which sets the state.
CREATE TRIGGER jobs_depends_on_insert BEFORE INSERT ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_depends_on_insert();

-- depends_on never changes (that is what rules out cycles); deps_waiting is the database's
-- (tenant roles have no UPDATE privilege on either; this stops the owner's sessions too).
CREATE FUNCTION scheduler.jobs_depends_on_fixed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.depends_on IS DISTINCT FROM OLD.depends_on THEN
        RAISE EXCEPTION 'job %: depends_on is fixed at submit', OLD.id
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'depends_on';
    END IF;
    IF NEW.deps_waiting IS DISTINCT FROM OLD.deps_waiting
       AND current_setting('scheduler.writer', true) IS DISTINCT FROM 'agent' THEN
        RAISE EXCEPTION 'job %: deps_waiting is kept by the database', OLD.id
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'deps_waiting';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_depends_on_fixed BEFORE UPDATE OF depends_on, deps_waiting
    ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_depends_on_fixed();

-- Finding a job's dependents: a GIN index on the arrays of queued jobs that have any (an
-- edge table would cost a second insert per edge and its own row-level security; this costs
-- nothing for jobs without dependencies, which the predicate leaves out). fastupdate off:
-- a lookup then never walks a pending list that bulk submits made long.
CREATE INDEX jobs_depends_on_idx ON scheduler.jobs USING gin (depends_on)
    WITH (fastupdate = off)
    WHERE state = 'queued' AND depends_on <> '{}';

-- When a job ends: succeeded releases its dependents by one (one statement however many);
-- any other end (with no attempt left: a retry goes back to 'queued', not through here)
-- cancels every queued job downstream of it, in one recursive statement, each with an
-- error naming the listed job that ended and how. The recursion walks only queued jobs
-- with dependencies (the index above) and ends because the graph has no cycle; the rows it
-- cancels fire this trigger again, which finds nothing left queued below them.
-- SECURITY DEFINER: a tenant cancelling its queued job ends it in the tenant's transaction,
-- and the dependents' outcome columns are the agent's (jobs_agent_columns): this writes them
-- as the agent and then puts the caller's setting back.
CREATE FUNCTION scheduler.jobs_release_dependents() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    writer text := current_setting('scheduler.writer', true);
    released integer;
BEGIN
    PERFORM set_config('scheduler.writer', 'agent', true);
    IF NEW.state = 'succeeded' THEN
        UPDATE scheduler.jobs j SET deps_waiting = j.deps_waiting - 1
        WHERE j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[NEW.id];
        GET DIAGNOSTICS released = ROW_COUNT;
        IF released > 0 THEN
            PERFORM pg_notify('scheduler_jobs', 'queued');
        END IF;
    ELSE
        WITH RECURSIVE doomed (id, via, via_state) AS (
            SELECT j.id, NEW.id, NEW.state FROM scheduler.jobs j
            WHERE j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[NEW.id]
            UNION
            SELECT j.id, d.id, 'cancelled'::text FROM doomed d
            JOIN scheduler.jobs j
              ON j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[d.id]
        )
        UPDATE scheduler.jobs j
        SET state = 'cancelled', finished_at = clock_timestamp(),
            error = format('dependency %s %s', v.via, v.via_state)
        FROM (SELECT DISTINCT ON (d.id) d.id, d.via, d.via_state FROM doomed d
              ORDER BY d.id, d.via) v
        WHERE j.id = v.id AND j.state = 'queued';
    END IF;
    PERFORM set_config('scheduler.writer', COALESCE(writer, ''), true);
    RETURN NULL;
END;
$$;

-- Not "UPDATE OF state": a queued job cancelled by its user changes state in
-- jobs_before_update, which an UPDATE OF list does not see.
CREATE TRIGGER jobs_release_dependents AFTER UPDATE ON scheduler.jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION scheduler.jobs_release_dependents();

-- A tenant role may name its jobs' dependencies; deps_waiting is not insertable (the insert
-- trigger sets it anyway) and neither column is updatable (0003 grants UPDATE of
-- desired_state only).
GRANT INSERT (depends_on) ON scheduler.jobs TO scheduler_tenant;

-- The claim's head scan walks only jobs free to start: 10,000 queued jobs of which half wait
-- on dependencies cost what 5,000 cost. Replaces 0004's index of the same name.
DROP INDEX scheduler.jobs_queued_tenant_idx;
CREATE INDEX jobs_queued_tenant_idx ON scheduler.jobs (tenant, priority DESC, id)
    WHERE state = 'queued' AND deps_waiting = 0;

------------------------------------------------------------------------------------------
-- Finished-job notifications.
------------------------------------------------------------------------------------------
-- NOTIFY scheduler_job_done with the job's id only, in the transaction that ends it (sent at
-- commit). LISTEN is open to every role on every channel, so the payload says nothing a
-- tenant may not know: the tenant and state are read back with a SELECT, which row-level
-- security answers for the tenant's own jobs only (docs/architecture.md).
CREATE FUNCTION scheduler.jobs_notify_done() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_notify('scheduler_job_done', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_done AFTER UPDATE ON scheduler.jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION scheduler.jobs_notify_done();
-- A job submitted cancelled ends at insert.
CREATE TRIGGER jobs_notify_done_insert AFTER INSERT ON scheduler.jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost'))
    EXECUTE FUNCTION scheduler.jobs_notify_done();

------------------------------------------------------------------------------------------
-- The claim (replaces 0010's): the heads scan takes only jobs whose dependencies all
-- succeeded (deps_waiting = 0), through the index above. Otherwise unchanged.
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
BEGIN
    -- Serialises claims of all nodes (held to the end of the caller's transaction), so that
    -- tenant limits summed over nodes see every committed claim. The queries.sql block
    -- claim_lock takes the same row first in the unfit check's transaction. Only the owner
    -- can lock this row: a tenant role gets "permission denied" here.
    PERFORM 1 FROM scheduler.claim_lock FOR UPDATE;
    -- The outcome columns below are the agent's (jobs_agent_columns): this transaction writes
    -- them as the agent.
    PERFORM set_config('scheduler.writer', 'agent', true);
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
            SELECT j.id, j.tenant, j.cpu, j.memory_bytes, j.priority
            FROM scheduler.jobs j
            WHERE j.tenant = t.name AND j.state = 'queued'
              -- A job held frozen is not started until thawed.
              AND j.desired_state = 'running'
              AND j.run_at <= now()
              AND j.deps_waiting = 0
            ORDER BY j.priority DESC, j.id
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
