//go:build linux

package wsconn

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStaleEventAfterFDReuse: an epoll event returned for a connection that
// then closed must not start a reader on the next connection that gets the
// same fd number (it would park a goroutine on an idle connection). The
// event is replayed through dispatch, as wait would handle it if it was
// still in its batch when the fd was reused.
func TestStaleEventAfterFDReuse(t *testing.T) {
	eng, ln := pollEngine(t, 20*time.Millisecond)
	if eng.poll == nil {
		t.Skip("no epoll")
	}

	// The first connection, registered and then closed: its fd number is
	// free again, and the event below is its registration's.
	oldSrv, oldCl := tcpPair(t, ln)
	defer oldCl.Close()
	first := &echo{msgs: make(chan []byte, 1), closed: make(chan Error, 1)}
	first.c = eng.Attach(oldSrv, nil, &baseCfg, first)
	first.c.Start()
	first.c.mu.Lock()
	fd := first.c.fd
	stale := *first.c.event()
	first.c.mu.Unlock()
	first.c.Abort()
	<-first.closed

	// A new connection on the same fd number: the kernel hands out the
	// lowest free fd, so soon one attached end of a new pair has it.
	// The other candidates stay open (and unstarted) until the end:
	// closing one would make its peer, perhaps the chosen one, readable.
	var h *echo
	var others []*echo
	defer func() {
		for _, e := range others {
			e.c.Abort()
			<-e.closed
		}
	}()
	for range 20 {
		a, b := tcpPair(t, ln)
		for _, x := range []net.Conn{a, b} {
			e := &echo{msgs: make(chan []byte, 1), closed: make(chan Error, 1)}
			e.c = eng.Attach(x, nil, &baseCfg, e)
			if e.c.fd == fd && h == nil {
				h = e
			} else {
				others = append(others, e)
			}
		}
		if h != nil {
			break
		}
	}
	if h == nil {
		t.Skip("the fd number was not reused (other goroutines opened files)")
	}
	h.c.Start()
	defer func() { h.c.Abort(); <-h.closed }()

	eng.poll.dispatch(stale)
	h.c.mu.Lock()
	reading := h.c.reading
	h.c.mu.Unlock()
	if reading {
		t.Fatal("a stale event of the fd's previous connection started a reader on the new one")
	}

	// The new registration's own events still work.
	cur := func() unix.EpollEvent { h.c.mu.Lock(); defer h.c.mu.Unlock(); return *h.c.event() }()
	if cur.Pad == stale.Pad {
		t.Fatalf("both registrations have generation %d", cur.Pad)
	}
	eng.poll.dispatch(cur)
	h.c.mu.Lock()
	reading = h.c.reading
	h.c.mu.Unlock()
	if !reading {
		t.Fatal("the connection's own event did not start a reader")
	}
}

// TestCloseBeforeStart: a polled connection closed before it was ever
// registered (a session refused after the upgrade) leaves cleanly.
func TestCloseBeforeStart(t *testing.T) {
	eng, ln := pollEngine(t, 20*time.Millisecond)
	sv, cl := tcpPair(t, ln)
	defer cl.Close()
	h := &echo{msgs: make(chan []byte, 1), closed: make(chan Error, 1)}
	h.c = eng.Attach(sv, nil, &baseCfg, h)
	h.c.Close(Error{Code: CloseGoingAway, Kind: "shutdown", Reason: "server shutting down"})
	if e := <-h.closed; e.Code != CloseGoingAway {
		t.Fatalf("closed %+v", e)
	}
}
