-- Real-time rollups, plain-PostgreSQL mode: telemetry_1m and telemetry_1h
-- answer with every reading committed so far, not only what the last
-- Maintain materialized, as TimescaleDB's real-time continuous aggregates
-- do (timescale/00003_realtime_rollups.sql keeps those as they are).
--
-- The mark is rollup_progress.refreshed_to less rollupWindow (10 minutes,
-- storage/postgres/maintain.go), rounded down to the bucket width: commits
-- mark hours dirty only for readings older than 5 minutes, and Maintain
-- recomputes the last 10 minutes on every run, so buckets before the mark
-- are final unless their hour is dirty. A rollup row is used when its
-- bucket is before the mark, unless its hour is in rollup_dirty and raw
-- readings of that bucket exist (then those are aggregated instead; when raw
-- retention already dropped them the rollup row stands). Everything at or
-- after the mark, and the dirty hours before it, is aggregated from readings
-- at query time (readings_time BRIN, readings_series).
--
-- CREATE OR REPLACE keeps the grants of a query role (CreateQueryRole).
-- date_bin with a UTC origin buckets like Maintain, whatever the session's
-- TimeZone.

-- +goose Up
CREATE OR REPLACE VIEW telemetry_1m AS
-- materialized buckets before the mark, unless re-aggregated below
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1m r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id
WHERE r.bucket < (SELECT coalesce(date_bin('1 minute', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress)
  AND NOT EXISTS (SELECT 1 FROM rollup_dirty k
                  WHERE k.hour = date_bin('1 hour', r.bucket, timestamptz '2000-01-01 00:00:00+00')
                    AND EXISTS (SELECT 1 FROM readings x
                                WHERE x.device_id = r.device_id AND x.metric_id = r.metric_id
                                  AND x.time >= r.bucket AND x.time < r.bucket + interval '1 minute'))
UNION ALL
-- raw readings at or after the mark, and in dirty hours before it
SELECT a.bucket, d.device, m.metric, a.min, a.max, a.avg, a.count, a.last
FROM (SELECT date_bin('1 minute', f.time, timestamptz '2000-01-01 00:00:00+00') AS bucket, f.device_id, f.metric_id,
             min(f.value) AS min, max(f.value) AS max, avg(f.value) AS avg, count(*) AS count,
             (array_agg(f.value ORDER BY f.time DESC))[1] AS last
      FROM (SELECT r.time, r.device_id, r.metric_id, r.value
            FROM readings r
            WHERE r.time >= (SELECT coalesce(date_bin('1 minute', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress)
            UNION ALL
            SELECT r.time, r.device_id, r.metric_id, r.value
            FROM rollup_dirty k
            JOIN readings r ON r.time >= k.hour AND r.time < least(k.hour + interval '1 hour', (SELECT coalesce(date_bin('1 minute', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress))) f
      GROUP BY 1, 2, 3) a
JOIN device_ids d ON d.id = a.device_id
JOIN metrics m ON m.id = a.metric_id;

CREATE OR REPLACE VIEW telemetry_1h AS
-- materialized buckets before the mark, unless re-aggregated below
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1h r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id
WHERE r.bucket < (SELECT coalesce(date_bin('1 hour', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress)
  AND NOT EXISTS (SELECT 1 FROM rollup_dirty k
                  WHERE k.hour = date_bin('1 hour', r.bucket, timestamptz '2000-01-01 00:00:00+00')
                    AND EXISTS (SELECT 1 FROM readings x
                                WHERE x.device_id = r.device_id AND x.metric_id = r.metric_id
                                  AND x.time >= r.bucket AND x.time < r.bucket + interval '1 hour'))
UNION ALL
-- raw readings at or after the mark, and in dirty hours before it
SELECT a.bucket, d.device, m.metric, a.min, a.max, a.avg, a.count, a.last
FROM (SELECT date_bin('1 hour', f.time, timestamptz '2000-01-01 00:00:00+00') AS bucket, f.device_id, f.metric_id,
             min(f.value) AS min, max(f.value) AS max, avg(f.value) AS avg, count(*) AS count,
             (array_agg(f.value ORDER BY f.time DESC))[1] AS last
      FROM (SELECT r.time, r.device_id, r.metric_id, r.value
            FROM readings r
            WHERE r.time >= (SELECT coalesce(date_bin('1 hour', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress)
            UNION ALL
            SELECT r.time, r.device_id, r.metric_id, r.value
            FROM rollup_dirty k
            JOIN readings r ON r.time >= k.hour AND r.time < least(k.hour + interval '1 hour', (SELECT coalesce(date_bin('1 hour', refreshed_to - interval '10 minutes', timestamptz '2000-01-01 00:00:00+00'), '-infinity') FROM rollup_progress))) f
      GROUP BY 1, 2, 3) a
JOIN device_ids d ON d.id = a.device_id
JOIN metrics m ON m.id = a.metric_id;

-- +goose Down
CREATE OR REPLACE VIEW telemetry_1m AS
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1m r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;

CREATE OR REPLACE VIEW telemetry_1h AS
SELECT r.bucket, d.device, m.metric, r.min, r.max, r.avg, r.count, r.last
FROM rollup_1h r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;
