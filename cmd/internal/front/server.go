package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPConfig bounds what a client may hold on the server without doing
// anything (hardening issue, item 4): every non-upgraded request has a
// header deadline, a body deadline and, between requests, an idle deadline,
// and the number of connections that have not sent a request yet (or sit
// idle between requests) is capped.
type HTTPConfig struct {
	// IdleTimeout closes a keep-alive connection quiet this long between
	// requests. 60 s is above browsers' and proxies' own keep-alive reuse
	// windows (nginx 75 s upstream is for its side), so a busy dashboard
	// reuses connections, while a parked socket is gone within a minute.
	IdleTimeout time.Duration
	// HeaderTimeout bounds the time to send request headers (slowloris).
	HeaderTimeout time.Duration
	// BodyTimeout bounds reading a request body, from the end of its headers
	// to its last byte. The largest legitimate body (a batch of max_frame
	// bytes, 1 MiB by default) takes 16 s at 512 kbit/s; 30 s leaves room.
	// WebSocket upgrades are exempt: their frames have ingest's deadlines.
	BodyTimeout time.Duration
	// MaxPendingConns caps connections that are open but have no request in
	// progress (accepted and not yet sent headers, or idle between
	// requests). Past it new connections are closed at once. Sized for a
	// reconnect storm of a large fleet: every device's TCP connection is
	// pending only until its headers arrive (milliseconds).
	MaxPendingConns int
}

func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{
		IdleTimeout:     60 * time.Second,
		HeaderTimeout:   10 * time.Second,
		BodyTimeout:     30 * time.Second,
		MaxPendingConns: 10000,
	}
}

// Validate reports the first bad value, naming its key.
func (h HTTPConfig) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"server.http.idle_timeout", h.IdleTimeout}, {"server.http.header_timeout", h.HeaderTimeout}, {"server.http.body_timeout", h.BodyTimeout}} {
		if d.v < time.Second {
			return errors.New(d.key + ": must be at least 1s, got " + d.v.String())
		}
	}
	if h.MaxPendingConns < 1 {
		return fmt.Errorf("server.http.max_pending_conns: must be >= 1, got %d", h.MaxPendingConns)
	}
	return nil
}

// Listen binds addr (server.listen) for NewServer's server. Accepted
// connections get no TCP keep-alive: every long-lived stream has its own
// heartbeat (device ping/pong, /v1/live pings, SSE comment lines) and idle
// HTTP connections end at server.http.idle_timeout, so the four setsockopt
// calls per accept that net.Listen's default adds bought nothing and cost a
// reconnect storm 4 of its ~30 syscalls per handshake.
func Listen(addr string) (net.Listener, error) {
	return (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
}

// NewServer builds the one http.Server of `serve` with the deadlines of
// cfg. Write deadlines are left to handlers: /v1/live streams for hours and
// /v1/query bounds its own whole request.
func NewServer(cfg HTTPConfig, h http.Handler, errLog *log.Logger) *http.Server {
	pending := &pendingConns{limit: int64(cfg.MaxPendingConns)}
	return &http.Server{
		Handler:           bodyDeadline(cfg.BodyTimeout, h),
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ConnState:         pending.track,
		ErrorLog:          errLog,
	}
}

// pendingConns counts connections in StateNew or StateIdle and closes a new
// one beyond the limit. ConnState runs on the connection's own goroutine
// before it reads, so closing there costs the server nothing more.
//
// No mutex: net/http calls ConnState for StateNew on its accept loop, so a
// lock here is taken by the accept loop and by every connection's
// transitions at once. In a reconnect storm that lock convoyed (a waiter
// handed the lock sat in a run queue behind thousands of goroutines) and
// held up accepts and upgrades: a goroutine dump of a 19,000-device storm
// showed the upgrades of most handshake slots queued on it. The state map
// is a sync.Map (fine-grained locking) and the count an atomic.
type pendingConns struct {
	limit int64
	n     atomic.Int64
	state sync.Map // net.Conn → http.ConnState
}

func (p *pendingConns) track(c net.Conn, s http.ConnState) {
	var prev any
	var known bool
	if s == http.StateClosed || s == http.StateHijacked {
		prev, known = p.state.LoadAndDelete(c)
	} else {
		prev, known = p.state.Swap(c, s)
	}
	if known && (prev == http.StateNew || prev == http.StateIdle) {
		p.n.Add(-1)
	}
	switch s {
	case http.StateIdle:
		p.n.Add(1)
	case http.StateNew:
		for {
			n := p.n.Load()
			if n >= p.limit {
				p.state.Delete(c)
				_ = c.Close()
				return
			}
			if p.n.CompareAndSwap(n, n+1) {
				return
			}
		}
	}
}

// bodyDeadline gives every request with a body BodyTimeout to deliver it,
// then clears the deadline once the body is read, so a long answer (a query
// result, an SSE stream) is not cut by it. An upgrade request has no body.
func bodyDeadline(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody clears the read deadline when the body has been read to its
// end; net/http's background read of the next request then waits without one
// (IdleTimeout applies once the handler returns).
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
