package sqlite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// TestQueryPublicSchemaOnly: ad-hoc SQL reads the public views and tables,
// and through the views the internal tables behind them, but never the
// token or API-key tables or the internal tables directly.
func TestQueryPublicSchemaOnly(t *testing.T) {
	s := newTestStore(t, storage.Retention{})
	ctx := context.Background()
	if err := s.AddAPIKey(ctx, storage.APIKey{ID: "abc123", Hash: []byte("h"), Role: "admin", Name: "ops", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, batch("pub-1", 1, 3))
	for _, q := range []string{
		"SELECT * FROM telemetry", "SELECT * FROM telemetry_1m", "SELECT * FROM telemetry_1h",
		"SELECT * FROM devices", "SELECT * FROM metrics", "SELECT * FROM device_sessions",
		"SELECT name FROM sqlite_master", "PRAGMA table_info(telemetry)",
		"SELECT count(*) FROM telemetry", "SELECT count(DISTINCT device) FROM telemetry_1h",
		"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) SELECT x FROM n",
	} {
		if _, err := s.Query(ctx, q, storage.QueryOptions{}); err != nil {
			t.Errorf("Query(%q): %v", q, err)
		}
	}
	for _, q := range []string{
		"SELECT id, name, role, hash FROM api_keys",
		"SELECT count(*) FROM api_keys",
		"SELECT * FROM device_tokens",
		"SELECT * FROM readings",
		"SELECT * FROM rollup_1m",
		"SELECT * FROM meridian_meta",
		"SELECT (SELECT hash FROM api_keys LIMIT 1) FROM telemetry",
		"WITH k AS (SELECT * FROM api_keys) SELECT * FROM k",
		"SELECT count(*) FROM telemetry, api_keys",
		"WITH telemetry_1m AS (SELECT * FROM api_keys) SELECT * FROM telemetry_1m",
		"WITH \"Telemetry\"(a, b) AS MATERIALIZED (SELECT id, hash FROM api_keys) SELECT * FROM telemetry",
		"WITH 'telemetry' AS (SELECT id, hash, role FROM api_keys) SELECT * FROM telemetry",
		"SELECT (WITH telemetry AS (SELECT hash FROM api_keys) SELECT * FROM telemetry), x.* FROM telemetry x",
		"WITH x AS (SELECT 1), [devices] AS (SELECT hash FROM device_tokens) SELECT * FROM devices",
		"SELECT (SELECT count(*) FROM device_tokens) FROM telemetry",
	} {
		_, err := s.Query(ctx, q, storage.QueryOptions{})
		if !errors.Is(err, storage.ErrNotAllowed) {
			t.Errorf("Query(%q): %v, want ErrNotAllowed", q, err)
		}
	}
}

// TestQueryMemoryBounded: values bigger than the byte cap and statements
// needing more than the query heap fail with an error (no panic, no
// gigabytes of process memory), and the connection pool keeps working.
func TestQueryMemoryBounded(t *testing.T) {
	s := newTestStore(t, storage.Retention{})
	ctx := context.Background()
	for _, q := range []string{
		"SELECT zeroblob(1000000000)",
		"SELECT randomblob(100000000)",
		"SELECT length(zeroblob(1000000000))",
		"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000000) SELECT group_concat(printf('%0100d', x)) FROM n",
	} {
		_, err := s.Query(ctx, q, storage.QueryOptions{MaxBytes: 1 << 20})
		if err == nil {
			t.Errorf("Query(%q) succeeded, want an error", q)
		}
	}
	// Many rows of moderate values: cut at the byte cap, reported.
	res, err := s.Query(ctx, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000) SELECT x, zeroblob(1000) FROM n",
		storage.QueryOptions{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.TruncatedBy != storage.TruncatedBytes || len(res.Rows) == 0 || len(res.Rows) > 600 {
		t.Fatalf("byte cap: truncated=%v by %q after %d rows, want bytes after <= 600", res.Truncated, res.TruncatedBy, len(res.Rows))
	}
	if res, err := s.Query(ctx, "SELECT 1", storage.QueryOptions{}); err != nil || len(res.Rows) != 1 {
		t.Fatalf("query after the failures: %v %v", res, err)
	}
}

// TestLookupsDoNotWaitForQueries: with every ad-hoc query connection busy
// with slow statements, token and API-key lookups answer at once.
func TestLookupsDoNotWaitForQueries(t *testing.T) {
	s := newTestStore(t, storage.Retention{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const slow = 8
	for range slow {
		go func() {
			defer func() { done <- struct{}{} }()
			_, _ = s.Query(ctx, `WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n`,
				storage.QueryOptions{Timeout: time.Minute})
		}()
	}
	defer func() {
		cancel()
		for range slow {
			<-done
		}
	}()
	time.Sleep(200 * time.Millisecond) // let the queries take every connection
	lctx, lcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer lcancel()
	for range 20 {
		if _, err := s.LookupAPIKey(lctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("LookupAPIKey while queries run: %v", err)
		}
		if _, err := s.LookupDeviceToken(lctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("LookupDeviceToken while queries run: %v", err)
		}
		if _, err := s.Watermark(lctx, "nobody"); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Fatalf("Watermark while queries run: %v", err)
		}
	}
}

func TestCTENames(t *testing.T) {
	cases := []struct {
		sql  string
		want string
	}{
		{"SELECT 1", ""},
		{"WITH a AS (SELECT 1), \"B c\"(x) AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a", "a,b c"},
		{"SELECT 'telemetry AS (' FROM t -- telemetry AS (\n/* devices AS ( */", ""},
		{"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT CAST(x AS INTEGER) FROM n", "n"},
		{"SELECT sum(x) OVER w FROM t WINDOW w AS (ORDER BY x)", "w"},
		// SQLite takes a string literal for a name: a CTE named 'telemetry'.
		{"WITH 'telemetry' AS (SELECT id, hash, role FROM api_keys) SELECT * FROM telemetry", "telemetry"},
	}
	for _, c := range cases {
		if got := strings.Join(cteNames(c.sql), ","); got != c.want {
			t.Errorf("cteNames(%q) = %q, want %q", c.sql, got, c.want)
		}
	}
}

// FuzzCTENames: the tokenizer behind the CTE-name check reads untrusted SQL
// and must never panic or hang.
func FuzzCTENames(f *testing.F) {
	for _, s := range []string{
		"WITH a AS (SELECT 1) SELECT * FROM a",
		`WITH "x""y"(a) AS NOT MATERIALIZED (SELECT 1), [b] AS (SELECT 2) SELECT 1`,
		"SELECT '/* unterminated", "/* open", "-- x\nWITH `t` AS (", "WITH a(", "a AS",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		_ = cteNames(sql)
	})
}

// BenchmarkRollupView reads one device's day of telemetry_1m and the whole
// fleet's telemetry_1h: "refreshed" right after Maintain (the views add only
// the readings since the mark), "unrefreshed" before any (everything is
// aggregated from raw readings at query time).
func BenchmarkRollupView(b *testing.B) {
	const devices, perDevice = 50, 1440 // a day at one reading a minute
	now := time.Now().UTC().Truncate(time.Hour)
	for _, refreshed := range []bool{true, false} {
		name := "unrefreshed"
		if refreshed {
			name = "refreshed"
		}
		s := newTestStore(b, storage.Retention{})
		ctx := context.Background()
		for d := range devices {
			bt := telemetry.Batch{Device: fmt.Sprintf("dev-%d", d), Seq: 1}
			for i := range perDevice {
				bt.Readings = append(bt.Readings, telemetry.Reading{Time: now.Add(-24*time.Hour + time.Duration(i)*time.Minute).UnixMilli(), Metric: "temp", Value: float64(i)})
			}
			mustCommit(b, s, bt)
		}
		if refreshed {
			if err := s.Maintain(ctx, now.Add(-30*time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		for _, q := range []struct{ name, sql string }{
			{"1m-one-device", "SELECT bucket, avg FROM telemetry_1m WHERE device = 'dev-7' AND metric = 'temp'"},
			{"1h-fleet", "SELECT device, bucket, max FROM telemetry_1h"},
		} {
			b.Run(name+"/"+q.name, func(b *testing.B) {
				for b.Loop() {
					if _, err := s.Query(ctx, q.sql, storage.QueryOptions{MaxRows: 100_000}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
