-- The database's share of the launch path (issue 14: the end-to-end launch ratio). Measured
-- per job with pg_stat_statements, pg_stat_user_functions and auto_explain on bench/launch.py's
-- end-to-end phase (bench/dbpath.py prints the same breakdown): Postgres spent 1.3-1.7 ms of
-- CPU per `true` job against 0.23 ms before 0014-0019, most of it in four places.

-- 1. add_spend (0017) is planned from default estimates (jsonb_populate_recordset 100 rows,
-- rate_at 1,000 rows per call) that put its cost over jit_above_cost: every usage insert
-- JIT-compiled the plan, 40-50 ms of CPU for a handful of rows. rate_at returns one row, and
-- a statement this small never gains from JIT.
ALTER FUNCTION scheduler.add_spend(jsonb) SET jit = off;
-- rate_at was called once per priced resource of every usage row (four calls a job), each a
-- function call with its own search_path switch. A SQL-standard body is bound when it is
-- created (no search_path to pin) and, without a SET clause, is inlined into add_spend's
-- plan as a lookup in rates. Same rule as 0017: the tenant's own rate first, then the
-- latest.
CREATE OR REPLACE FUNCTION scheduler.rate_at(res text, who text, at timestamptz)
RETURNS TABLE (price numeric, currency text)
LANGUAGE sql STABLE ROWS 1
BEGIN ATOMIC
    SELECT r.price, r.currency FROM scheduler.rates r
    WHERE r.resource = res AND (r.tenant IS NULL OR r.tenant = who)
      AND r.valid_from <= at AND at < r.valid_to
    ORDER BY (r.tenant IS NOT NULL) DESC, r.valid_from DESC, r.id DESC
    LIMIT 1;
END;

-- 2. The label checks (0016, 0018) are CHECK constraints, evaluated on every UPDATE of a job
-- (about three per attempt: claim, start, end), each a call of a planned SQL function. The
-- empty set, which nearly every job has, is valid without the call.
ALTER TABLE scheduler.jobs DROP CONSTRAINT job_constraints_valid,
    ADD CONSTRAINT job_constraints_valid
        CHECK (constraints = '{}'::jsonb OR scheduler.label_set_valid(constraints)) NOT VALID;
ALTER TABLE scheduler.jobs VALIDATE CONSTRAINT job_constraints_valid;
-- NOT VALID as in 0018: rows from before 0018 are not checked again.
ALTER TABLE scheduler.jobs DROP CONSTRAINT job_labels_bounded,
    ADD CONSTRAINT job_labels_bounded
        CHECK (labels = '{}'::jsonb OR scheduler.labels_bounded(labels)) NOT VALID;
COMMENT ON CONSTRAINT job_labels_bounded ON scheduler.jobs IS
    'labels: at most 64 keys of 1-128 bytes without control characters, 8 KiB in all';

-- 3. Releasing dependents (0014) ran an UPDATE and two set_config calls for every job that
-- ended; now only for a job something waits on. The function's text is
-- migrations/definitions/jobs_release_dependents.sql (0014's with that guard).

-- 4. The claim: pending reasons are written at most once a second (the column below),
-- chain_totals is MATERIALIZED, and the per-row lookups of noted and candidates go through
-- the primary key. The function itself is no longer copied into numbered migrations: its
-- text is migrations/definitions/claim_jobs.sql (0017's with those changes, marked 0020),
-- applied after the numbered files whenever it changes (scheduler/db/migrate.py).
ALTER TABLE scheduler.claim_lock
    ADD COLUMN reasons_noted_at timestamptz NOT NULL DEFAULT '-infinity';
