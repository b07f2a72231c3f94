-- Accounting: rollups of the billing rows for dashboards, and what the export reads fast.
-- A row belongs to the hour (and day) in which its period ends, in UTC: the same rule the
-- billing export uses for --from/--to, so a dashboard and an invoice of one window agree.

-- The export and the rollups scan a window of period_end per tenant; rates are looked up by
-- resource and tenant.
CREATE INDEX rates_lookup_idx ON scheduler.rates (resource, tenant, valid_from);

CREATE VIEW scheduler.usage_hourly AS
SELECT date_trunc('hour', u.period_end AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS "time",
       u.tenant,
       count(DISTINCT u.job_id) AS jobs,
       count(*) AS periods,
       sum(u.cpu_seconds) AS cpu_seconds,
       sum(u.memory_byte_seconds) AS memory_byte_seconds,
       sum(u.memory_byte_seconds) / (1073741824::numeric * 3600) AS memory_gib_hours,
       max(u.memory_peak_bytes) AS memory_peak_bytes,
       sum(u.io_read_bytes)::numeric AS io_read_bytes,
       sum(u.io_write_bytes)::numeric AS io_write_bytes
FROM scheduler.usage u
GROUP BY 1, u.tenant;

COMMENT ON VIEW scheduler.usage_hourly IS
    'Billing rows summed per tenant and UTC hour of period_end ("time" is what Grafana plots).';

CREATE VIEW scheduler.usage_daily AS
SELECT date_trunc('day', u.period_end AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS "time",
       u.tenant,
       count(DISTINCT u.job_id) AS jobs,
       count(*) AS periods,
       sum(u.cpu_seconds) AS cpu_seconds,
       sum(u.memory_byte_seconds) AS memory_byte_seconds,
       sum(u.memory_byte_seconds) / (1073741824::numeric * 3600) AS memory_gib_hours,
       max(u.memory_peak_bytes) AS memory_peak_bytes,
       sum(u.io_read_bytes)::numeric AS io_read_bytes,
       sum(u.io_write_bytes)::numeric AS io_write_bytes
FROM scheduler.usage u
GROUP BY 1, u.tenant;

COMMENT ON VIEW scheduler.usage_daily IS
    'Billing rows summed per tenant and UTC day of period_end ("time" is what Grafana plots).';
