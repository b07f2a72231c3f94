#!/bin/sh
# Run once by the postgres image on an empty data directory: Grafana's read-only role.
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /scheduler/grafana-readonly.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
    -v password="$GRAFANA_PG_PASSWORD" <<'SQL'
ALTER ROLE grafana_ro PASSWORD :'password';
SQL
