-- Readings, rollups and the public views, plain-PostgreSQL mode:
-- readings partitioned by day (declarative range partitioning), rollup
-- tables maintained by the service (Store.Maintain). timescale/ has the
-- TimescaleDB version of this file under the same name.

-- +goose Up
INSERT INTO meridian_meta (key, value) VALUES ('mode', 'postgres');

CREATE TABLE readings (
    time      timestamptz      NOT NULL,
    device_id integer          NOT NULL,
    metric_id integer          NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (time);

-- Rows whose day has no partition (late replays from before the oldest
-- partition, clocks far in the future) land here; creating a partition moves
-- its rows out, retention deletes old ones.
CREATE TABLE readings_default PARTITION OF readings DEFAULT;

CREATE INDEX readings_series ON readings (device_id, metric_id, time);
-- BRIN: nearly free to maintain on append-mostly data; serves time-range
-- scans across all series and retention in the default partition.
CREATE INDEX readings_time ON readings USING brin (time);

CREATE TABLE rollup_1m (
    bucket    timestamptz      NOT NULL,
    device_id integer          NOT NULL,
    metric_id integer          NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    avg       double precision NOT NULL,
    count     bigint           NOT NULL,
    last      double precision NOT NULL,
    PRIMARY KEY (device_id, metric_id, bucket)
);
CREATE INDEX rollup_1m_bucket ON rollup_1m (bucket);

-- INCLUDING ALL copies the primary key and the bucket index.
CREATE TABLE rollup_1h (LIKE rollup_1m INCLUDING ALL);

-- Hours that received late readings since the last refresh. gen changes on
-- every mark so Maintain only clears a mark it has acted on.
CREATE SEQUENCE rollup_dirty_gen;
CREATE TABLE rollup_dirty (
    hour timestamptz PRIMARY KEY,
    gen  bigint NOT NULL
);

-- How far the periodic refresh has got (one row).
CREATE TABLE rollup_progress (
    refreshed_to timestamptz
);
INSERT INTO rollup_progress VALUES (NULL);

-- meridian_ensure_partitions creates the daily partitions (UTC days) from
-- from_day for days days, moving any rows the default partition holds for
-- those days. Table names are built here, from a date, never from input.
-- +goose StatementBegin
CREATE FUNCTION meridian_ensure_partitions(from_day date, days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d    date;
    lo   timestamptz;
    hi   timestamptz;
    part text;
    made integer := 0;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        part := 'readings_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        -- Keep writers out of the default partition while its rows for this
        -- day move, so ATTACH finds none left behind.
        LOCK TABLE readings_default IN EXCLUSIVE MODE;
        EXECUTE format('CREATE TABLE %I (LIKE readings)', part);
        EXECUTE format('WITH moved AS (DELETE FROM readings_default WHERE time >= %L AND time < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;
-- +goose StatementEnd

-- meridian_drop_partitions drops the daily partitions wholly older than
-- cutoff and deletes older rows from the default partition.
-- +goose StatementBegin
CREATE FUNCTION meridian_drop_partitions(cutoff timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass
          AND c.relname ~ '^readings_p[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        IF (to_date(substr(r.relname, 11), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM readings_default WHERE time < cutoff;
    RETURN dropped;
END
$$;
-- +goose StatementEnd

SELECT meridian_ensure_partitions((now() AT TIME ZONE 'UTC')::date, 3);

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
DROP FUNCTION meridian_drop_partitions(timestamptz);
DROP FUNCTION meridian_ensure_partitions(date, integer);
DROP TABLE rollup_progress;
DROP TABLE rollup_dirty;
DROP SEQUENCE rollup_dirty_gen;
DROP TABLE rollup_1h;
DROP TABLE rollup_1m;
DROP TABLE readings;
DELETE FROM meridian_meta WHERE key = 'mode';
