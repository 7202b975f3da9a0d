package queryapi_test

// The hardening issue's attacks on /v1/query, replayed against the real
// handler over real stores (SQLite in a temp dir, PostgreSQL in a fresh
// database) through a real HTTP server.

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/queryapi"
	"github.com/meridian-iot/meridian/storage/sqlite"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

func openSQLite(t *testing.T) *sqlite.Store {
	t.Helper()
	cfg := sqlite.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "meridian.db")
	s, err := sqlite.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.AddAPIKey(context.Background(), storage.APIKey{ID: "abc123", Hash: []byte("secret-hash"), Name: "ops", Role: "admin", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return s
}

// openPostgres opens a store on a fresh database; with a query role unless
// noRole.
func openPostgres(t *testing.T, noRole bool) *postgres.Store {
	t.Helper()
	dbURL := storagetest.NewPostgresDB(t)
	cfg := postgres.DefaultConfig()
	cfg.URL = dbURL
	var role string
	if !noRole {
		role, cfg.QueryURL = storagetest.NewPostgresRole(t, dbURL)
	}
	s, err := postgres.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if role != "" {
		if err := s.CreateQueryRole(ctx, role, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddAPIKey(ctx, storage.APIKey{ID: "abc123", Hash: []byte("secret-hash"), Name: "ops", Role: "admin", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return s
}

func serve(t *testing.T, r queryapi.Reader, c queryapi.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(queryapi.Handler(r, queryapi.Options{Config: c}))
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status  int
	header  http.Header
	body    string
	decoded struct {
		Rows        [][]any `json:"rows"`
		Truncated   bool    `json:"truncated"`
		TruncatedBy string  `json:"truncated_by"`
		Error       string  `json:"error"`
	}
}

func query(t *testing.T, srv *httptest.Server, sql string) answer {
	t.Helper()
	resp, err := http.Get(srv.URL + "/v1/query?sql=" + url.QueryEscape(sql))
	if err != nil {
		t.Fatalf("GET %q: %v", sql, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %q: %v", sql, err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	_ = json.Unmarshal(b, &a.decoded)
	return a
}

// TestViewerCannotReachSecrets: what a viewer key could read or do before
// (API keys, server files, replication slots, other backends) is refused;
// the public schema still answers.
func TestViewerCannotReachSecrets(t *testing.T) {
	backends := map[string]struct {
		open    func(t *testing.T) queryapi.Reader
		attacks []string
	}{
		"sqlite": {
			open: func(t *testing.T) queryapi.Reader { return openSQLite(t) },
			attacks: []string{
				"SELECT id, name, role, hash FROM api_keys",
				"SELECT count(*) FROM api_keys",
				"SELECT * FROM device_tokens",
			},
		},
		"postgres": {
			open: func(t *testing.T) queryapi.Reader { return openPostgres(t, false) },
			attacks: []string{
				"SELECT id, name, role, hash FROM api_keys",
				"SELECT pg_read_file('/etc/hostname')",
				"SELECT passwd FROM pg_shadow",
				"SELECT pg_create_physical_replication_slot('meridian_attack')",
				"SELECT set_config('role', 'none', true), query_to_xml('SELECT * FROM api_keys', true, false, '')",
			},
		},
	}
	for name, b := range backends {
		t.Run(name, func(t *testing.T) {
			srv := serve(t, b.open(t), queryapi.Config{})
			for _, q := range b.attacks {
				if a := query(t, srv, q); a.status < 400 || strings.Contains(a.body, "secret") {
					t.Errorf("%q: status %d: %s", q, a.status, a.body)
				}
			}
			if a := query(t, srv, "SELECT count(*) FROM telemetry"); a.status != 200 {
				t.Errorf("public view: status %d: %s", a.status, a.body)
			}
		})
	}
}

// TestPostgresRefusesWithoutQueryRole: a store whose own role is a
// superuser and no query role configured answers 403 saying what to set.
func TestPostgresRefusesWithoutQueryRole(t *testing.T) {
	srv := serve(t, openPostgres(t, true), queryapi.Config{})
	a := query(t, srv, "SELECT 1")
	if a.status != http.StatusForbidden || !strings.Contains(a.decoded.Error, "storage.postgres.query_url") {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
}

// TestResultSizeBounded: huge values fail cleanly (no panic, no gigabytes),
// many big rows are cut at the byte cap and the answer says so.
func TestResultSizeBounded(t *testing.T) {
	backends := map[string]struct {
		open       func(t *testing.T) queryapi.Reader
		huge, many string
	}{
		"sqlite": {
			open: func(t *testing.T) queryapi.Reader { return openSQLite(t) },
			huge: "SELECT zeroblob(1000000000)",
			many: "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x, printf('%.*c', 10000, 'x') FROM n",
		},
		"postgres": {
			open: func(t *testing.T) queryapi.Reader { return openPostgres(t, false) },
			huge: "SELECT repeat('x', 200000000)",
			many: "SELECT repeat('x', 10000) FROM generate_series(1, 10000)",
		},
	}
	for name, b := range backends {
		t.Run(name, func(t *testing.T) {
			srv := serve(t, b.open(t), queryapi.Config{MaxBytes: 1 << 20, Timeout: time.Minute})
			if a := query(t, srv, b.huge); a.status != http.StatusBadRequest || a.decoded.Error == "" {
				t.Errorf("huge value: status %d: %.300s", a.status, a.body)
			}
			a := query(t, srv, b.many)
			if a.status != 200 || !a.decoded.Truncated || a.decoded.TruncatedBy != "bytes" || a.header.Get("X-Meridian-Truncated-By") != "bytes" {
				t.Fatalf("many rows: status %d truncated %v by %q (header %q)", a.status, a.decoded.Truncated, a.decoded.TruncatedBy, a.header.Get("X-Meridian-Truncated-By"))
			}
			if len(a.body) > 2<<20 || len(a.decoded.Rows) > 110 {
				t.Errorf("many rows: %d bytes, %d rows for a 1 MiB cap", len(a.body), len(a.decoded.Rows))
			}
			if a := query(t, srv, "SELECT 1"); a.status != 200 {
				t.Errorf("after: status %d: %s", a.status, a.body)
			}
		})
	}
}

// TestConcurrentQueriesBounded: beyond MaxConcurrent running queries the
// answer is 429 at once.
func TestConcurrentQueriesBounded(t *testing.T) {
	s := openSQLite(t)
	srv := serve(t, s, queryapi.Config{MaxConcurrent: 2, Timeout: 3 * time.Second})
	slow := "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a := query(t, srv, slow); a.status != http.StatusGatewayTimeout {
				t.Errorf("slow query: status %d: %s", a.status, a.body)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	a := query(t, srv, "SELECT 1")
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || time.Since(start) > time.Second {
		t.Errorf("third query: status %d after %v: %s", a.status, time.Since(start), a.body)
	}
	// /v1/series shares the slots: a viewer cannot get around the bound
	// with series requests (on SQLite they read the lookups' pool).
	resp, err := http.Get(srv.URL + "/v1/series?device=d&metric=m")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("series while the slots are taken: status %d, want 429", resp.StatusCode)
	}
	wg.Wait()
	if a := query(t, srv, "SELECT 1"); a.status != 200 {
		t.Errorf("after the slow ones: status %d: %s", a.status, a.body)
	}
}

// TestDeadlineCoversWriting: a client that never reads a large answer does
// not hold the handler past the request deadline.
func TestDeadlineCoversWriting(t *testing.T) {
	s := openSQLite(t)
	done := make(chan time.Time, 1)
	h := queryapi.Handler(s, queryapi.Options{Config: queryapi.Config{Timeout: 3 * time.Second, MaxBytes: 200 << 20, MaxRows: 1_000_000}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		done <- time.Now()
	}))
	t.Cleanup(srv.Close)
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	sql := url.QueryEscape("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300) SELECT x, printf('%.*c', 100000, 'x') FROM n")
	start := time.Now()
	if _, err := io.WriteString(c, "GET /v1/query?sql="+sql+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case end := <-done:
		if d := end.Sub(start); d > 8*time.Second {
			t.Fatalf("handler returned after %v, want about the 3s deadline", d)
		}
		// The statement finished: it was the write that the deadline cut.
		line := make([]byte, 12)
		if _, err := io.ReadFull(c, line); err != nil || string(line) != "HTTP/1.1 200" {
			t.Fatalf("answer starts %q (%v), want a 200 cut short while writing", line, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handler still writing to a client that does not read, 20s after a 3s deadline")
	}
}
