-- A role for Grafana that can read the scheduler schema and nothing else.
-- Run it as the role that runs the migrations (the agent's database user), in the scheduler
-- database, before or after the first `scheduler migrate`:
--     psql -v ON_ERROR_STOP=1 -d scheduler -f deploy/postgres/grafana-readonly.sql
--     psql -d scheduler -c "ALTER ROLE grafana_ro PASSWORD '...'"
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_ro') THEN
        CREATE ROLE grafana_ro LOGIN;
    END IF;
END
$$;

-- Every session of the role is read-only and cannot run away with the server.
ALTER ROLE grafana_ro SET default_transaction_read_only = on;
ALTER ROLE grafana_ro SET statement_timeout = '30s';

-- The migrations create the schema with IF NOT EXISTS: creating it here first is harmless.
CREATE SCHEMA IF NOT EXISTS scheduler;
GRANT USAGE ON SCHEMA scheduler TO grafana_ro;
GRANT SELECT ON ALL TABLES IN SCHEMA scheduler TO grafana_ro;
-- Tables and views of later migrations (created by this same role) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA scheduler GRANT SELECT ON TABLES TO grafana_ro;
