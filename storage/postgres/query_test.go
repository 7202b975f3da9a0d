package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// queryRole is a least-privilege login role made for one test
// (storagetest.NewPostgresRole).
type queryRole struct {
	name string
	url  string // dbURL logging in as the role
}

func newQueryRole(tb testing.TB, dbURL string) queryRole {
	tb.Helper()
	name, u := storagetest.NewPostgresRole(tb, dbURL)
	return queryRole{name: name, url: u}
}

func (r queryRole) create(tb testing.TB, s *Store) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.CreateQueryRole(ctx, r.name, ""); err != nil {
		tb.Fatalf("CreateQueryRole: %v", err)
	}
}

// TestQueryRefusedAsSuperuser: without storage.postgres.query_url, a
// store whose own role is a superuser (as the tests' is) refuses ad-hoc SQL
// and says how to fix it; the CLI's AllowPrivilegedQuery lets it through.
func TestQueryRefusedAsSuperuser(t *testing.T) {
	dbURL := newTestDB(t)
	cfg := DefaultConfig()
	cfg.URL = dbURL
	s := openStoreNoQueryRole(t, cfg)
	ctx := context.Background()
	_, err := s.Query(ctx, "SELECT pg_read_file('/etc/hostname')", storage.QueryOptions{})
	if !errors.Is(err, storage.ErrNotAllowed) || !strings.Contains(err.Error(), "superuser") || !strings.Contains(err.Error(), "storage.postgres.query_url") {
		t.Fatalf("query as superuser: %v, want ErrNotAllowed naming superuser and storage.postgres.query_url", err)
	}
	cfg.AllowPrivilegedQuery = true
	cli := openStoreNoQueryRole(t, cfg)
	if _, err := cli.Query(ctx, "SELECT count(*) FROM telemetry", storage.QueryOptions{}); err != nil {
		t.Fatalf("operator query with AllowPrivilegedQuery: %v", err)
	}
	// A query_url that logs in as a superuser is refused too.
	cfg.AllowPrivilegedQuery = false
	cfg.QueryURL = dbURL
	bad := openStoreNoQueryRole(t, cfg)
	if _, err := bad.Query(ctx, "SELECT 1", storage.QueryOptions{}); !errors.Is(err, storage.ErrNotAllowed) {
		t.Fatalf("query_url as superuser: %v, want ErrNotAllowed", err)
	}
}

// openStoreNoQueryRole opens a ready store exactly as cfg says, with no
// query role made for it.
func openStoreNoQueryRole(t *testing.T, cfg Config) *Store {
	t.Helper()
	cfg.noTestQueryRole = true
	return openTestStoreConfig(t, cfg)
}

// TestQueryRoleAttacks replays the hardening issue's attacks through Query
// on a store configured with a query role: each fails, and the public
// schema still answers.
func TestQueryRoleAttacks(t *testing.T) {
	dbURL := newTestDB(t)
	s := openTestStore(t, dbURL, storage.Retention{})
	ctx := context.Background()
	if err := s.AddAPIKey(ctx, storage.APIKey{ID: "abc123", Hash: []byte("h"), Role: "admin", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"SELECT pg_read_file('/etc/hostname')",
		"SELECT passwd FROM pg_shadow",
		"SELECT pg_create_physical_replication_slot('meridian_attack')",
		"SELECT pg_create_logical_replication_slot('meridian_attack', 'test_decoding')",
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
		"SELECT id, name, role, hash FROM api_keys",
		"SELECT * FROM device_tokens",
		"SELECT set_config('role', 'none', true), query_to_xml('SELECT * FROM api_keys', true, false, '')",
		"SELECT set_config('role', 'postgres', true), query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, false, '')",
	} {
		res, err := s.Query(ctx, q, storage.QueryOptions{})
		if err == nil {
			// pg_terminate_backend of others returns false, not an error.
			if len(res.Rows) > 0 && len(res.Rows[0]) == 1 && res.Rows[0][0] == true {
				t.Errorf("Query(%q) succeeded: %v", q, res.Rows)
			} else if !strings.Contains(q, "pg_terminate_backend") {
				t.Errorf("Query(%q) succeeded: %v", q, res.Rows)
			}
		}
	}
	var slots int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'meridian_attack'`).Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("replication slots left: %d %v", slots, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("store after the attacks: %v", err)
	}
	for _, q := range []string{
		"SELECT * FROM telemetry", "SELECT * FROM telemetry_1m", "SELECT * FROM telemetry_1h",
		"SELECT * FROM devices", "SELECT * FROM metrics", "SELECT * FROM device_sessions",
	} {
		if _, err := s.Query(ctx, q, storage.QueryOptions{}); err != nil {
			t.Errorf("Query(%q): %v", q, err)
		}
	}
}

// TestQueryHugeValues: a single huge value, or many big rows, never reach
// memory whole: the first fails at the message cap, the second is cut at the
// byte cap; the pool keeps working.
func TestQueryHugeValues(t *testing.T) {
	s := openTestStore(t, newTestDB(t), storage.Retention{})
	ctx := context.Background()
	if _, err := s.Query(ctx, "SELECT repeat('x', 200000000)", storage.QueryOptions{Timeout: time.Minute}); err == nil {
		t.Fatal("200 MB value returned")
	}
	res, err := s.Query(ctx, "SELECT repeat('x', 100000) FROM generate_series(1, 1000)", storage.QueryOptions{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.TruncatedBy != storage.TruncatedBytes || len(res.Rows) > 11 {
		t.Fatalf("byte cap: truncated=%v by %q with %d rows", res.Truncated, res.TruncatedBy, len(res.Rows))
	}
	if res, err := s.Query(ctx, "SELECT 1", storage.QueryOptions{}); err != nil || len(res.Rows) != 1 {
		t.Fatalf("after: %v %v", res, err)
	}
}

// TestCreateQueryRoleExisting: a role made beforehand (deploy/postgres
// does) is granted, not altered; one holding dangerous rights is refused.
func TestCreateQueryRoleExisting(t *testing.T) {
	dbURL := newTestDB(t)
	cfg := DefaultConfig()
	cfg.URL = dbURL
	plain, plainURL := storagetest.NewPostgresRole(t, dbURL)
	cfg.QueryURL = plainURL
	s := openStoreNoQueryRole(t, cfg)
	ctx := context.Background()
	super, _ := storagetest.NewPostgresRole(t, dbURL)
	for _, q := range []string{"CREATE ROLE " + plain + " LOGIN", "CREATE ROLE " + super + " LOGIN SUPERUSER"} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateQueryRole(ctx, plain, ""); err != nil {
		t.Fatalf("existing plain role: %v", err)
	}
	if _, err := s.Query(ctx, "SELECT count(*) FROM telemetry_1h", storage.QueryOptions{}); err != nil {
		t.Fatalf("query as the existing role: %v", err)
	}
	if _, err := s.Query(ctx, "SELECT * FROM api_keys", storage.QueryOptions{}); err == nil {
		t.Fatal("existing role reads api_keys")
	}
	if err := s.CreateQueryRole(ctx, super, ""); err == nil || !strings.Contains(err.Error(), "superuser") {
		t.Fatalf("existing superuser role: %v, want a refusal", err)
	}
}

// TestLookupsDoNotWaitForQueries: with the query pool busy with slow
// statements (and more queued), API-key and token lookups and watermarks
// answer at once from the service's pool.
func TestLookupsDoNotWaitForQueries(t *testing.T) {
	s := openTestStore(t, newTestDB(t), storage.Retention{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const slow = 8
	for range slow {
		go func() {
			defer func() { done <- struct{}{} }()
			_, _ = s.Query(ctx, "SELECT pg_sleep(30)", storage.QueryOptions{Timeout: time.Minute})
		}()
	}
	defer func() {
		cancel()
		for range slow {
			<-done
		}
	}()
	time.Sleep(300 * time.Millisecond)
	lctx, lcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer lcancel()
	for range 20 {
		if _, err := s.LookupAPIKey(lctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("LookupAPIKey while queries run: %v", err)
		}
		if _, err := s.LookupDeviceToken(lctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("LookupDeviceToken while queries run: %v", err)
		}
		if _, err := s.Watermark(lctx, "nobody"); err != nil {
			t.Fatalf("Watermark while queries run: %v", err)
		}
	}
}
