package front

import (
	"net"
	"net/http"
	"sync"
	"testing"
)

type closeConn struct {
	net.Conn
	closed bool
}

func (c *closeConn) Close() error { c.closed = true; return nil }

// TestPendingConnsCounts walks connections through net/http's states: only
// New and Idle count, a New connection over the limit is closed, and every
// way out of New or Idle gives its place back.
func TestPendingConnsCounts(t *testing.T) {
	p := &pendingConns{limit: 2}
	a, b, c := &closeConn{}, &closeConn{}, &closeConn{}
	steps := []struct {
		conn  *closeConn
		state http.ConnState
		want  int64
	}{
		{a, http.StateNew, 1},
		{b, http.StateNew, 2},
		{c, http.StateNew, 2}, // over the limit: closed, not counted
		{a, http.StateActive, 1},
		{a, http.StateIdle, 2},
		{b, http.StateActive, 1},
		{b, http.StateHijacked, 1},
		{a, http.StateClosed, 0},
		{c, http.StateClosed, 0}, // already dropped: no double count
	}
	for i, s := range steps {
		p.track(s.conn, s.state)
		if got := p.n.Load(); got != s.want {
			t.Fatalf("step %d (%v): pending %d, want %d", i, s.state, got, s.want)
		}
	}
	if a.closed || b.closed || !c.closed {
		t.Fatalf("closed: a %v b %v c %v, want only c", a.closed, b.closed, c.closed)
	}
}

// TestPendingConnsConcurrent runs many connections' transitions at once
// (the accept loop and the connections' goroutines call track together):
// the count ends at zero.
func TestPendingConnsConcurrent(t *testing.T) {
	p := &pendingConns{limit: 1 << 20}
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 200 {
				c := &closeConn{}
				for _, s := range []http.ConnState{http.StateNew, http.StateActive, http.StateIdle, http.StateActive, http.StateClosed} {
					p.track(c, s)
				}
			}
		})
	}
	wg.Wait()
	if n := p.n.Load(); n != 0 {
		t.Fatalf("pending %d after every connection closed, want 0", n)
	}
}
