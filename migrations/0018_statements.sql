-- Cost by label and closed statements (issue 19, items 3 and 4).

------------------------------------------------------------------------------------------
-- Labels are tenant input that every export now carries (FOCUS Tags, a CSV/JSON column) and
-- that `billing export --group-by label:KEY` groups by: bounded, so that one job cannot bloat
-- every line of a bill. Any JSON value is still allowed (numbers, lists: 0001 took them).
-- NOT VALID: rows written before this migration keep what they had; every new row is held
-- to it.
------------------------------------------------------------------------------------------
CREATE FUNCTION scheduler.labels_bounded(labels jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(labels) <> 'object' OR (
        octet_length(labels::text) <= 8192
        AND (SELECT count(*) FROM jsonb_object_keys(labels)) <= 64
        AND NOT EXISTS (SELECT 1 FROM jsonb_object_keys(labels) k
                        WHERE octet_length(k) NOT BETWEEN 1 AND 128 OR k ~ '[[:cntrl:]]'))
$$;
ALTER TABLE scheduler.jobs ADD CONSTRAINT job_labels_bounded
    CHECK (scheduler.labels_bounded(labels)) NOT VALID;
COMMENT ON CONSTRAINT job_labels_bounded ON scheduler.jobs IS
    'labels: at most 64 keys of 1-128 bytes without control characters, 8 KiB in all';

------------------------------------------------------------------------------------------
-- Closed statements. `scheduler billing close --period YYYY-MM` seals a UTC month: one row in
-- billing_periods, and per tenant with anything to bill a statement holding the exact JSON
-- export of that month (its lines and totals) and the SHA-256 of those bytes. Which usage
-- rows a statement priced is recorded in statement_usage (per job, the set of its seqs), not
-- by a mark on scheduler.usage, which stays as it is. A usage row of a closed month that no
-- statement of that month covers arrived late (committed after the close): the exports bill
-- it in the first open month, and the next close seals it there, with a note.
-- Months close in order: the first close may be any past month, each later one must be the
-- month after the last closed one, so the open months always follow the closed ones.
------------------------------------------------------------------------------------------
CREATE TABLE scheduler.billing_periods (
    period    date PRIMARY KEY,
    closed_at timestamptz NOT NULL DEFAULT now(),
    closed_by text NOT NULL DEFAULT session_user,
    CONSTRAINT billing_period_is_month CHECK (period = date_trunc('month', period)::date)
);

CREATE TABLE scheduler.statements (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period     date NOT NULL REFERENCES scheduler.billing_periods (period),
    tenant     text NOT NULL REFERENCES scheduler.tenants (name),
    body       text NOT NULL,
    sha256     text NOT NULL,
    totals     jsonb NOT NULL,
    lines      integer NOT NULL,
    usage_rows integer NOT NULL,
    late_rows  integer NOT NULL,
    CONSTRAINT statement_one_per_tenant UNIQUE (period, tenant),
    CONSTRAINT statement_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$')
);
COMMENT ON COLUMN scheduler.statements.body IS
    'The exact bytes (UTF-8) of `billing export --format json --tenant T` of the month at close';
COMMENT ON COLUMN scheduler.statements.sha256 IS 'SHA-256 of body, lower-case hex';

CREATE TABLE scheduler.statement_usage (
    statement_id bigint NOT NULL REFERENCES scheduler.statements (id),
    period       date NOT NULL,  -- the statement's (kept here: one index probe per row)
    tenant       text NOT NULL,
    job_id       bigint NOT NULL,
    seqs         int4multirange NOT NULL,
    PRIMARY KEY (statement_id, job_id)
);
-- "Did the statement of this row's month cover it?" asks by job and month, once per usage
-- row an export of a closed month reads.
CREATE INDEX statement_usage_job_idx ON scheduler.statement_usage (job_id, period);

-- Append-only, as scheduler.usage is (0001): a closed statement is never edited. Only the
-- owner can get past this, by disabling the trigger on purpose.
CREATE FUNCTION scheduler.statements_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % is not allowed (a closed statement is final)',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER billing_periods_append_only BEFORE UPDATE OR DELETE ON scheduler.billing_periods
    FOR EACH ROW EXECUTE FUNCTION scheduler.statements_append_only();
CREATE TRIGGER billing_periods_no_truncate BEFORE TRUNCATE ON scheduler.billing_periods
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.statements_append_only();
CREATE TRIGGER statements_append_only BEFORE UPDATE OR DELETE ON scheduler.statements
    FOR EACH ROW EXECUTE FUNCTION scheduler.statements_append_only();
CREATE TRIGGER statements_no_truncate BEFORE TRUNCATE ON scheduler.statements
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.statements_append_only();
CREATE TRIGGER statement_usage_append_only BEFORE UPDATE OR DELETE ON scheduler.statement_usage
    FOR EACH ROW EXECUTE FUNCTION scheduler.statements_append_only();
CREATE TRIGGER statement_usage_no_truncate BEFORE TRUNCATE ON scheduler.statement_usage
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.statements_append_only();

-- A tenant role reads its own subtree's statements, never another's, and writes none (it has
-- SELECT only). Which months are closed is no secret.
ALTER TABLE scheduler.statements ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.statements FORCE ROW LEVEL SECURITY;
CREATE POLICY statements_tenant_rows ON scheduler.statements
    -- The scalar subqueries make Postgres compute the role's tenants once per statement.
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL);
ALTER TABLE scheduler.statement_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE scheduler.statement_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY statement_usage_tenant_rows ON scheduler.statement_usage
    USING ((SELECT scheduler.role_tenants(current_user)) IS NULL
           OR tenant = ANY ((SELECT scheduler.role_tenants(current_user))::text[]))
    WITH CHECK ((SELECT scheduler.role_tenants(current_user)) IS NULL);

GRANT SELECT ON scheduler.billing_periods TO scheduler_tenant;
GRANT SELECT ON scheduler.statements TO scheduler_tenant;
GRANT SELECT ON scheduler.statement_usage TO scheduler_tenant;
