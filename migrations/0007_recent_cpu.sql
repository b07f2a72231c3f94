-- Fair share without a scan of the usage table: each tenant's recent cpu use, decayed with a
-- half-life, kept up to date by the usage inserts themselves. The claim statement used to sum
-- every usage row of the last ten half-lives (50 minutes) on every claim, a cost that grew
-- with the throughput (about 1 ms per claim per 2,000 rows here).
--
-- cpu_seconds is the sum over the tenant's usage rows of cpu_seconds * 2^(-age / half_life),
-- ages taken at as_of; a reader decays it further to its own now(). Exponential decay
-- composes, so this equals the old per-row sum (without its 50-minute cut-off). Ages are
-- capped at 100 half-lives (a factor of 2^-100), so the decay never underflows.

CREATE FUNCTION scheduler.fair_share_half_life() RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 300::numeric $$;

COMMENT ON FUNCTION scheduler.fair_share_half_life() IS
    'Seconds in which a tenant''s recent cpu use loses half its weight in the fair share '
    '(scheduler/policy/fairshare.py HALF_LIFE_SECONDS)';

-- 2^(-seconds / half_life) for an age in seconds (negative ages count as 0).
CREATE FUNCTION scheduler.fair_share_decay(seconds numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT exp(-ln(2) * least(greatest(seconds, 0), 100 * scheduler.fair_share_half_life())
               / scheduler.fair_share_half_life())
$$;

CREATE TABLE scheduler.tenant_recent_cpu (
    tenant      text PRIMARY KEY,
    cpu_seconds numeric NOT NULL,
    as_of       timestamptz NOT NULL
);

CREATE FUNCTION scheduler.usage_recent_cpu() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- In tenant order, so that concurrent inserts take the tenants' rows in one order.
    INSERT INTO scheduler.tenant_recent_cpu AS t (tenant, cpu_seconds, as_of)
    SELECT n.tenant,
           sum(n.cpu_seconds
               * scheduler.fair_share_decay(extract(epoch FROM now() - n.period_end))),
           now()
    FROM new_rows n
    GROUP BY n.tenant
    ORDER BY n.tenant
    ON CONFLICT (tenant) DO UPDATE
    SET cpu_seconds = t.cpu_seconds
                      * scheduler.fair_share_decay(extract(epoch FROM excluded.as_of - t.as_of))
                      + excluded.cpu_seconds,
        as_of = greatest(t.as_of, excluded.as_of);
    RETURN NULL;
END;
$$;

CREATE TRIGGER usage_recent_cpu AFTER INSERT ON scheduler.usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.usage_recent_cpu();

INSERT INTO scheduler.tenant_recent_cpu (tenant, cpu_seconds, as_of)
SELECT u.tenant,
       sum(u.cpu_seconds * scheduler.fair_share_decay(extract(epoch FROM now() - u.period_end))),
       now()
FROM scheduler.usage u
WHERE u.period_end > now() - make_interval(secs => 100 * scheduler.fair_share_half_life())
GROUP BY u.tenant;
