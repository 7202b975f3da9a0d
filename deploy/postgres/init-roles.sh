#!/bin/sh
# Runs once, as the PostgreSQL superuser, when the compose stack's database
# is first initialised (/docker-entrypoint-initdb.d). It gives Meridian a
# service role that is not a superuser and a query role for ad-hoc SQL
# (/v1/query), so a viewer key can never reach server files, replication or
# other roles' secrets (docs/sql.md, "Ad-hoc SQL and its role").
#
#   meridian        owns the database and its schema; runs the service and
#                   migrations. No superuser, replication or file rights.
#   meridian_query  logs in for /v1/query. `meridian migrate
#                   --create-query-role meridian_query` (the compose
#                   "migrate" service) grants it SELECT on the public views.
#
# The timescaledb extension is created here because creating it needs a
# superuser; the service role then finds it installed.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v service_pw="$SERVICE_DB_PASSWORD" -v query_pw="$QUERY_DB_PASSWORD" <<'SQL'
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE ROLE meridian LOGIN PASSWORD :'service_pw';
ALTER DATABASE meridian OWNER TO meridian;
ALTER SCHEMA public OWNER TO meridian;
CREATE ROLE meridian_query LOGIN PASSWORD :'query_pw'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE meridian_query SET default_transaction_read_only = on;
ALTER ROLE meridian_query CONNECTION LIMIT 8;
SQL
