-- Real-time rollups: telemetry_1m and telemetry_1h answer with every
-- reading committed so far, not only what the last Maintain materialized
-- (as TimescaleDB's real-time continuous aggregates do).
--
-- mark is the last refresh (meridian_meta.rollup_refreshed_to) rounded down
-- to the bucket width. A rollup row is used when its bucket is before the
-- mark, unless its hour was marked dirty by late readings and raw readings
-- of that bucket exist (then the raw readings are aggregated instead; when
-- raw retention already removed them, the rollup row stands). Everything at
-- or after the mark, and the dirty hours below it, is aggregated from
-- readings at query time: at most one refresh interval of data per device
-- plus the dirty hours, read through readings_device_time.
--
-- No WITH in these views: the query authorizer (storage/sqlite/query.go)
-- admits internal-table reads by the name of the view making them, and
-- inside a CTE SQLite reports the CTE's name instead.
--
-- Bucket arithmetic floors (t - ((t % w) + w) % w) so times before 1970
-- bucket like Maintain's floorDiv. Ties on time: the later insert (higher
-- rowid) is last, as in Maintain. -9e18 stands for "never refreshed"; it
-- is a multiple of both widths.

-- +goose Up
DROP VIEW telemetry_1m;
DROP VIEW telemetry_1h;

CREATE VIEW telemetry_1m AS
-- materialized buckets before the mark, unless re-aggregated below
SELECT strftime('%Y-%m-%d %H:%M:%f', r.bucket / 1000.0, 'unixepoch') AS bucket,
       d.device AS device, m.metric AS metric,
       r.min AS min, r.max AS max, r.sum / r.count AS avg, r.count AS count, r.last AS last
FROM rollup_1m r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id
WHERE r.bucket < (SELECT w - ((w % 60000) + 60000) % 60000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w))
  AND NOT EXISTS (SELECT 1 FROM rollup_dirty k
                  WHERE k.device_id = r.device_id AND k.hour = r.bucket - ((r.bucket % 3600000) + 3600000) % 3600000
                    AND EXISTS (SELECT 1 FROM readings x
                                WHERE x.device_id = r.device_id AND x.t_ms >= r.bucket AND x.t_ms < r.bucket + 60000
                                  AND x.metric_id = r.metric_id))
UNION ALL
-- raw readings at or after the mark, and in dirty hours before it
SELECT strftime('%Y-%m-%d %H:%M:%f', a.bucket / 1000.0, 'unixepoch'),
       d.device, m.metric, a.min, a.max, a.sum / a.count, a.count, a.last
FROM (SELECT bucket, device_id, metric_id, min(value) AS min, max(value) AS max, sum(value) AS sum,
             count(*) AS count, max(last) AS last
      FROM (SELECT bucket, device_id, metric_id, value,
                   first_value(value) OVER (PARTITION BY device_id, metric_id, bucket ORDER BY t_ms DESC, rid DESC) AS last
            FROM (SELECT device_id, metric_id, t_ms - ((t_ms % 60000) + 60000) % 60000 AS bucket, value, t_ms, rid
                  FROM (SELECT r.device_id, r.metric_id, r.t_ms, r.value, r.rowid AS rid
                        FROM (SELECT (SELECT w - ((w % 60000) + 60000) % 60000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w)) AS w) mark, device_ids d
                        JOIN readings r ON r.device_id = d.id AND r.t_ms >= mark.w
                        UNION ALL
                        SELECT r.device_id, r.metric_id, r.t_ms, r.value, r.rowid
                        FROM (SELECT (SELECT w - ((w % 60000) + 60000) % 60000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w)) AS w) mark, rollup_dirty k
                        JOIN readings r ON r.device_id = k.device_id AND r.t_ms >= k.hour
                                       AND r.t_ms < min(k.hour + 3600000, mark.w))))
      GROUP BY bucket, device_id, metric_id) a
JOIN device_ids d ON d.id = a.device_id
JOIN metrics m ON m.id = a.metric_id;

CREATE VIEW telemetry_1h AS
-- materialized buckets before the mark, unless re-aggregated below
SELECT strftime('%Y-%m-%d %H:%M:%f', r.bucket / 1000.0, 'unixepoch') AS bucket,
       d.device AS device, m.metric AS metric,
       r.min AS min, r.max AS max, r.sum / r.count AS avg, r.count AS count, r.last AS last
FROM rollup_1h r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id
WHERE r.bucket < (SELECT w - ((w % 3600000) + 3600000) % 3600000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w))
  AND NOT EXISTS (SELECT 1 FROM rollup_dirty k
                  WHERE k.device_id = r.device_id AND k.hour = r.bucket
                    AND EXISTS (SELECT 1 FROM readings x
                                WHERE x.device_id = r.device_id AND x.t_ms >= r.bucket AND x.t_ms < r.bucket + 3600000
                                  AND x.metric_id = r.metric_id))
UNION ALL
-- raw readings at or after the mark, and in dirty hours before it
SELECT strftime('%Y-%m-%d %H:%M:%f', a.bucket / 1000.0, 'unixepoch'),
       d.device, m.metric, a.min, a.max, a.sum / a.count, a.count, a.last
FROM (SELECT bucket, device_id, metric_id, min(value) AS min, max(value) AS max, sum(value) AS sum,
             count(*) AS count, max(last) AS last
      FROM (SELECT bucket, device_id, metric_id, value,
                   first_value(value) OVER (PARTITION BY device_id, metric_id, bucket ORDER BY t_ms DESC, rid DESC) AS last
            FROM (SELECT device_id, metric_id, t_ms - ((t_ms % 3600000) + 3600000) % 3600000 AS bucket, value, t_ms, rid
                  FROM (SELECT r.device_id, r.metric_id, r.t_ms, r.value, r.rowid AS rid
                        FROM (SELECT (SELECT w - ((w % 3600000) + 3600000) % 3600000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w)) AS w) mark, device_ids d
                        JOIN readings r ON r.device_id = d.id AND r.t_ms >= mark.w
                        UNION ALL
                        SELECT r.device_id, r.metric_id, r.t_ms, r.value, r.rowid
                        FROM (SELECT (SELECT w - ((w % 3600000) + 3600000) % 3600000 FROM (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = 'rollup_refreshed_to'), -9000000000000000000) AS w)) AS w) mark, rollup_dirty k
                        JOIN readings r ON r.device_id = k.device_id AND r.t_ms >= k.hour
                                       AND r.t_ms < min(k.hour + 3600000, mark.w))))
      GROUP BY bucket, device_id, metric_id) a
JOIN device_ids d ON d.id = a.device_id
JOIN metrics m ON m.id = a.metric_id;

-- +goose Down
DROP VIEW telemetry_1h;
DROP VIEW telemetry_1m;

CREATE VIEW telemetry_1m AS
SELECT strftime('%Y-%m-%d %H:%M:%f', r.bucket / 1000.0, 'unixepoch') AS bucket,
       d.device AS device, m.metric AS metric,
       r.min AS min, r.max AS max, r.sum / r.count AS avg, r.count AS count, r.last AS last
FROM rollup_1m r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;

CREATE VIEW telemetry_1h AS
SELECT strftime('%Y-%m-%d %H:%M:%f', r.bucket / 1000.0, 'unixepoch') AS bucket,
       d.device AS device, m.metric AS metric,
       r.min AS min, r.max AS max, r.sum / r.count AS avg, r.count AS count, r.last AS last
FROM rollup_1h r
JOIN device_ids d ON d.id = r.device_id
JOIN metrics m ON m.id = r.metric_id;
