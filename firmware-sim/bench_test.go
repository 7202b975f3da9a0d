package sim_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// benchReadings is the size of one benchmark operation: one fleet run that
// generates this many readings and waits for every ack.
const benchReadings = 200_000

// BenchmarkIngestPostgres measures sustained ingest through the whole path:
// simulated devices (WebSocket, real protocol) -> ingest server -> the
// PostgreSQL backend, in one process. One op is a run of benchReadings
// readings; readings/s counts readings acked durable per wall second
// (generation plus the wait for the last acks). Run with -benchtime=1x or
// a small count: each op takes seconds.
//
//	go test -run '^$' -bench IngestPostgres -benchtime 1x -count 3 ./firmware-sim/
func BenchmarkIngestPostgres(b *testing.B) {
	// Direct to PostgreSQL (no test proxy), like the CopyFrom ceiling.
	s := serveIngest(b, openPostgres(b, newTestDB(b)), nil)
	benchIngest(b, s.url)
}

// BenchmarkIngestSQLite is the same path on the embedded store.
//
//	go test -run '^$' -bench IngestSQLite -benchtime 1x -count 3 ./firmware-sim/
func BenchmarkIngestSQLite(b *testing.B) {
	cfg := sqlite.DefaultConfig()
	cfg.Path = filepath.Join(b.TempDir(), "meridian.db")
	cfg.Migrate = true
	store, err := sqlite.Open(context.Background(), cfg, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	s := serveIngest(b, store, nil)
	benchIngest(b, s.url)
}

// benchIngest runs benchReadings through a fleet of 100 devices against url
// and reports acked readings per second and the worst ack p99.
func benchIngest(b *testing.B, url string) {
	cfg := fastConfig(url, 100)
	cfg.Prefix = "bench-"
	cfg.Verify = false
	cfg.Profiles = []string{"vibration"} // one metric at 1 Hz, sped up below
	cfg.MixMin, cfg.MixMax = 1, 1
	// 100 devices x 2,000 readings/s offered = 200k/s, above what one
	// machine acks, so the figure is the server's ceiling, not the offer.
	cfg.Speed = 2000
	cfg.BatchSize = 500
	cfg.FlushEvery = 50 * time.Millisecond
	cfg.Ring = 16
	cfg.Duration = 0
	cfg.TotalReadings = benchReadings
	var acked int64
	var elapsed time.Duration
	var p99 float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg.Seed = uint64(i + 1)
		f, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), nil)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := f.Run(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if rep.Unacked != 0 {
			b.Fatalf("%d batches unacked", rep.Unacked)
		}
		acked += rep.ReadingsAcked
		elapsed += time.Duration(rep.ElapsedSeconds * float64(time.Second))
		p99 = max(p99, rep.AckLatency.P99Ms)
	}
	b.StopTimer()
	b.ReportMetric(float64(acked)/elapsed.Seconds(), "readings/s")
	b.ReportMetric(p99, "ack-p99-ms")
}

// BenchmarkCopyFromCeiling is the raw pgx CopyFrom rate for rows shaped like
// the readings table (time, device_id, metric_id, value, with its series
// index), in transactions of 5,000 rows like the ingest pipeline's flushes:
// the ceiling BenchmarkIngestPostgres is compared with.
//
//	go test -run '^$' -bench CopyFromCeiling -benchtime 1x -count 3 ./firmware-sim/
func BenchmarkCopyFromCeiling(b *testing.B) {
	dbURL := newTestDB(b)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE ceiling (time timestamptz NOT NULL, device_id integer NOT NULL,
		metric_id integer NOT NULL, value double precision NOT NULL);
		CREATE INDEX ceiling_series ON ceiling (device_id, metric_id, time)`); err != nil {
		b.Fatal(err)
	}
	const flush = 5000
	start := time.Now()
	rows := make([][]any, flush)
	var copied int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for done := 0; done < benchReadings; done += flush {
			for j := range rows {
				n := done + j
				rows[j] = []any{start.Add(time.Duration(n) * time.Millisecond), int32(n % 100), int32(1), float64(n) / 7}
			}
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				_, err := tx.CopyFrom(ctx, pgx.Identifier{"ceiling"}, []string{"time", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows))
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			copied += flush
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(copied)/b.Elapsed().Seconds(), "readings/s")
}

// BenchmarkAckLatencyHalfLoad offers a steady 12,000 readings/s (about half
// of BenchmarkIngestPostgres's ceiling on the reference machine) from 100
// devices for 5 s and reports device send -> ack latency.
//
//	go test -run '^$' -bench AckLatencyHalfLoad -benchtime 1x -count 3 ./firmware-sim/
func BenchmarkAckLatencyHalfLoad(b *testing.B) {
	s := startInProcess(b, nil)
	cfg := fastConfig(s.url, 100)
	cfg.Prefix = "lat-"
	cfg.Verify = false
	cfg.Profiles = []string{"vibration"}
	cfg.MixMin, cfg.MixMax = 1, 1
	cfg.Speed = 120 // 100 devices x 120 readings/s
	cfg.BatchSize = 60
	cfg.FlushEvery = 500 * time.Millisecond
	cfg.Duration = 5 * time.Second
	var p50, p99, rate float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg.Seed = uint64(i + 1)
		f, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), nil)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := f.Run(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		p50, p99 = max(p50, rep.AckLatency.P50Ms), max(p99, rep.AckLatency.P99Ms)
		rate += rep.AckedPerSecond
	}
	b.StopTimer()
	b.ReportMetric(p50, "ack-p50-ms")
	b.ReportMetric(p99, "ack-p99-ms")
	b.ReportMetric(rate/float64(b.N), "readings/s")
}
