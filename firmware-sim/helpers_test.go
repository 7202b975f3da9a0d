package sim_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// newTestDB is a fresh database for one test (storagetest.NewPostgresDB).
func newTestDB(tb testing.TB) string { return storagetest.NewPostgresDB(tb) }

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

// pgxQuery reads the store back with a plain pgx connection (the e2e test,
// where the server runs in another process). time comes back as time.Time.
func pgxQuery(dbURL string) sim.QueryFunc {
	return func(ctx context.Context, sql string) ([][]any, error) {
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return nil, err
		}
		defer c.Close(ctx)
		rows, err := c.Query(ctx, sql)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out [][]any
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, rows.Err()
	}
}

// storeQuery adapts a backend's read-only Query, the way cmd/meridian does.
func storeQuery(q func(context.Context, string, storage.QueryOptions) (storage.QueryResult, error)) sim.QueryFunc {
	return func(ctx context.Context, sql string) ([][]any, error) {
		res, err := q(ctx, sql, storage.QueryOptions{Timeout: time.Minute, MaxRows: 10_000_000})
		if err != nil {
			return nil, err
		}
		if res.Truncated {
			return nil, fmt.Errorf("result truncated at %d rows", len(res.Rows))
		}
		return res.Rows, nil
	}
}

// tcpProxy forwards to target and can cut every open connection (a
// database connection cut, a network blip).
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool // refuse new connections
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newTCPProxy(tb testing.TB, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// cut closes every connection through the proxy; new ones still work.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for c := range p.conns {
		c.Close()
	}
	return n / 2
}

// setDown makes the proxy refuse (down) or accept new connections, and
// cuts the open ones when going down: the database is unreachable.
func (p *tcpProxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
	if down {
		p.cut()
	}
}

// pgHostPort returns host:port of a postgres URL.
func pgHostPort(tb testing.TB, dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	return u.Host
}

// withHost replaces the host:port of a postgres URL.
func withHost(dbURL, hostport string) string {
	u, _ := url.Parse(dbURL)
	u.Host = hostport
	return u.String()
}
