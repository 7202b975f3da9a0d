package postgres

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// pauseJobs unschedules the database's TimescaleDB jobs (the policies
// setup just added), so the background scheduler cannot compress, drop or
// refresh under a test at a moment of its choosing: tests call Maintain, or
// run a policy by hand with CALL run_job, when they mean it. Maintain's
// tolerance of a policy running alongside is tested on its own
// (TestTimescaleMaintainWithPolicies).
func pauseJobs(tb testing.TB, s *Store) {
	tb.Helper()
	if _, err := s.pool.Exec(context.Background(),
		`SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs WHERE scheduled`); err != nil {
		tb.Fatalf("pause TimescaleDB jobs: %v", err)
	}
	// The scheduler may have started a job before the pause; wait for it.
	// Job workers show in pg_stat_activity as "<job name> [<job id>]".
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var running int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type ~ '\[[0-9]+\]$'`).Scan(&running); err != nil {
			tb.Fatalf("wait for TimescaleDB jobs: %v", err)
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d TimescaleDB jobs still running 30s after pausing them", running)
		}
	}
}

// openTimescale opens a store on a fresh database with cfg (URL filled in)
// and skips the test unless it runs in TimescaleDB mode.
func openTimescale(t *testing.T, cfg Config) *Store {
	t.Helper()
	cfg.URL = newTestDB(t)
	s := openTestStoreConfig(t, cfg)
	if s.Mode() != storage.ModeTimescale {
		t.Skipf("mode %s: TimescaleDB only (install the extension and preload it to run)", s.Mode())
	}
	return s
}

// policyJobs maps "proc_name hypertable" to the job id of each policy.
func policyJobs(t *testing.T, s *Store) map[string]int {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT proc_name || ' ' || hypertable_name, job_id
		FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var id int
		if err := rows.Scan(&k, &id); err != nil {
			t.Fatal(err)
		}
		out[k] = id
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func scalar[T any](t *testing.T, s *Store, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := s.pool.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func minuteReadings(metric string, from time.Time, n int, step time.Duration) []telemetry.Reading {
	rs := make([]telemetry.Reading, n)
	for i := range rs {
		rs[i] = telemetry.Reading{Time: from.Add(time.Duration(i) * step).UnixMilli(), Metric: metric, Value: float64(i%17) - 3.5}
	}
	return rs
}

// TestTimescaleSetup: the hypertable, compression settings and policies
// follow the configuration, each policy does its job when run by hand
// (CALL run_job; the background scheduler is not relied on), and a restart
// with another configuration replaces the policies.
func TestTimescaleSetup(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ChunkInterval = 6 * time.Hour
	cfg.CompressAfter = 2 * 24 * time.Hour
	cfg.Retention = storage.Retention{Raw: 10 * 24 * time.Hour, Rollups: 30 * 24 * time.Hour}
	s := openTimescale(t, cfg)
	ctx := context.Background()

	if got := scalar[float64](t, s, `SELECT extract(epoch FROM time_interval)::float8 FROM timescaledb_information.dimensions
		WHERE hypertable_name = 'readings' AND column_name = 'time'`); got != cfg.ChunkInterval.Seconds() {
		t.Errorf("chunk interval %vs, want %v", got, cfg.ChunkInterval)
	}
	seg := scalar[string](t, s, `SELECT segmentby FROM timescaledb_information.hypertable_compression_settings WHERE hypertable = 'readings'::regclass`)
	ord := scalar[string](t, s, `SELECT orderby FROM timescaledb_information.hypertable_compression_settings WHERE hypertable = 'readings'::regclass`)
	if seg != "device_id,metric_id" || strings.ReplaceAll(ord, `"`, "") != "time" {
		t.Errorf("compression segmentby %q orderby %q, want device_id,metric_id and time", seg, ord)
	}

	// Each policy with its configured offsets (intervals compare by value).
	jobs := policyJobs(t, s)
	for _, c := range []struct {
		job, key string
		want     time.Duration
	}{
		{"policy_compression readings", "compress_after", cfg.CompressAfter},
		{"policy_retention readings", "drop_after", cfg.Retention.Raw},
		{"policy_retention rollup_1m", "drop_after", cfg.Retention.Rollups},
		{"policy_retention rollup_1h", "drop_after", cfg.Retention.Rollups},
		{"policy_refresh_continuous_aggregate rollup_1m", "start_offset", 2 * rollupWindow},
		{"policy_refresh_continuous_aggregate rollup_1m", "end_offset", time.Minute},
		{"policy_refresh_continuous_aggregate rollup_1h", "start_offset", 2*rollupWindow + 3*time.Hour},
		{"policy_refresh_continuous_aggregate rollup_1h", "end_offset", time.Hour},
	} {
		id, ok := jobs[c.job]
		if !ok {
			t.Errorf("no %s job (jobs: %v)", c.job, jobs)
			continue
		}
		if !scalar[bool](t, s, `SELECT (config->>$2)::interval = $3::interval FROM timescaledb_information.jobs WHERE job_id = $1`, id, c.key, c.want) {
			t.Errorf("%s: %s is not %v: %s", c.job, c.key, c.want, scalar[string](t, s, `SELECT config::text FROM timescaledb_information.jobs WHERE job_id = $1`, id))
		}
	}
	if len(jobs) != 6 {
		t.Errorf("%d policy jobs, want 6: %v", len(jobs), jobs)
	}

	// Data for every policy: expired, compressible, and recent enough for
	// the refresh policies' windows.
	now := time.Now().UTC().Truncate(time.Second)
	old, mid, recent := now.Add(-12*24*time.Hour), now.Add(-3*24*time.Hour), now.Add(-15*time.Minute)
	for i, from := range []time.Time{old, mid, recent} {
		if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "pol", Seq: uint64(i + 1), Readings: minuteReadings("m", from, 10, time.Minute)}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM timescaledb_information.chunks
		WHERE hypertable_name = 'readings' AND range_end - range_start <> $1::interval`, cfg.ChunkInterval); n != 0 {
		t.Errorf("%d chunks not %v wide", n, cfg.ChunkInterval)
	}
	for _, job := range []string{
		"policy_refresh_continuous_aggregate rollup_1m", "policy_refresh_continuous_aggregate rollup_1h",
		"policy_compression readings", "policy_retention readings",
		"policy_retention rollup_1m", "policy_retention rollup_1h",
	} {
		if _, err := s.pool.Exec(ctx, `CALL run_job($1)`, jobs[job]); err != nil {
			t.Fatalf("run %s: %v", job, err)
		}
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM telemetry WHERE time < $1`, old.Add(24*time.Hour)); n != 0 {
		t.Errorf("retention policy left %d readings 12 days old", n)
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM timescaledb_information.chunks
		WHERE hypertable_name = 'readings' AND is_compressed AND range_start <= $1 AND range_end > $1`, mid); n != 1 {
		t.Errorf("compression policy: chunk of 3-day-old readings not compressed")
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM telemetry WHERE time >= $1 AND time < $2`, mid, mid.Add(time.Hour)); n != 10 {
		t.Errorf("%d readings in the compressed chunk, want 10", n)
	}
	mat, err := materializedTable(ctx, s.pool, "rollup_1m")
	if err != nil {
		t.Fatal(err)
	}
	// The 1m policy materializes complete minutes of its window.
	if n := scalar[int64](t, s, `SELECT coalesce(sum(count), 0)::bigint FROM `+mat+` WHERE bucket >= $1`, recent.Truncate(time.Minute)); n < 9 {
		t.Errorf("refresh policy materialized %d recent readings, want at least 9", n)
	}

	// A restart with compression off and no raw retention drops those
	// policies and keeps the others.
	cfg2 := cfg
	cfg2.URL = s.cfg.URL
	cfg2.CompressAfter = 0
	cfg2.Retention.Raw = 0
	openTestStoreConfig(t, cfg2)
	jobs = policyJobs(t, s)
	for _, gone := range []string{"policy_compression readings", "policy_retention readings"} {
		if _, ok := jobs[gone]; ok {
			t.Errorf("%s still there after a restart without it", gone)
		}
	}
	if len(jobs) != 4 {
		t.Errorf("%d policy jobs after restart, want 4: %v", len(jobs), jobs)
	}
}

// TestTimescaleRealtimeAndPurge: after Maintain, readings in the bucket
// still filling show in the rollups at once (real-time aggregation above
// the watermark), and purging a device removes its materialized buckets.
func TestTimescaleRealtimeAndPurge(t *testing.T) {
	s := openTimescale(t, DefaultConfig())
	ctx := context.Background()
	now := time.Now().UTC()
	// Late readings (dirty marks) over the last 40 minutes, up to 6 minutes ago.
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "rt", Seq: 1, Readings: minuteReadings("m", now.Add(-40*time.Minute), 34*6, 10*time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Maintain(ctx, now); err != nil {
		t.Fatal(err)
	}
	fresh := time.Now().UTC()
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "rt", Seq: 2, Readings: minuteReadings("m", fresh, 3, time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	total := int64(34*6 + 3)
	for _, view := range []string{"telemetry_1m", "telemetry_1h"} {
		if n := scalar[int64](t, s, `SELECT coalesce(sum(count), 0)::bigint FROM `+view+` WHERE device = 'rt'`); n != total {
			t.Errorf("%s holds %d readings right after a commit, want %d", view, n, total)
		}
	}
	if err := s.DeleteDevice(ctx, "rt", true); err != nil {
		t.Fatal(err)
	}
	if err := s.Maintain(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, view := range []string{"telemetry", "telemetry_1m", "telemetry_1h"} {
		if n := scalar[int64](t, s, `SELECT count(*) FROM `+view+` WHERE device = 'rt'`); n != 0 {
			t.Errorf("%s has %d rows of the purged device", view, n)
		}
	}
}

// TestTimescaleMaintainWithPolicies runs Maintain while the policies run
// (as the scheduler would, where it works): Maintain must not fail on their
// concurrent refreshes, compressions and drops, and once they are done a
// last Maintain leaves the rollups complete.
func TestTimescaleMaintainWithPolicies(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ChunkInterval = time.Hour
	cfg.CompressAfter = 3 * time.Hour
	cfg.Retention = storage.Retention{Raw: 7 * 24 * time.Hour, Rollups: 30 * 24 * time.Hour}
	s := openTimescale(t, cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	var seq uint64
	var want int64
	for h := 20; h >= 0; h-- {
		seq++
		rs := minuteReadings("m", now.Add(-time.Duration(h)*time.Hour-59*time.Minute), 59, time.Minute)
		want += int64(len(rs))
		if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "conc", Seq: seq, Readings: rs}}); err != nil {
			t.Fatal(err)
		}
	}
	jobs := policyJobs(t, s)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for name, id := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			failed := 0
			defer func() {
				if failed > 0 {
					t.Logf("%s failed %d times alongside Maintain", name, failed)
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Policies may fail on Maintain's work in turn; that is
				// the scheduler's to retry, not this test's concern.
				if _, err := s.pool.Exec(ctx, `CALL run_job($1)`, id); err != nil {
					failed++
					if failed == 1 {
						t.Logf("%s: %v", name, err)
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	for i := range 6 {
		if err := s.Maintain(ctx, now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Errorf("Maintain %d alongside the policies: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if err := s.Maintain(ctx, now.Add(10*time.Second)); err != nil {
		t.Fatalf("Maintain after the policies: %v", err)
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM telemetry WHERE device = 'conc'`); n != want {
		t.Fatalf("%d readings, want %d", n, want)
	}
	if n := scalar[int64](t, s, `SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'readings' AND is_compressed`); n == 0 {
		t.Error("no chunk compressed")
	}
	// Complete buckets are materialized; the one still filling is computed
	// at query time. Either way every reading is counted once.
	for _, view := range []string{"telemetry_1m", "telemetry_1h"} {
		if n := scalar[int64](t, s, `SELECT coalesce(sum(count), 0)::bigint FROM `+view+` WHERE device = 'conc'`); n != want {
			t.Errorf("%s counts %d readings, want %d", view, n, want)
		}
	}
}

// TestModesAgree stores the same readings (with late data) in a plain and
// a TimescaleDB database on the same server, maintains both as of the same
// time, and compares the public views, Series and every example query of
// docs/sql.md.
func TestModesAgree(t *testing.T) {
	ts := openTimescale(t, DefaultConfig())
	pcfg := DefaultConfig()
	pcfg.URL = newTestDB(t)
	pcfg.plainOnly = true
	plain := openTestStoreConfig(t, pcfg)
	ctx := context.Background()
	now := time.Now().UTC()
	start := now.Add(-50 * time.Hour).Truncate(time.Minute)
	var flushes [][]telemetry.Batch
	seq := map[string]uint64{}
	for _, dev := range []string{"boiler-1", "boiler-2", "pump-7"} {
		for day := 0; day < 3; day++ {
			var rs []telemetry.Reading
			for at := start.Add(time.Duration(day) * 24 * time.Hour); at.Before(now) && at.Before(start.Add(time.Duration(day+1)*24*time.Hour)); at = at.Add(time.Minute) {
				i := int(at.Sub(start) / time.Minute)
				if dev == "pump-7" && at.After(now.Add(-3*time.Hour)) {
					break
				}
				rs = append(rs,
					telemetry.Reading{Time: at.UnixMilli(), Metric: "temp", Value: 20 + math.Sin(float64(i)/40)*5 + float64(len(dev))},
					telemetry.Reading{Time: at.Add(time.Second).UnixMilli(), Metric: "humidity", Value: float64(40 + i%30)})
			}
			seq[dev]++
			flushes = append(flushes, []telemetry.Batch{{Device: dev, Seq: seq[dev], Readings: rs}})
		}
	}
	for _, f := range flushes {
		for _, s := range []*Store{ts, plain} {
			if _, err := s.Commit(ctx, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []*Store{ts, plain} {
		if err := s.Maintain(ctx, now); err != nil {
			t.Fatal(err)
		}
	}
	// Late data into buckets already rolled up, then another Maintain.
	late := []telemetry.Batch{{Device: "boiler-1", Seq: seq["boiler-1"] + 1, Readings: []telemetry.Reading{
		{Time: start.Add(90*time.Minute + 30*time.Second).UnixMilli(), Metric: "temp", Value: 99},
		{Time: start.Add(30*time.Hour + 5*time.Second).UnixMilli(), Metric: "temp", Value: -40},
		{Time: start.Add(30*time.Hour + 6*time.Second).UnixMilli(), Metric: "pressure", Value: 1.5},
	}}}
	for _, s := range []*Store{ts, plain} {
		if _, err := s.Commit(ctx, late); err != nil {
			t.Fatal(err)
		}
		if err := s.Maintain(ctx, now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}

	compare := func(name, sql string) {
		t.Helper()
		// The queries may use now(); if the two runs straddle a reading's
		// edge, run the pair again.
		var diff string
		for range 2 {
			a, err := ts.Query(ctx, sql, storage.QueryOptions{MaxRows: 100000})
			if err != nil {
				t.Errorf("%s on TimescaleDB: %v", name, err)
				return
			}
			b, err := plain.Query(ctx, sql, storage.QueryOptions{MaxRows: 100000})
			if err != nil {
				t.Errorf("%s on plain PostgreSQL: %v", name, err)
				return
			}
			if diff = diffResults(a, b); diff == "" {
				return
			}
		}
		t.Errorf("%s: TimescaleDB and plain PostgreSQL differ: %s\n%s", name, diff, sql)
	}
	compare("telemetry", `SELECT time, device, metric, value FROM telemetry ORDER BY time, device, metric`)
	compare("telemetry_1m", `SELECT bucket, device, metric, min, max, avg, count, last FROM telemetry_1m ORDER BY bucket, device, metric`)
	compare("telemetry_1h", `SELECT bucket, device, metric, min, max, avg, count, last FROM telemetry_1h ORDER BY bucket, device, metric`)
	compare("devices", `SELECT device, name, labels, enabled, last_seen, acked_seq FROM devices ORDER BY device`)
	compare("metrics", `SELECT metric FROM metrics ORDER BY metric`)
	compare("column types", `SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_name IN ('telemetry', 'telemetry_1m', 'telemetry_1h', 'devices', 'metrics') ORDER BY table_name, ordinal_position`)

	f, err := os.Open(storagetest.DocsPath)
	if err != nil {
		t.Fatal(err)
	}
	examples, err := storagetest.ParseDocExamples(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range examples {
		for i, q := range e.For(storage.ModePostgres) {
			compare(fmt.Sprintf("docs/sql.md %q block %d", e.Heading, i), q)
		}
	}

	for _, req := range []storage.SeriesRequest{
		{Device: "boiler-1", Metric: "temp", From: start, To: now.Add(time.Minute), Points: 100},
		{Device: "boiler-1", Metric: "temp", From: now.Add(-6 * time.Hour), To: now, Points: 50},
		{Device: "boiler-2", Metric: "humidity", From: now.Add(-30 * time.Minute), To: now, Points: 1000},
		{Device: "pump-7", Metric: "temp", From: start, To: now, Points: 7},
	} {
		a, err := ts.Series(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := plain.Series(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if a.Source != b.Source || a.Bucket != b.Bucket || len(a.Points) != len(b.Points) {
			t.Errorf("Series %s/%s %v: TimescaleDB %s/%v/%d points, plain %s/%v/%d", req.Device, req.Metric, req.To.Sub(req.From),
				a.Source, a.Bucket, len(a.Points), b.Source, b.Bucket, len(b.Points))
			continue
		}
		for i := range a.Points {
			p, q := a.Points[i], b.Points[i]
			if !p.Time.Equal(q.Time) || p.Count != q.Count || !nearlyEqual(p.Min, q.Min) || !nearlyEqual(p.Max, q.Max) || !nearlyEqual(p.Avg, q.Avg) || !nearlyEqual(p.Last, q.Last) {
				t.Errorf("Series %s/%s point %d: TimescaleDB %+v, plain %+v", req.Device, req.Metric, i, p, q)
				break
			}
		}
	}
}

func nearlyEqual(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}

// diffResults describes the first difference between two results, "" when
// they agree (floats to 1e-9 relative).
func diffResults(a, b storage.QueryResult) string {
	if strings.Join(a.Columns, ",") != strings.Join(b.Columns, ",") {
		return fmt.Sprintf("columns %v vs %v", a.Columns, b.Columns)
	}
	if len(a.Rows) != len(b.Rows) {
		return fmt.Sprintf("%d rows vs %d", len(a.Rows), len(b.Rows))
	}
	for i := range a.Rows {
		for j := range a.Rows[i] {
			x, y := a.Rows[i][j], b.Rows[i][j]
			if fx, ok := x.(float64); ok {
				if fy, ok := y.(float64); ok && nearlyEqual(fx, fy) {
					continue
				}
			}
			if tx, ok := x.(time.Time); ok {
				if ty, ok := y.(time.Time); ok && tx.Equal(ty) {
					continue
				}
			}
			if fmt.Sprint(x) != fmt.Sprint(y) {
				return fmt.Sprintf("row %d column %s: %v vs %v", i, a.Columns[j], x, y)
			}
		}
	}
	return ""
}
