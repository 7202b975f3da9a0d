-- TimescaleDB mode's counterpart of postgres/00003_realtime_rollups.sql
-- (same version, so both modes stay at one schema version): nothing to do.
-- telemetry_1m and telemetry_1h read continuous aggregates created with
-- timescaledb.materialized_only = false, which already add the buckets
-- after the last refresh from the raw hypertable.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
