package meridiantest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// TokenAuth is the device authenticator of in-process servers: "tok-<id>"
// is the token of device <id>, anything else is unauthorized.
type TokenAuth struct{}

var _ ingest.Authenticator = TokenAuth{}

type unauthorized struct{}

func (unauthorized) Error() string      { return "unauthorized" }
func (unauthorized) Unauthorized() bool { return true }

func (TokenAuth) AuthenticateDevice(_ context.Context, token string) (string, error) {
	id, ok := strings.CutPrefix(token, "tok-")
	if !ok {
		return "", unauthorized{}
	}
	return id, nil
}

// Tokens maps each id to its TokenAuth token.
func Tokens(ids []string) map[string]string {
	m := make(map[string]string, len(ids))
	for _, id := range ids {
		m[id] = "tok-" + id
	}
	return m
}

// OpenPostgres opens the postgres backend at url ("" is a fresh database,
// storagetest.NewPostgresDB) and waits until it is migrated and ready; it
// is closed at cleanup. The test reads the store back as its operator (the
// test database's superuser), like `meridian query`, not as a dashboard
// viewer, so privileged ad-hoc queries are allowed.
func OpenPostgres(tb testing.TB, url string, log *slog.Logger) *postgres.Store {
	tb.Helper()
	if url == "" {
		url = storagetest.NewPostgresDB(tb)
	}
	cfg := postgres.DefaultConfig()
	cfg.URL = url
	cfg.AllowPrivilegedQuery = true
	st, err := postgres.Open(context.Background(), cfg, log)
	if err != nil {
		tb.Fatalf("open postgres store: %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := st.WaitReady(ctx); err != nil {
		tb.Fatalf("store not ready: %v", err)
	}
	return st
}

// Ingest is a real ingest server, run in-process on a real store behind an
// httptest server.
type Ingest struct {
	Server *ingest.Server
	HTTP   *httptest.Server
	URL    string // HTTP.URL
}

// StartIngest runs ingest.New(cfg, store, TokenAuth{}, opts) until cleanup,
// which stops it (drain, acks) before closing the listener. cfg and opts are
// the calling package's test defaults; mut (if not nil) and each of with
// then apply one test's changes to them.
func StartIngest(tb testing.TB, store ingest.Store, cfg ingest.Config, mut func(*ingest.Config), opts ingest.Options, with ...func(*ingest.Options)) *Ingest {
	tb.Helper()
	if mut != nil {
		mut(&cfg)
	}
	for _, f := range with {
		f(&opts)
	}
	srv, err := ingest.New(cfg, store, TokenAuth{}, opts)
	if err != nil {
		tb.Fatalf("new ingest server: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(func() {
		stop()
		<-done
		hs.CloseClientConnections()
		hs.Close()
	})
	return &Ingest{Server: srv, HTTP: hs, URL: hs.URL}
}
