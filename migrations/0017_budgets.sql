-- Budgets and why a job waits (issue 19 items 1 and 2). Replaces (CREATE OR REPLACE)
-- scheduler.claim_jobs (0016): held tenants include those over budget, and the claim notes
-- why the queue heads it examined and did not start wait (jobs.pending_reason).

------------------------------------------------------------------------------------------
-- Budgets: the operator's, per tenant (its whole subtree counts).
------------------------------------------------------------------------------------------
ALTER TABLE scheduler.tenants
    ADD COLUMN budget numeric,
    ADD COLUMN budget_currency text,
    ADD COLUMN budget_period text NOT NULL DEFAULT 'month',
    ADD COLUMN budget_action text NOT NULL DEFAULT 'hold';
ALTER TABLE scheduler.tenants
    ADD CONSTRAINT tenant_budget_nonnegative CHECK (budget IS NULL OR budget >= 0),
    ADD CONSTRAINT tenant_budget_currency_iso
        CHECK (budget_currency IS NULL OR budget_currency ~ '^[A-Z]{3}$'),
    ADD CONSTRAINT tenant_budget_has_currency CHECK (budget IS NULL OR budget_currency IS NOT NULL),
    ADD CONSTRAINT tenant_budget_period_valid CHECK (budget_period IN ('month', 'total')),
    ADD CONSTRAINT tenant_budget_action_valid CHECK (budget_action IN ('hold', 'freeze'));

COMMENT ON COLUMN scheduler.tenants.budget IS
    'Most the subtree may spend per budget_period in budget_currency (NULL: no budget). Operator only.';
COMMENT ON COLUMN scheduler.tenants.budget_period IS
    '''month'' (UTC calendar month of the usage rows'' period_end) or ''total'' (all time).';
COMMENT ON COLUMN scheduler.tenants.budget_action IS
    'At the budget: ''hold'' keeps new jobs queued; ''freeze'' also freezes running ones.';

-- Tenant SQL roles have no UPDATE privilege on these columns (0003 grants UPDATE (frozen)
-- only); this refuses the HTTP API acting for a tenant token too (it runs as the agent with
-- scheduler.acting_tenant set), on insert (a child created by a tenant) as on update.
CREATE FUNCTION scheduler.tenants_budget_operator_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NOT scheduler.caller_is_tenant() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.budget IS NOT NULL OR NEW.budget_currency IS NOT NULL
           OR NEW.budget_period <> 'month' OR NEW.budget_action <> 'hold' THEN
            RAISE EXCEPTION 'only the operator sets a tenant''s budget (tenant %)', NEW.name
                USING ERRCODE = 'insufficient_privilege', COLUMN = 'budget';
        END IF;
    ELSIF NEW.budget IS DISTINCT FROM OLD.budget
          OR NEW.budget_currency IS DISTINCT FROM OLD.budget_currency
          OR NEW.budget_period IS DISTINCT FROM OLD.budget_period
          OR NEW.budget_action IS DISTINCT FROM OLD.budget_action THEN
        RAISE EXCEPTION 'only the operator sets a tenant''s budget (tenant %)', OLD.name
            USING ERRCODE = 'insufficient_privilege', COLUMN = 'budget';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_budget_operator_only
    BEFORE INSERT OR UPDATE OF budget, budget_currency, budget_period, budget_action
    ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_budget_operator_only();

-- A raised (or removed) budget may release held jobs: wake the claim of every agent, as a
-- thaw does (tenants_notify already tells the controllers, which thaw what the budget froze).
CREATE FUNCTION scheduler.tenants_budget_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_notify('scheduler_jobs', 'queued');
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_budget_notify
    AFTER UPDATE OF budget, budget_currency, budget_period, budget_action ON scheduler.tenants
    FOR EACH ROW EXECUTE FUNCTION scheduler.tenants_budget_notify();

------------------------------------------------------------------------------------------
-- Spend, kept as usage arrives (never summed from the usage table by the claim).
------------------------------------------------------------------------------------------
-- Priced usage of each tenant's subtree (its own rows and its descendants'), per period and
-- currency: a row counts for its tenant and every ancestor at the time it is inserted (a
-- tenant moved to another parent later leaves its past spend with the old one). period is
-- the UTC month of the row's period_end ('2026-12') or 'total'. A row's amount is priced as
-- the billing export prices it (accounting/rates.py: the rate valid when the row's period
-- ends, the tenant's own rate before the default, then the latest valid_from, then the
-- highest id), unrounded; usage without a rate adds nothing here (the export refuses it).
-- Rates in other currencies than a budget's count towards another row, not that budget.
-- Kept per ancestor so that the claim reads one row per budget, never a subtree's sum.
CREATE TABLE scheduler.tenant_spend (
    tenant   text NOT NULL REFERENCES scheduler.tenants (name),
    period   text NOT NULL,
    currency text NOT NULL,
    amount   numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, period, currency),
    CONSTRAINT tenant_spend_period_valid CHECK (period = 'total' OR period ~ '^[0-9]{4}-[0-9]{2}$')
);
REVOKE ALL ON scheduler.tenant_spend FROM PUBLIC;
COMMENT ON TABLE scheduler.tenant_spend IS
    'Priced usage of each tenant''s subtree per UTC month (or ''total'') and currency, added by a trigger on usage.';

-- The rate of a resource for a tenant at an instant (the export's rule), or none.
CREATE FUNCTION scheduler.rate_at(res text, who text, at timestamptz)
RETURNS TABLE (price numeric, currency text)
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT r.price, r.currency FROM scheduler.rates r
    WHERE r.resource = res AND (r.tenant IS NULL OR r.tenant = who)
      AND r.valid_from <= at AND at < r.valid_to
    ORDER BY (r.tenant IS NOT NULL) DESC, r.valid_from DESC, r.id DESC
    LIMIT 1
$$;

-- What usage rows cost, per tenant (and each ancestor), period and currency.
CREATE FUNCTION scheduler.add_spend(rows_json jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH RECURSIVE n AS (
        SELECT * FROM jsonb_populate_recordset(NULL::scheduler.usage, rows_json)
    ),
    priced AS (
        SELECT n.tenant, to_char(n.period_end AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
               r.currency, r.price * q.quantity AS amount
        FROM n
        JOIN scheduler.jobs j ON j.id = n.job_id
        CROSS JOIN LATERAL (VALUES
            ('cpu_second', n.cpu_seconds),
            ('memory_gib_hour', n.memory_byte_seconds / 3865470566400),
            ('io_gib', (n.io_read_bytes + n.io_write_bytes)::numeric / 1073741824),
            ('cpu_core_second_reserved',
             j.cpu * extract(epoch FROM n.period_end - n.period_start)),
            ('memory_gib_hour_reserved',
             j.memory_bytes * extract(epoch FROM n.period_end - n.period_start) / 3865470566400)
        ) q(resource, quantity)
        CROSS JOIN LATERAL scheduler.rate_at(q.resource, n.tenant, n.period_end) r
        WHERE q.quantity > 0
    ),
    chain AS (
        SELECT DISTINCT p.tenant, p.tenant AS ancestor, 0 AS depth FROM priced p
        UNION ALL
        SELECT c.tenant, t.parent, c.depth + 1
        FROM chain c JOIN scheduler.tenants t ON t.name = c.ancestor
        WHERE t.parent IS NOT NULL AND c.depth < 32
    )
    -- In key order: two agents' inserts lock the spend rows in the same order (no deadlock).
    INSERT INTO scheduler.tenant_spend AS s (tenant, period, currency, amount)
    SELECT ch.ancestor, per.period, p.currency, sum(p.amount)
    FROM priced p
    JOIN chain ch ON ch.tenant = p.tenant
    CROSS JOIN LATERAL (VALUES (p.month), ('total')) per(period)
    GROUP BY ch.ancestor, per.period, p.currency
    ORDER BY ch.ancestor, per.period, p.currency
    ON CONFLICT (tenant, period, currency) DO UPDATE SET amount = s.amount + EXCLUDED.amount
$$;

-- Only the owner (through the trigger) adds spend: functions are executable by PUBLIC by
-- default, and although a caller without INSERT on tenant_spend would be refused anyway,
-- nobody else has a reason to call it.
REVOKE EXECUTE ON FUNCTION scheduler.add_spend(jsonb) FROM PUBLIC;

CREATE FUNCTION scheduler.usage_spend() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    -- One upsert per statement: a batch of rows costs one row update per tenant and period.
    PERFORM scheduler.add_spend((SELECT jsonb_agg(to_jsonb(n)) FROM new_rows n));
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_spend AFTER INSERT ON scheduler.usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_spend();

-- Usage recorded before this migration counts too (a day at a time: bounded memory).
DO $$
DECLARE
    day timestamptz;
BEGIN
    FOR day IN SELECT DISTINCT date_trunc('day', period_end) FROM scheduler.usage LOOP
        PERFORM scheduler.add_spend((SELECT jsonb_agg(to_jsonb(u)) FROM scheduler.usage u
                                     WHERE u.period_end >= day
                                       AND u.period_end < day + interval '1 day'));
    END LOOP;
END
$$;

-- Each budget with its subtree's spend in the budget's currency and current period: one
-- index lookup in tenant_spend per budget (a join was planned as a hash of the whole table,
-- which grows every month), none when no budget is set.
CREATE VIEW scheduler.budget_status AS
SELECT t.name AS tenant, t.budget, t.budget_currency AS currency, t.budget_period AS period,
       t.budget_action AS action,
       COALESCE((SELECT sp.amount FROM scheduler.tenant_spend sp
                 WHERE sp.tenant = t.name
                   AND sp.period = CASE t.budget_period WHEN 'total' THEN 'total' ELSE m.month END
                   AND sp.currency = t.budget_currency), 0) AS spend
FROM scheduler.tenants t
CROSS JOIN (SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') AS month) m
WHERE t.budget IS NOT NULL;
COMMENT ON VIEW scheduler.budget_status IS
    'Each budget and what its subtree spent in its currency this period (spend >= budget: reached).';

-- The tenants whose budget is reached (their subtrees are held by the claim).
CREATE VIEW scheduler.budget_reached AS
SELECT tenant, action FROM scheduler.budget_status WHERE spend >= budget;

------------------------------------------------------------------------------------------
-- Why a job waits.
------------------------------------------------------------------------------------------
-- Row-level reasons (the job's own desired_state and run_at) are set by the trigger below on
-- insert and update; the claim writes the others for the queue heads it examined and did
-- not start, only where the reason changes (claim_jobs, CTE waiting). Jobs further back in a
-- tenant's queue than the claim looks keep their last reason (or none). NULL once started.
ALTER TABLE scheduler.jobs ADD COLUMN pending_reason text;
ALTER TABLE scheduler.jobs ADD CONSTRAINT job_pending_reason_valid CHECK (pending_reason IN (
    'run_at', 'dependency', 'frozen', 'tenant_frozen', 'operator_hold', 'budget', 'tenant_limit',
    'capacity', 'max_running_jobs', 'array_limit', 'constraint', 'drained'));
COMMENT ON COLUMN scheduler.jobs.pending_reason IS
    'Why a queued job waits (see docs/operations.md); NULL once started or when nothing says.';

-- A gate that is a property of the row gets its reason here: one WHEN (before the last).
CREATE FUNCTION scheduler.jobs_pending_reason() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    NEW.pending_reason := CASE
        WHEN NEW.state <> 'queued' THEN NULL
        WHEN NEW.desired_state = 'frozen' THEN 'frozen'
        -- The gates of 0014 and 0016: the claim does not look at these rows at all.
        WHEN NEW.deps_waiting > 0 THEN 'dependency'
        WHEN NEW.array_waiting THEN 'array_limit'
        WHEN NEW.run_at > now() THEN 'run_at'
        -- A row-level reason that no longer holds is cleared; the claim's stay.
        WHEN NEW.pending_reason IN ('frozen', 'dependency', 'array_limit', 'run_at') THEN NULL
        ELSE NEW.pending_reason
    END;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_pending_reason
    BEFORE INSERT OR UPDATE OF state, desired_state, run_at, pending_reason, deps_waiting,
        array_waiting ON scheduler.jobs
    FOR EACH ROW EXECUTE FUNCTION scheduler.jobs_pending_reason();

-- Existing queued jobs get their row-level reasons.
UPDATE scheduler.jobs SET pending_reason = NULL WHERE state = 'queued'
    AND (desired_state = 'frozen' OR run_at > now() OR deps_waiting > 0 OR array_waiting);

------------------------------------------------------------------------------------------
-- The claim: 0016's text (0010's with the dependency and array gates, constraints and drain)
-- with two changes: budget holds in held; the CTEs waiting and noted write pending_reason.
-- Everything else is unchanged.
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
            WHERE j2.id = w.id AND j2.state = 'queued'
              AND j2.pending_reason IS DISTINCT FROM w.reason
            FOR UPDATE SKIP LOCKED
        ) l
        WHERE w.reason IS DISTINCT FROM w.was AND j.id = l.id
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
