-- The control plane against a hostile tenant (issue 15): what a tenant's SQL role (from
-- `scheduler tenants grant-sql`) or a tenant token can no longer do to the others, and the
-- columns only the agent writes. Replaces (CREATE OR REPLACE) scheduler.claim_jobs (0008),
-- scheduler.role_tenants (0003), scheduler.jobs_before_update and scheduler.tenants_notify
-- (0001).

------------------------------------------------------------------------------------------
-- Claims are serialised by a row lock tenants cannot take.
------------------------------------------------------------------------------------------
-- The claim used pg_advisory_xact_lock(5918230770001): advisory locks are open to every role
-- and cannot be revoked per key, so any tenant role could hold that key and stop every node's
-- claims. A row lock (SELECT ... FOR UPDATE) needs UPDATE on the table, and nobody but the
-- owner has any privilege on this one. The agent's sessions keep their
-- idle_in_transaction_session_timeout: a stalled agent still loses the lock with its session.
CREATE TABLE scheduler.claim_lock (
    id boolean PRIMARY KEY DEFAULT true,
    CONSTRAINT claim_lock_one_row CHECK (id)
);
INSERT INTO scheduler.claim_lock DEFAULT VALUES;
REVOKE ALL ON scheduler.claim_lock FROM PUBLIC;

-- The same for agents registering a node name (queries.sql node_lock), which took an
-- advisory key derived from the name: one row per name, locked by an upsert.
CREATE TABLE scheduler.node_locks (
    name text PRIMARY KEY
);
REVOKE ALL ON scheduler.node_locks FROM PUBLIC;

------------------------------------------------------------------------------------------
-- Which columns a tenant may set on insert.
------------------------------------------------------------------------------------------
-- INSERT was granted on every column, id included: a tenant role could insert with
-- OVERRIDING SYSTEM VALUE at ids the sequence would hand out later, so other tenants' submits
-- failed on the primary key. Outcome columns were already overwritten by the insert trigger;
-- they are left out too, so that a tenant role names only what it may choose.
REVOKE INSERT ON scheduler.jobs FROM scheduler_tenant;
GRANT INSERT (tenant, name, argv, env, cwd, cpu, memory_bytes, pids_max, timeout_seconds,
              priority, max_attempts, run_at, labels, desired_state, network, image,
              io_read_bps, io_write_bps)
    ON scheduler.jobs TO scheduler_tenant;

------------------------------------------------------------------------------------------
-- Who is asking: a tenant (its SQL role, or the API acting for a tenant token) or the operator.
------------------------------------------------------------------------------------------
-- The tenants a role may see: its tenant and every descendant; NULL for roles that are not
-- tenant roles (the agent, operators), which row-level security leaves unrestricted.
-- Changed from 0003 in two ways:
-- * a tenant role asks only about itself: scheduler.role_tenants('tenant_beta') from
--   tenant_alpha's session is refused instead of listing beta's subtree;
-- * the group scheduler_tenant (which every tenant role may SET ROLE to) and any other member
--   of it without a tenant of its own see nothing, instead of everything.
CREATE OR REPLACE FUNCTION scheduler.role_tenants(role name) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    result text[];
BEGIN
    -- session_user: the role that logged in (current_user is this function's owner here).
    IF role IS DISTINCT FROM session_user AND scheduler.is_tenant_role(session_user) THEN
        RAISE EXCEPTION 'a tenant role may only ask scheduler.role_tenants about itself (%)',
            session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM scheduler.tenant_roles r WHERE r.role_name = role) THEN
        RETURN CASE WHEN scheduler.is_tenant_role(role) THEN '{}'::text[] END;
    END IF;
    WITH RECURSIVE mine AS (
        SELECT t.name FROM scheduler.tenants t
        JOIN scheduler.tenant_roles r ON r.tenant = t.name
        WHERE r.role_name = role
        UNION
        SELECT c.name FROM scheduler.tenants c JOIN mine m ON c.parent = m.name
    )
    SELECT COALESCE(array_agg(name), '{}') INTO result FROM mine;
    RETURN result;
END
$$;

-- A tenant role: the group scheduler_tenant, a member of it (directly or not), or a role
-- mapped to a tenant. A superuser (which pg_has_role counts as a member of every role, and
-- which the agent may be) is not one: grant-sql makes its roles NOSUPERUSER. PL/pgSQL, not
-- SQL: the row-level security policies call this through role_tenants once per table a
-- statement reads, and PL/pgSQL keeps its statements' plans for the session where a SQL
-- function would be planned on every call (the claim reads ten such tables).
CREATE FUNCTION scheduler.is_tenant_role(role name) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    super boolean;
BEGIN
    IF role = 'scheduler_tenant' THEN
        RETURN true;
    END IF;
    SELECT r.rolsuper INTO super FROM pg_roles r WHERE r.rolname = role;
    IF NOT FOUND OR super THEN
        RETURN false;
    END IF;
    RETURN pg_has_role(role, 'scheduler_tenant', 'MEMBER')
        OR EXISTS (SELECT 1 FROM scheduler.tenant_roles r WHERE r.role_name = role);
END
$$;

-- The caller acts as a tenant: a tenant SQL role, or the HTTP API serving a tenant token
-- (it sets scheduler.acting_tenant for the transaction). Anyone else is the operator.
-- Setting scheduler.acting_tenant oneself only ever takes rights away. SECURITY INVOKER, so
-- that current_user is the caller's effective role (SET ROLE to a tenant role counts).
CREATE FUNCTION scheduler.caller_is_tenant() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT scheduler.is_tenant_role(session_user) OR scheduler.is_tenant_role(current_user)
        OR COALESCE(current_setting('scheduler.acting_tenant', true), '') <> ''
$$;

------------------------------------------------------------------------------------------
-- Operator holds.
------------------------------------------------------------------------------------------
-- frozen by the operator (admin token, the database owner or any non-tenant role in SQL) is a
-- hold only the operator lifts; a tenant may still freeze and thaw itself.
ALTER TABLE scheduler.tenants ADD COLUMN operator_hold boolean NOT NULL DEFAULT false;
ALTER TABLE scheduler.tenants ADD CONSTRAINT tenant_operator_hold_frozen
    CHECK (NOT operator_hold OR frozen);

CREATE FUNCTION scheduler.tenants_hold() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    tenant_caller boolean := scheduler.caller_is_tenant();
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.operator_hold := NEW.frozen AND NOT tenant_caller;
        RETURN NEW;
    END IF;
    IF tenant_caller AND NEW.operator_hold IS DISTINCT FROM OLD.operator_hold THEN
        RAISE EXCEPTION 'only the operator sets operator_hold (tenant %)', OLD.name
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'operator_hold';
    END IF;
    IF NOT NEW.frozen THEN
        IF OLD.operator_hold AND tenant_caller THEN
            RAISE EXCEPTION 'tenant % is frozen by an operator hold: only the operator can thaw it',
                OLD.name
                USING ERRCODE = 'insufficient_privilege', COLUMN = 'frozen',
                      HINT = 'Ask the operator (admin token or database owner) to thaw it.';
        END IF;
        NEW.operator_hold := false;
    ELSIF NOT tenant_caller THEN
        -- The operator freezing (even a tenant the tenant froze itself) makes it a hold,
        -- unless the statement changes operator_hold itself (SET operator_hold = false on a
        -- held tenant turns the hold into a plain freeze).
        NEW.operator_hold := CASE WHEN NEW.operator_hold IS DISTINCT FROM OLD.operator_hold
                                  THEN NEW.operator_hold ELSE true END;
    END IF;
    RETURN NEW;
END
$$;

-- UPDATE OF: only statements that name frozen or operator_hold (a change of weight by the
-- operator does not turn a tenant's own freeze into a hold).
CREATE TRIGGER tenants_hold BEFORE INSERT OR UPDATE OF frozen, operator_hold ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_hold();

------------------------------------------------------------------------------------------
-- A tenant's child never gets more than its parent.
------------------------------------------------------------------------------------------
-- Checked for tenant callers (the API with a tenant token; tenant SQL roles cannot insert
-- tenants or change these columns at all): weight and every limit at most the parent's,
-- and a limit wherever the parent has one. The operator may still set what it likes.
CREATE FUNCTION scheduler.tenants_within_parent() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    p scheduler.tenants;
BEGIN
    IF NEW.parent IS NULL OR NOT scheduler.caller_is_tenant() THEN
        RETURN NEW;
    END IF;
    SELECT * INTO p FROM scheduler.tenants WHERE name = NEW.parent;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key names the missing parent
    END IF;
    IF NEW.weight > p.weight THEN
        RAISE EXCEPTION 'weight % is more than parent tenant %''s weight %', NEW.weight, p.name, p.weight
            USING ERRCODE = 'check_violation', COLUMN = 'weight';
    END IF;
    IF p.cpu_limit IS NOT NULL AND (NEW.cpu_limit IS NULL OR NEW.cpu_limit > p.cpu_limit) THEN
        RAISE EXCEPTION 'cpu_limit % is more than parent tenant %''s cpu_limit %',
            COALESCE(NEW.cpu_limit::text, 'none'), p.name, p.cpu_limit
            USING ERRCODE = 'check_violation', COLUMN = 'cpu_limit';
    END IF;
    IF p.memory_limit_bytes IS NOT NULL
       AND (NEW.memory_limit_bytes IS NULL OR NEW.memory_limit_bytes > p.memory_limit_bytes) THEN
        RAISE EXCEPTION 'memory_limit_bytes % is more than parent tenant %''s memory_limit_bytes %',
            COALESCE(NEW.memory_limit_bytes::text, 'none'), p.name, p.memory_limit_bytes
            USING ERRCODE = 'check_violation', COLUMN = 'memory_limit_bytes';
    END IF;
    IF p.pids_limit IS NOT NULL AND (NEW.pids_limit IS NULL OR NEW.pids_limit > p.pids_limit) THEN
        RAISE EXCEPTION 'pids_limit % is more than parent tenant %''s pids_limit %',
            COALESCE(NEW.pids_limit::text, 'none'), p.name, p.pids_limit
            USING ERRCODE = 'check_violation', COLUMN = 'pids_limit';
    END IF;
    IF p.max_running_jobs IS NOT NULL
       AND (NEW.max_running_jobs IS NULL OR NEW.max_running_jobs > p.max_running_jobs) THEN
        RAISE EXCEPTION 'max_running_jobs % is more than parent tenant %''s max_running_jobs %',
            COALESCE(NEW.max_running_jobs::text, 'none'), p.name, p.max_running_jobs
            USING ERRCODE = 'check_violation', COLUMN = 'max_running_jobs';
    END IF;
    IF p.io_read_bps IS NOT NULL AND (NEW.io_read_bps IS NULL OR NEW.io_read_bps > p.io_read_bps) THEN
        RAISE EXCEPTION 'io_read_bps % is more than parent tenant %''s io_read_bps %',
            COALESCE(NEW.io_read_bps::text, 'none'), p.name, p.io_read_bps
            USING ERRCODE = 'check_violation', COLUMN = 'io_read_bps';
    END IF;
    IF p.io_write_bps IS NOT NULL
       AND (NEW.io_write_bps IS NULL OR NEW.io_write_bps > p.io_write_bps) THEN
        RAISE EXCEPTION 'io_write_bps % is more than parent tenant %''s io_write_bps %',
            COALESCE(NEW.io_write_bps::text, 'none'), p.name, p.io_write_bps
            USING ERRCODE = 'check_violation', COLUMN = 'io_write_bps';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_within_parent
    BEFORE INSERT OR UPDATE OF parent, weight, cpu_limit, memory_limit_bytes, pids_limit,
        max_running_jobs, io_read_bps, io_write_bps
    ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_within_parent();

------------------------------------------------------------------------------------------
-- Outcome columns belong to the agent.
------------------------------------------------------------------------------------------
-- An UPDATE of state, node, the outcome, the totals, the timestamps or the attempt count
-- is refused unless the session says it is the agent (scheduler.writer = 'agent': the
-- agent's pool sets it for its sessions, scheduler/db/pool.py). Tenant roles have no UPDATE
-- privilege on these columns at all; this stops everyone else, the database owner in psql
-- included, from making a job look finished while its processes run on. It is a guard, not a
-- wall: whoever may set the setting (any role, in its own session) or alter the table can
-- pass it, which is why the owner's credentials belong to the agent and operators alone.
-- Named so that it runs before jobs_before_update (triggers fire in name order), which
-- itself ends a queued job that a user cancelled.
CREATE FUNCTION scheduler.jobs_agent_columns() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    changed text;
BEGIN
    IF current_setting('scheduler.writer', true) = 'agent' THEN
        RETURN NEW;
    END IF;
    changed := concat_ws(', ',
        CASE WHEN NEW.state IS DISTINCT FROM OLD.state THEN 'state' END,
        CASE WHEN NEW.node IS DISTINCT FROM OLD.node THEN 'node' END,
        CASE WHEN NEW.node_epoch IS DISTINCT FROM OLD.node_epoch THEN 'node_epoch' END,
        CASE WHEN NEW.attempts IS DISTINCT FROM OLD.attempts THEN 'attempts' END,
        CASE WHEN NEW.exit_code IS DISTINCT FROM OLD.exit_code THEN 'exit_code' END,
        CASE WHEN NEW.signal IS DISTINCT FROM OLD.signal THEN 'signal' END,
        CASE WHEN NEW.oom_killed IS DISTINCT FROM OLD.oom_killed THEN 'oom_killed' END,
        CASE WHEN NEW.error IS DISTINCT FROM OLD.error THEN 'error' END,
        CASE WHEN NEW.submitted_at IS DISTINCT FROM OLD.submitted_at THEN 'submitted_at' END,
        CASE WHEN NEW.started_at IS DISTINCT FROM OLD.started_at THEN 'started_at' END,
        CASE WHEN NEW.finished_at IS DISTINCT FROM OLD.finished_at THEN 'finished_at' END,
        CASE WHEN NEW.cpu_seconds IS DISTINCT FROM OLD.cpu_seconds THEN 'cpu_seconds' END,
        CASE WHEN NEW.memory_peak_bytes IS DISTINCT FROM OLD.memory_peak_bytes
             THEN 'memory_peak_bytes' END,
        CASE WHEN NEW.io_read_bytes IS DISTINCT FROM OLD.io_read_bytes THEN 'io_read_bytes' END,
        CASE WHEN NEW.io_write_bytes IS DISTINCT FROM OLD.io_write_bytes THEN 'io_write_bytes' END,
        CASE WHEN NEW.id IS DISTINCT FROM OLD.id THEN 'id' END,
        CASE WHEN NEW.tenant IS DISTINCT FROM OLD.tenant THEN 'tenant' END);
    IF changed <> '' THEN
        RAISE EXCEPTION 'job %: % written by the agent only', OLD.id, changed
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('To steer the job set desired_state: UPDATE scheduler.jobs SET'
                                ' desired_state = ''cancelled'' (or ''frozen'', ''running'')'
                                ' WHERE id = %s;', OLD.id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_agent_columns BEFORE UPDATE ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_agent_columns();

------------------------------------------------------------------------------------------
-- Leaks.
------------------------------------------------------------------------------------------
-- Prices: a tenant role sees the rates for everyone and those of its own subtree.
ALTER TABLE scheduler.rates ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.rates FORCE ROW LEVEL SECURITY;
CREATE POLICY rates_tenant_rows ON scheduler.rates
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]));

-- LISTEN is open to every role and cannot be narrowed: the control channel no longer names
-- jobs or tenants. A change of a job's desired_state says only which node runs it (the one
-- agent that has something to do; a queued job is cancelled by the trigger itself), a tenant
-- change says 'tenants'. Replaces the NOTIFY of jobs_before_update (0001) by its own trigger
-- function, below, and tenants_notify (0001).
CREATE OR REPLACE FUNCTION scheduler.jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.desired_state IS DISTINCT FROM OLD.desired_state THEN
        IF OLD.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost') THEN
            RAISE EXCEPTION 'job % already finished as %: its desired_state cannot change', OLD.id, OLD.state
                USING ERRCODE = 'check_violation', COLUMN = 'desired_state';
        END IF;
        IF NEW.desired_state = 'cancelled' AND OLD.state = 'queued' THEN
            NEW.state := 'cancelled';
            NEW.finished_at := clock_timestamp();
        END IF;
        IF OLD.node IS NOT NULL THEN
            PERFORM pg_notify('scheduler_control', 'node:' || OLD.node);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION scheduler.tenants_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scheduler_control', 'tenants');
    IF TG_OP = 'UPDATE' AND NEW.frozen = false AND OLD.frozen = true THEN
        -- Thawing a tenant may release held queued jobs.
        PERFORM pg_notify('scheduler_jobs', 'queued');
    END IF;
    RETURN NULL;
END;
$$;

------------------------------------------------------------------------------------------
-- The claim (replaces 0008's): the row lock above, the agent's writer setting, and
-- hierarchical fair share.
------------------------------------------------------------------------------------------
-- Fair share is hierarchical. A tenant's share is its weight among its active siblings
-- (siblings whose subtree has a job running or one that could start now; roots are siblings
-- of each other), times its parent's share: a subtree gets its weight's part of its parent's
-- share whatever its children's weights, and an idle sibling leaves its part to the others.
-- A subtree's use is what every tenant in it used recently (scheduler.tenant_recent_cpu,
-- decayed) plus allocation_seconds per running core. A queued job's key is the highest, over
-- its tenant and every ancestor, of (that subtree's use + allocation_seconds * the cores of
-- that subtree's queued jobs ahead of it, itself included) / that subtree's share: the job
-- waits while any subtree it belongs to is ahead of its share. "Ahead of it" inside a subtree
-- is the order of the tenant-level keys (the tenant's use plus its own queued jobs ahead,
-- over the tenant's share), which is the 0008 order when every tenant is a root. Then
-- priority, then age, as before.
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
