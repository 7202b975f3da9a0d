-- Readings, rollups and the public views, TimescaleDB mode. Replaces
-- postgres/00002_readings.sql when the timescaledb extension is available
-- (the store creates the extension before migrating).
--
-- Readings live in a hypertable with native compression; rollup_1m and
-- rollup_1h are continuous aggregates. Chunk interval and the compression,
-- retention and refresh policies depend on configuration, so the store sets
-- them at startup; Maintain also runs the same work by hand, because the
-- TimescaleDB job scheduler cannot be relied on everywhere.

-- +goose Up
INSERT INTO meridian_meta (key, value) VALUES ('mode', 'timescaledb');

CREATE TABLE readings (
    time      timestamptz      NOT NULL,
    device_id integer          NOT NULL,
    metric_id integer          NOT NULL,
    value     double precision NOT NULL
);
SELECT create_hypertable('readings', 'time', chunk_time_interval => INTERVAL '1 day');
CREATE INDEX readings_series ON readings (device_id, metric_id, time);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric_id',
    timescaledb.compress_orderby = 'time'
);

CREATE MATERIALIZED VIEW rollup_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       device_id,
       metric_id,
       min(value)        AS min,
       max(value)        AS max,
       avg(value)        AS avg,
       count(*)          AS count,
       last(value, time) AS last
FROM readings
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW rollup_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       device_id,
       metric_id,
       min(value)        AS min,
       max(value)        AS max,
       avg(value)        AS avg,
       count(*)          AS count,
       last(value, time) AS last
FROM readings
GROUP BY 1, 2, 3
WITH NO DATA;

-- Same late-data bookkeeping as plain mode: Maintain refreshes the
-- continuous aggregates over the marked hours.
CREATE SEQUENCE rollup_dirty_gen;
CREATE TABLE rollup_dirty (
    hour timestamptz PRIMARY KEY,
    gen  bigint NOT NULL
);

CREATE TABLE rollup_progress (
    refreshed_to timestamptz
);
INSERT INTO rollup_progress VALUES (NULL);

CREATE VIEW telemetry AS
SELECT r.time, d.device, m.metric, r.value
FROM readings r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;

CREATE VIEW telemetry_1m AS
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1m r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;

CREATE VIEW telemetry_1h AS
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1h r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;

-- +goose Down
DROP VIEW telemetry_1h;
DROP VIEW telemetry_1m;
DROP VIEW telemetry;
DROP TABLE rollup_progress;
DROP TABLE rollup_dirty;
DROP SEQUENCE rollup_dirty_gen;
DROP MATERIALIZED VIEW rollup_1h;
DROP MATERIALIZED VIEW rollup_1m;
DROP TABLE readings;
DELETE FROM meridian_meta WHERE key = 'mode';
