package meridian_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// store is what the tests need of a backend: ingest's Store plus read-only
// SQL to check what was stored.
type store interface {
	ingest.Store
	Query(ctx context.Context, sql string, opts storage.QueryOptions) (storage.QueryResult, error)
}

// server is a real ingest server on a real store behind a real listener.
type server struct {
	srv   *ingest.Server
	url   string
	store store
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// newPostgresServer runs ingest on a fresh PostgreSQL database
// (storagetest.NewPostgresDB: skips loudly without PostgreSQL, fails under
// CI=true).
func newPostgresServer(t testing.TB, mut func(*ingest.Config), opts ...func(*ingest.Options)) *server {
	t.Helper()
	return serve(t, meridiantest.OpenPostgres(t, "", testLogger()), mut, opts...)
}

func serve(t testing.TB, st store, mut func(*ingest.Config), opts ...func(*ingest.Options)) *server {
	t.Helper()
	cfg := ingest.DefaultConfig()
	cfg.Heartbeat = 2 * time.Second
	cfg.ShutdownGrace = 5 * time.Second
	s := meridiantest.StartIngest(t, st, cfg, mut, ingest.Options{Logger: testLogger()}, opts...)
	return &server{srv: s.Server, url: s.URL, store: st}
}

// count runs a COUNT(*) query against the store.
func (s *server) count(t testing.TB, where string) int {
	t.Helper()
	res, err := s.store.Query(context.Background(), "SELECT count(*) FROM telemetry WHERE "+where, storage.QueryOptions{Timeout: 10 * time.Second, MaxRows: 10})
	if err != nil {
		t.Fatal(err)
	}
	switch n := res.Rows[0][0].(type) {
	case int64:
		return int(n)
	case int32:
		return int(n)
	case int:
		return n
	default:
		t.Fatalf("count is %T", n)
		return 0
	}
}

// exampleServer runs ingest on an embedded SQLite store in a temporary
// directory: the stand-in for `meridian serve` that the examples talk to.
func exampleServer() (url string, stop func()) {
	dir, err := os.MkdirTemp("", "meridian-example-")
	if err != nil {
		panic(err)
	}
	scfg := sqlite.DefaultConfig()
	scfg.Path = filepath.Join(dir, "meridian.db")
	st, err := sqlite.Open(context.Background(), scfg, nil)
	if err != nil {
		panic(err)
	}
	cfg := ingest.DefaultConfig()
	srv, err := ingest.New(cfg, st, meridiantest.TokenAuth{}, ingest.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	hs := httptest.NewServer(srv.Handler())
	return hs.URL, func() {
		cancel()
		<-done
		hs.CloseClientConnections()
		hs.Close()
		st.Close()
		os.RemoveAll(dir)
	}
}
