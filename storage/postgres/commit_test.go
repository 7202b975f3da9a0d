package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// flushShapes are flushes as the pipeline forms them: a few batches of 10
// readings at low rates (BenchmarkPipeline's paced load commits ~5-50
// batches per flush), up to 100 batches of 100 at its ceiling.
var flushShapes = []struct{ devices, per int }{
	{1, 10},
	{5, 10},
	{20, 10},
	{100, 10},
	{20, 100},
	{100, 100},
}

// BenchmarkCommitInsertVsCopy commits the same shapes with the readings
// stored by INSERT … unnest and by COPY, alternating the two within each
// op so both see the same machine load, and reports each one's mean commit
// time and their ratio: where COPY's extra round trips stop paying is where
// copyMin belongs.
//
//	go test -run '^$' -bench CommitInsertVsCopy -benchtime 200x -count 3 ./storage/postgres/
func BenchmarkCommitInsertVsCopy(b *testing.B) {
	for _, shape := range flushShapes {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s, ctx, base := warmBenchStore(b, shape.devices, shape.per)
			var took [2]time.Duration
			seq := uint64(2)
			for b.Loop() {
				for i, min := range []int{math.MaxInt, 0} {
					f := benchFlush(shape.devices, shape.per, seq, base)
					seq++
					s.copyMin = min
					t0 := time.Now()
					if _, err := s.Commit(ctx, f); err != nil {
						b.Fatal(err)
					}
					took[i] += time.Since(t0)
				}
			}
			n := float64(b.N)
			b.ReportMetric(took[0].Seconds()*1e3/n, "insert-ms")
			b.ReportMetric(took[1].Seconds()*1e3/n, "copy-ms")
			b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "insert/copy")
		})
	}
}

// BenchmarkCommitSmall commits flushes of the size the pipeline forms at
// 20% of its ceiling (a few to a few dozen batches of 10 readings) and
// reports, besides the time per commit, the CPU it cost this process and the
// database's backends: at that load the benchmark's devices, the server and
// PostgreSQL share the machine's cores, so CPU per flush is latency for every
// other batch. pg-cpu-ms is read from /proc (a local server only; 10 ms
// ticks, hence the many ops).
//
//	go test -run '^$' -bench CommitSmall -benchtime 1000x -count 3 ./storage/postgres/
func BenchmarkCommitSmall(b *testing.B) {
	for _, shape := range flushShapes[1:3] {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s, ctx, base := warmBenchStore(b, shape.devices, shape.per)
			flushes := make([][]telemetry.Batch, b.N)
			for i := range flushes {
				flushes[i] = benchFlush(shape.devices, shape.per, uint64(i+2), base)
			}
			pg0, cpu0 := backendTicks(b, s), processCPU()
			b.ResetTimer()
			for _, f := range flushes {
				if _, err := s.Commit(ctx, f); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(processCPU()-cpu0)/1e6/n, "go-cpu-ms/op")
			if pg0 >= 0 {
				b.ReportMetric(float64(backendTicks(b, s)-pg0)*10/n, "pg-cpu-ms/op")
			}
		})
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendTicks sums the CPU clock ticks (1/100 s on Linux) of the backends
// connected to s's database, or returns -1 when /proc does not show them
// (the server is elsewhere).
func backendTicks(tb testing.TB, s *Store) int64 {
	rows, err := s.pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		tb.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		tb.Fatal(err)
	}
	sum := int64(-1)
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command, which is in parentheses: utime and
		// stime are the 12th and 13th (proc(5)).
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum = max(sum, 0) + u + st
	}
	return sum
}

// TestCommitPaths runs the same flushes through both ways of storing
// readings (INSERT … unnest and COPY): duplicates against the watermark and
// within a flush, a device's first batch, late readings, an all-duplicate
// flush, and a flush the database refuses, after which the connection is
// usable and nothing of that flush is stored.
func TestCommitPaths(t *testing.T) {
	for _, path := range []struct {
		name    string
		copyMin int
	}{{"insert", math.MaxInt}, {"copy", 0}} {
		t.Run(path.name, func(t *testing.T) {
			s := openTestStore(t, newTestDB(t), storage.Retention{})
			s.copyMin = path.copyMin
			ctx := context.Background()
			now := time.Now()
			at := func(d time.Duration, vals ...float64) []telemetry.Reading {
				rs := make([]telemetry.Reading, len(vals))
				for i, v := range vals {
					rs[i] = telemetry.Reading{Time: now.Add(d + time.Duration(i)*time.Millisecond).UnixMilli(), Metric: "m", Value: v}
				}
				return rs
			}
			commit := func(want []bool, batches ...telemetry.Batch) {
				t.Helper()
				out, err := s.Commit(ctx, batches)
				if err != nil {
					t.Fatal(err)
				}
				for i, o := range out {
					if o.Duplicate != want[i] {
						t.Errorf("batch %d (%s seq %d): duplicate %v, want %v", i, batches[i].Device, batches[i].Seq, o.Duplicate, want[i])
					}
				}
			}
			rows := func(device string) int64 {
				t.Helper()
				var n int64
				if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM readings r JOIN device_ids i ON i.id = r.device_id WHERE i.device = $1`, device).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			check := func(device string, wantRows int64, wantMark uint64) {
				t.Helper()
				if n := rows(device); n != wantRows {
					t.Errorf("%s: %d rows, want %d", device, n, wantRows)
				}
				if m, err := s.Watermark(ctx, device); err != nil || m != wantMark {
					t.Errorf("%s: watermark %d (%v), want %d", device, m, err, wantMark)
				}
			}

			commit([]bool{false, false, false, true},
				telemetry.Batch{Device: "a", Seq: 1, Readings: at(0, 1, 2, 3)},
				telemetry.Batch{Device: "b", Seq: 1, Readings: at(0, 1, 2)},
				telemetry.Batch{Device: "a", Seq: 2, Readings: at(time.Second, 4, 5)},
				telemetry.Batch{Device: "a", Seq: 2, Readings: at(time.Second, 4, 5)})
			check("a", 5, 2)
			check("b", 2, 1)

			late := -3 * time.Hour
			commit([]bool{true, false, false},
				telemetry.Batch{Device: "a", Seq: 2, Readings: at(time.Second, 4, 5)},
				telemetry.Batch{Device: "a", Seq: 3, Readings: at(late, 6)},
				telemetry.Batch{Device: "c", Seq: 5, Readings: at(0, 7)})
			check("a", 6, 3)
			check("c", 1, 5)
			var dirty int64
			hour := now.Add(late).UTC().Truncate(time.Hour)
			if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM rollup_dirty WHERE hour = $1`, hour).Scan(&dirty); err != nil || dirty != 1 {
				t.Errorf("late hour %s marked %d times (%v), want 1", hour, dirty, err)
			}

			commit([]bool{true, true}, telemetry.Batch{Device: "a", Seq: 3}, telemetry.Batch{Device: "c", Seq: 1})
			check("a", 6, 3)

			if _, err := s.pool.Exec(ctx, `ALTER TABLE readings ADD CONSTRAINT test_refuse CHECK (value <> 666)`); err != nil {
				t.Fatal(err)
			}
			_, err := s.Commit(ctx, []telemetry.Batch{
				{Device: "b", Seq: 2, Readings: at(2*time.Second, 8)},
				{Device: "a", Seq: 4, Readings: at(2*time.Second, 666)},
			})
			if !errors.Is(err, telemetry.ErrInvalidData) {
				t.Fatalf("refused flush: %v, want ErrInvalidData", err)
			}
			check("a", 6, 3)
			check("b", 2, 1)
			// Every pooled connection is idle again (a failed transaction
			// was rolled back, or its connection dropped) and commits work.
			for range 3 {
				commit([]bool{true}, telemetry.Batch{Device: "b", Seq: 1})
			}
			commit([]bool{false}, telemetry.Batch{Device: "b", Seq: 2, Readings: at(2*time.Second, 8)})
			check("b", 3, 2)
		})
	}
}
