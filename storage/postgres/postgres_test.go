package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// newTestDB is storagetest.NewPostgresDB: a fresh database per test.
func newTestDB(tb testing.TB) string { return storagetest.NewPostgresDB(tb) }

// checkMode fails tb unless mode is the one this run expects: the value of
// MERIDIAN_TEST_PG_MODE when set (so a run meant to cover TimescaleDB mode
// cannot pass by quietly falling back to plain PostgreSQL), otherwise either
// PostgreSQL mode.
func checkMode(tb testing.TB, mode string) {
	tb.Helper()
	switch want := os.Getenv("MERIDIAN_TEST_PG_MODE"); {
	case want != "" && mode != want:
		tb.Fatalf("store mode %q, MERIDIAN_TEST_PG_MODE wants %q", mode, want)
	case mode != storage.ModePostgres && mode != storage.ModeTimescale:
		tb.Fatalf("store mode %q, want %s or %s", mode, storage.ModePostgres, storage.ModeTimescale)
	}
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

func openTestStore(tb testing.TB, dbURL string, ret storage.Retention) *Store {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.URL = dbURL
	cfg.Retention = ret
	return openTestStoreConfig(tb, cfg)
}

// openTestStoreConfig opens a store with cfg, waits until it is ready and
// checks its mode (see checkMode; a plainOnly store is always plain).
func openTestStoreConfig(tb testing.TB, cfg Config) *Store {
	tb.Helper()
	// Tests run as a superuser, so ad-hoc SQL needs a query role.
	var role *queryRole
	if cfg.QueryURL == "" && !cfg.noTestQueryRole {
		r := newQueryRole(tb, cfg.URL)
		role, cfg.QueryURL = &r, r.url
	}
	s, err := Open(context.Background(), cfg, testLogger(tb))
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		tb.Fatalf("WaitReady: %v", err)
	}
	if cfg.plainOnly {
		if s.Mode() != storage.ModePostgres {
			tb.Fatalf("plainOnly store in mode %q", s.Mode())
		}
	} else {
		checkMode(tb, s.Mode())
	}
	if s.Mode() == storage.ModeTimescale {
		pauseJobs(tb, s)
	}
	if role != nil {
		role.create(tb, s)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, ret storage.Retention) storagetest.Backend {
		return openTestStore(t, newTestDB(t), ret)
	})
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.URL = storagetest.DefaultPostgresURL
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"no url", func(c *Config) { c.URL = "" }, "storage.postgres.url: must be set"},
		{"bad url", func(c *Config) { c.URL = "postgres://u:secret@host:notaport/db" }, "storage.postgres.url:"},
		{"max conns", func(c *Config) { c.MaxConns = -1 }, "storage.postgres.max_conns: must be > 0, got -1"},
		{"chunk", func(c *Config) { c.ChunkInterval = time.Second }, "storage.postgres.chunk_interval: must be >= 1m, got 1s"},
		{"compress", func(c *Config) { c.CompressAfter = -time.Hour }, "storage.postgres.compress_after: must be >= 0, got -1h0m0s"},
		{"raw retention", func(c *Config) { c.Retention.Raw = time.Minute }, "storage.retention.raw: must be 0 (forever) or >= 1h, got 1m0s"},
		{"rollup retention", func(c *Config) { c.Retention.Rollups = -1 }, "storage.retention.rollups: must be >= 0, got -1ns"},
		{"partitions", func(c *Config) { c.PartitionsAhead = 0 }, "storage.postgres.partitions_ahead: must be 1..366, got 0"},
		{"query conns", func(c *Config) { c.QueryConns = 0 }, "storage.postgres.query_conns: must be 1..64, got 0"},
		{"bad query url", func(c *Config) { c.QueryURL = "postgres://u:secret@host:notaport/db" }, "storage.postgres.query_url:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := good
			c.mod(&cfg)
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Validate = %v, want %q", err, c.want)
			case err != nil && strings.Contains(err.Error(), "secret"):
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

// TestOpenUnreachable: Open succeeds without a database; data calls report
// ErrNotReady; once the database appears the store becomes ready by itself.
func TestOpenUnreachable(t *testing.T) {
	dbURL := newTestDB(t)
	proxy := newFaultProxy(t, dbURL)
	proxy.setDown(true)
	cfg := DefaultConfig()
	cfg.URL = proxy.url
	s, err := Open(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open with the database down: %v", err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Ping(ctx); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ping while down: %v, want ErrNotReady", err)
	}
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "d", Seq: 1}}); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "storage not ready") {
		t.Fatalf("Commit while down: %v, want ErrNotReady", err)
	}
	proxy.setDown(false)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.WaitReady(wctx); err != nil {
		t.Fatalf("WaitReady after the database came back: %v", err)
	}
	checkMode(t, s.Mode())
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "d", Seq: 1}}); err != nil {
		t.Fatalf("Commit after recovery: %v", err)
	}
}

func TestMigrateStatusAndTooNew(t *testing.T) {
	dbURL := newTestDB(t)
	s := openTestStore(t, dbURL, storage.Retention{})
	ctx := context.Background()
	st, err := s.MigrateStatus(ctx)
	if err != nil {
		t.Fatalf("MigrateStatus: %v", err)
	}
	if st.Mode != s.Mode() || st.Current != st.Latest || st.Latest < 2 || len(st.Pending) != 0 || st.TooNew {
		t.Fatalf("MigrateStatus = %+v", st)
	}
	// Pretend a newer binary migrated the database.
	if _, err := s.pool.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, st.Latest+1); err != nil {
		t.Fatal(err)
	}
	if st, err := s.MigrateStatus(ctx); err != nil || !st.TooNew {
		t.Fatalf("MigrateStatus after newer migration = %+v, %v", st, err)
	}
	cfg := DefaultConfig()
	cfg.URL = dbURL
	s2, err := Open(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = s2.WaitReady(wctx)
	if !errors.Is(err, storage.ErrSchemaTooNew) {
		t.Fatalf("WaitReady on a too-new database: %v, want ErrSchemaTooNew", err)
	}
	if err := s2.Migrate(ctx); !errors.Is(err, storage.ErrSchemaTooNew) {
		t.Fatalf("Migrate on a too-new database: %v, want ErrSchemaTooNew", err)
	}
	t.Logf("message: %v", err)
}

// TestConcurrentStartMigrates: several nodes starting together on a fresh
// database all become ready and migrations run once.
func TestConcurrentStartMigrates(t *testing.T) {
	dbURL := newTestDB(t)
	var wg sync.WaitGroup
	stores := make([]*Store, 4)
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := DefaultConfig()
			cfg.URL = dbURL
			s, err := Open(context.Background(), cfg, testLogger(t))
			if err != nil {
				t.Error(err)
				return
			}
			stores[i] = s
		}()
	}
	wg.Wait()
	for _, s := range stores {
		if s == nil {
			t.FailNow()
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := s.WaitReady(ctx)
		cancel()
		if err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
	}
	var n int
	if err := stores[0].pool.QueryRow(context.Background(), `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if st, _ := stores[0].MigrateStatus(context.Background()); int64(n) != st.Latest {
		t.Fatalf("%d migration rows for %d migrations", n, st.Latest)
	}
}

// TestQueryTimeoutAndRole covers what the backend-neutral suite cannot.
func TestQueryTimeoutAndRole(t *testing.T) {
	dbURL := newTestDB(t)
	s := openTestStore(t, dbURL, storage.Retention{})
	ctx := context.Background()
	start := time.Now()
	_, err := s.Query(ctx, "SELECT pg_sleep(5)", storage.QueryOptions{Timeout: 200 * time.Millisecond})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("slow query: err %v after %v, want a timeout", err, time.Since(start))
	}
	// Multiple statements are refused, nothing runs.
	if _, err := s.Query(ctx, "SELECT 1; SELECT 2", storage.QueryOptions{}); err == nil {
		t.Fatal("two statements accepted")
	}
	for _, q := range []string{
		"COPY (SELECT 1) TO PROGRAM 'true'",
		"WITH d AS (DELETE FROM devices RETURNING 1) SELECT * FROM d",
		"SET statement_timeout = 0",
		"COMMIT",
	} {
		if _, err := s.Query(ctx, q, storage.QueryOptions{}); !errors.Is(err, storage.ErrReadOnly) {
			t.Errorf("Query(%q): %v, want ErrReadOnly", q, err)
		}
	}
	if res, err := s.Query(ctx, "/* a /* nested */ comment */ -- and a line\n (SELECT 1 AS one);", storage.QueryOptions{}); err != nil || len(res.Rows) != 1 {
		t.Fatalf("commented, parenthesised query: %v %v", res, err)
	}
	// EXPLAIN cannot be a cursor; it still works.
	if res, err := s.Query(ctx, "EXPLAIN SELECT * FROM telemetry", storage.QueryOptions{}); err != nil || len(res.Rows) == 0 {
		t.Fatalf("EXPLAIN: %v %v", res, err)
	}
	// A read-only role that cannot see the registry's secrets.
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	role := "meridian_ro_" + hex.EncodeToString(rb[:])
	for _, q := range []string{
		"CREATE ROLE " + role + " NOLOGIN",
		"GRANT SELECT ON telemetry, devices, metrics TO " + role,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = s.pool.Exec(context.Background(), "DROP OWNED BY "+role+"; DROP ROLE "+role) })
	cfg := DefaultConfig()
	cfg.URL = dbURL
	cfg.ReadOnlyRole = role
	cfg.noTestQueryRole = true
	ro, err := Open(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// read_only_role is switched to with SET LOCAL ROLE, which the
	// statement can undo (set_config('role', 'none', true)): no boundary,
	// so a superuser service role is still refused.
	if _, err := ro.Query(ctx, "SELECT count(*) FROM devices", storage.QueryOptions{}); !errors.Is(err, storage.ErrNotAllowed) {
		t.Fatalf("read_only_role on a superuser connection: %v, want ErrNotAllowed", err)
	}
}

func TestFirstKeyword(t *testing.T) {
	for in, want := range map[string]string{
		"select 1":                       "SELECT",
		"  \n\t(( values (1)))":          "VALUES",
		"-- c\nWITH x AS (SELECT 1) ...": "WITH",
		"/* a /* b */ c */ delete x":     "DELETE",
		"explain analyze select":         "EXPLAIN",
		"":                               "",
		"-- only a comment":              "",
		"SELEC x":                        "SELEC",
	} {
		if got := firstKeyword(in); got != want {
			t.Errorf("firstKeyword(%q) = %q, want %q", in, got, want)
		}
	}
}

// faultProxy is a TCP proxy between the store and PostgreSQL that can cut
// every connection and refuse new ones.
type faultProxy struct {
	t      testing.TB
	ln     net.Listener
	target string
	url    string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
}

func newFaultProxy(t testing.TB, dbURL string) *faultProxy {
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	u.Host = ln.Addr().String()
	p.url = u.String()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return p
}

// cut closes every proxied connection.
func (p *faultProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *faultProxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
	if down {
		p.cut()
	}
}

// TestFaultConnectionCut cuts the database connections while commits are in
// flight. A commit that errors is retried by the caller (as the pipeline
// does); at the end every batch is stored exactly once and the watermark
// matches.
func TestFaultConnectionCut(t *testing.T) {
	dbURL := newTestDB(t)
	openTestStore(t, dbURL, storage.Retention{}) // migrate directly
	proxy := newFaultProxy(t, dbURL)
	cfg := DefaultConfig()
	cfg.URL = proxy.url
	s, err := Open(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	const batches, perBatch = 40, 500
	mk := func(seq int) telemetry.Batch {
		rs := make([]telemetry.Reading, perBatch)
		for i := range rs {
			rs[i] = telemetry.Reading{Time: base.Add(time.Duration(seq*perBatch+i) * time.Millisecond).UnixMilli(), Metric: "m", Value: float64(seq)}
		}
		return telemetry.Batch{Device: "fault-1", Seq: uint64(seq), Readings: rs}
	}
	stop := make(chan struct{})
	var cutter sync.WaitGroup
	cutter.Add(1)
	go func() {
		defer cutter.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			proxy.setDown(true)
			time.Sleep(20 * time.Millisecond)
			proxy.setDown(false)
		}
	}()
	failures := 0
	for seq := 1; seq <= batches; seq++ {
		b := mk(seq)
		for attempt := 0; ; attempt++ {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := s.Commit(cctx, []telemetry.Batch{b})
			cancel()
			if err == nil {
				break
			}
			failures++
			if attempt > 200 {
				t.Fatalf("seq %d never committed: %v", seq, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(stop)
	cutter.Wait()
	t.Logf("%d commit attempts failed on cut connections and were retried", failures)
	if failures == 0 {
		t.Log("warning: no commit was cut; the proxy timing missed every flush")
	}
	proxy.setDown(false)
	direct := openTestStore(t, dbURL, storage.Retention{})
	wm, err := direct.Watermark(ctx, "fault-1")
	if err != nil || wm != batches {
		t.Fatalf("watermark %d, %v; want %d", wm, err, batches)
	}
	res, err := direct.Query(ctx, `SELECT count(*), count(DISTINCT value), min(value), max(value) FROM telemetry WHERE device = 'fault-1'`, storage.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	row := res.Rows[0]
	if row[0] != int64(batches*perBatch) || row[1] != int64(batches) {
		t.Fatalf("stored %v rows of %v distinct batches, want %d and %d (nothing twice, nothing lost)", row[0], row[1], batches*perBatch, batches)
	}
}

// benchFlush builds one flush: devices batches (one per device) of per
// readings each, stamped just before now so they land in today's partition
// and are not late data.
func benchFlush(devices, per int, seq uint64, base time.Time) []telemetry.Batch {
	out := make([]telemetry.Batch, devices)
	for d := range out {
		rs := make([]telemetry.Reading, per)
		for i := range rs {
			rs[i] = telemetry.Reading{Time: base.Add(time.Duration(int(seq)*per+i) * time.Millisecond).UnixMilli(), Metric: fmt.Sprintf("m%d", i%4), Value: float64(i)}
		}
		out[d] = telemetry.Batch{Device: fmt.Sprintf("bench-%03d", d), Seq: seq, Readings: rs}
	}
	return out
}

var benchShapes = []struct{ devices, per int }{
	{100, 10},  // 1,000 readings per flush over 100 devices
	{100, 100}, // 10,000 readings per flush
}

// BenchmarkCopyFromCeiling is the raw pgx ceiling: the same rows as
// BenchmarkCommit, ids already resolved, one transaction with one CopyFrom
// per op and nothing else.
func BenchmarkCopyFromCeiling(b *testing.B) {
	for _, shape := range benchShapes {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s, ctx, base := warmBenchStore(b, shape.devices, shape.per)
			rows := make([][]any, 0, shape.devices*shape.per)
			for _, bt := range benchFlush(shape.devices, shape.per, 2, base) {
				dev, _ := s.deviceIDs.Load(bt.Device)
				for _, r := range bt.Readings {
					m, _ := s.metricIDs.Load(r.Metric)
					rows = append(rows, []any{time.UnixMilli(r.Time).UTC(), dev, m, r.Value})
				}
			}
			b.ResetTimer()
			for b.Loop() {
				err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"readings"}, []string{"time", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows))
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(rows))/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// BenchmarkCommit is Store.Commit on the same shape: name resolution,
// device row locks, duplicate check, COPY, watermark update, commit.
func BenchmarkCommit(b *testing.B) {
	for _, shape := range benchShapes {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s, ctx, base := warmBenchStore(b, shape.devices, shape.per)
			flushes := make([][]telemetry.Batch, 0, 64)
			seq := uint64(2)
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				if len(flushes) == 0 {
					for range 64 {
						flushes = append(flushes, benchFlush(shape.devices, shape.per, seq, base))
						seq++
					}
				}
				f := flushes[0]
				flushes = flushes[1:]
				b.StartTimer()
				if _, err := s.Commit(ctx, f); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*shape.devices*shape.per)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}

// TestRollupWindowAndFreshEdge covers the on-time path the suite does not:
// recent readings are rolled up by the periodic window without dirty marks,
// and Series serves readings newer than the last refresh from raw data.
func TestRollupWindowAndFreshEdge(t *testing.T) {
	s := openTestStore(t, newTestDB(t), storage.Retention{})
	ctx := context.Background()
	now := time.Now().UTC()
	rs := func(from time.Time, n int) []telemetry.Reading {
		out := make([]telemetry.Reading, n)
		for i := range out {
			out[i] = telemetry.Reading{Time: from.Add(time.Duration(i) * time.Second).UnixMilli(), Metric: "m", Value: float64(i)}
		}
		return out
	}
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "edge", Seq: 1, Readings: rs(now.Add(-3*time.Minute), 120)}}); err != nil {
		t.Fatal(err)
	}
	var marks int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM rollup_dirty`).Scan(&marks); err != nil || marks != 0 {
		t.Fatalf("on-time readings left %d dirty marks (%v), want 0", marks, err)
	}
	if err := s.Maintain(ctx, now); err != nil {
		t.Fatal(err)
	}
	res, err := s.Query(ctx, `SELECT sum(count) FROM telemetry_1m WHERE device = 'edge'`, storage.QueryOptions{})
	if err != nil || res.Rows[0][0] != int64(120) {
		t.Fatalf("1m rollup after the periodic window: %v %v, want 120 readings", res.Rows, err)
	}
	// Newer readings, no Maintain yet: the series' right edge comes from raw.
	if _, err := s.Commit(ctx, []telemetry.Batch{{Device: "edge", Seq: 2, Readings: rs(now.Add(time.Second), 30)}}); err != nil {
		t.Fatal(err)
	}
	ser, err := s.Series(ctx, storage.SeriesRequest{Device: "edge", Metric: "m", From: now.Add(-10 * time.Minute), To: now.Add(5 * time.Minute), Points: 10})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range ser.Points {
		total += p.Count
	}
	if ser.Source != "1m" || total != 150 {
		t.Fatalf("series source %s with %d readings, want 1m with 150", ser.Source, total)
	}
}

// TestMigrateDisabled: a store that may not migrate waits, not ready, until
// someone else migrates, then becomes ready by itself.
func TestMigrateDisabled(t *testing.T) {
	dbURL := newTestDB(t)
	cfg := DefaultConfig()
	cfg.URL = dbURL
	cfg.Migrate = false
	s, err := Open(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	// The first setup attempt must get as far as finding the schema
	// missing, however slow the machine.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := s.Ping(ctx)
		if !errors.Is(err, ErrNotReady) {
			t.Fatalf("Ping before migration: %v, want ErrNotReady", err)
		}
		if strings.Contains(err.Error(), "meridian migrate") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping before migration: %v, want not ready with a hint to migrate", err)
		}
	}
	// Waiting for a migration changes nothing: not even the extension.
	var exts int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'`).Scan(&exts); err != nil || exts != 0 {
		t.Fatalf("timescaledb extensions created before migration: %d, %v", exts, err)
	}
	st, err := s.MigrateStatus(ctx)
	if err != nil || st.Current != 0 || len(st.Pending) != int(st.Latest) {
		t.Fatalf("MigrateStatus before migration = %+v, %v", st, err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after Migrate: %v", err)
	}
	checkMode(t, s.Mode())
}

// BenchmarkCommitVsCeiling alternates one ceiling CopyFrom and one
// Store.Commit of the same shape on the same database, so both see the same
// machine load (this machine is shared and noisy), and reports each rate and
// their ratio.
func BenchmarkCommitVsCeiling(b *testing.B) {
	for _, shape := range benchShapes {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s, ctx, base := warmBenchStore(b, shape.devices, shape.per)
			var rows [][]any
			for _, bt := range benchFlush(shape.devices, shape.per, 2, base) {
				dev, _ := s.deviceIDs.Load(bt.Device)
				for _, r := range bt.Readings {
					m, _ := s.metricIDs.Load(r.Metric)
					rows = append(rows, []any{time.UnixMilli(r.Time).UTC(), dev, m, r.Value})
				}
			}
			var ceiling, commit time.Duration
			seq := uint64(3)
			b.ResetTimer()
			for b.Loop() {
				f := benchFlush(shape.devices, shape.per, seq, base)
				seq++
				t0 := time.Now()
				if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"readings"}, []string{"time", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows))
					return err
				}); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := s.Commit(ctx, f); err != nil {
					b.Fatal(err)
				}
				ceiling += t1.Sub(t0)
				commit += time.Since(t1)
			}
			n := float64(b.N * len(rows))
			b.ReportMetric(n/ceiling.Seconds(), "ceiling-readings/s")
			b.ReportMetric(n/commit.Seconds(), "commit-readings/s")
			b.ReportMetric(ceiling.Seconds()/commit.Seconds(), "commit/ceiling")
		})
	}
}

// warmBenchStore opens a store on a fresh test database and commits one
// flush of the benchmark's shape first, so its device and metric names are
// registered as in a warmed-up server; the timed flushes then start at seq 2
// from base.
func warmBenchStore(b *testing.B, devices, per int) (*Store, context.Context, time.Time) {
	b.Helper()
	s := openTestStore(b, newTestDB(b), storage.Retention{})
	ctx := context.Background()
	base := time.Now().Add(-time.Minute)
	if _, err := s.Commit(ctx, benchFlush(devices, per, 1, base)); err != nil {
		b.Fatal(err)
	}
	return s, ctx, base
}
