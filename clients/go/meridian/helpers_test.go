package meridian_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/sqlite"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// tokenAuth accepts "tok-<device>" as the token of <device>.
type tokenAuth struct{}

type unauthorized struct{}

func (unauthorized) Error() string      { return "unauthorized" }
func (unauthorized) Unauthorized() bool { return true }

func (tokenAuth) AuthenticateDevice(_ context.Context, token string) (string, error) {
	id, ok := strings.CutPrefix(token, "tok-")
	if !ok {
		return "", unauthorized{}
	}
	return id, nil
}

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
	pcfg := postgres.DefaultConfig()
	pcfg.URL = storagetest.NewPostgresDB(t)
	// The test reads the store back as its operator (the test database's
	// superuser), like `meridian query`, not as a dashboard viewer.
	pcfg.AllowPrivilegedQuery = true
	st, err := postgres.Open(context.Background(), pcfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := st.WaitReady(ctx); err != nil {
		t.Fatalf("store not ready: %v", err)
	}
	return serve(t, st, mut, opts...)
}

func serve(t testing.TB, st store, mut func(*ingest.Config), opts ...func(*ingest.Options)) *server {
	t.Helper()
	cfg := ingest.DefaultConfig()
	cfg.Heartbeat = 2 * time.Second
	cfg.ShutdownGrace = 5 * time.Second
	if mut != nil {
		mut(&cfg)
	}
	o := ingest.Options{Logger: testLogger()}
	for _, f := range opts {
		f(&o)
	}
	srv, err := ingest.New(cfg, st, tokenAuth{}, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		stop()
		<-done
		hs.CloseClientConnections()
		hs.Close()
	})
	return &server{srv: srv, url: hs.URL, store: st}
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
	srv, err := ingest.New(cfg, st, tokenAuth{}, ingest.Options{Logger: slog.New(slog.DiscardHandler)})
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

// cutter is a TCP proxy in front of the server that can drop every open
// connection, as a network blip does.
type cutter struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newCutter(t testing.TB, targetURL string) *cutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: strings.TrimPrefix(targetURL, "http://"), conns: map[net.Conn]struct{}{}}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(func() {
		ln.Close()
		c.cut()
		c.wg.Wait()
	})
	return c
}

func (c *cutter) url() string { return "http://" + c.ln.Addr().String() }

func (c *cutter) accept() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", c.target, 5*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		c.mu.Lock()
		c.conns[in], c.conns[out] = struct{}{}, struct{}{}
		c.mu.Unlock()
		c.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer c.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			c.mu.Lock()
			delete(c.conns, src)
			c.mu.Unlock()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

func (c *cutter) cut() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.conns)
	for x := range c.conns {
		x.Close()
	}
	return n / 2
}
