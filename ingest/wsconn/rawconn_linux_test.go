//go:build linux

package wsconn

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// fdsBackTo waits until at most want fds are open: a read or write still
// returning from its wait closes the socket a moment after Closed.
func fdsBackTo(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := openFDs(t)
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fds open after the connection closed, want at most %d", n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRawConnPieces: a plain TCP connection is owned as a bare fd; a frame
// arriving in pieces (the reader waits mid-frame) is reassembled, and
// closing leaves no fd behind.
func TestRawConnPieces(t *testing.T) {
	eng, ln := pollEngine(t, 20*time.Millisecond)
	before := openFDs(t)
	sv, cl := tcpPair(t, ln)
	h := &echo{msgs: make(chan []byte, 4), closed: make(chan Error, 1)}
	h.c = eng.Attach(sv, nil, &Config{MaxMessage: 4096, WriteTimeout: time.Second}, h)
	if _, ok := h.c.t.(*rawConn); !ok {
		t.Fatalf("transport %T, want *rawConn", h.c.t)
	}
	h.c.Start()
	var frame bytes.Buffer
	_ = ws.WriteFrame(&frame, masked(ws.OpBinary, true, bytes.Repeat([]byte("p"), 1000)))
	b := frame.Bytes()
	for i := 0; i < len(b); i += 100 {
		if _, err := cl.Write(b[i:min(i+100, len(b))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p := &peer{t: t, conn: cl, br: bufio.NewReader(cl)}
	if f := p.read(); len(f.Payload) != 1000 {
		t.Fatalf("echo of %d bytes", len(f.Payload))
	}
	// Half a frame, then the peer goes: the waiting reader ends.
	_, _ = cl.Write(b[:500])
	time.Sleep(20 * time.Millisecond)
	cl.Close()
	if e := <-h.closed; e.Code != CloseAbnormal {
		t.Fatalf("closed %+v", e)
	}
	fdsBackTo(t, before)
}

// smallBuffers shrinks both ends' socket buffers, so that a few megabytes
// the peer does not read really block the writer (loopback buffers can
// otherwise grow to hold them).
func smallBuffers(t *testing.T, sv, cl net.Conn) {
	t.Helper()
	if err := sv.(*net.TCPConn).SetWriteBuffer(8 << 10); err != nil {
		t.Fatal(err)
	}
	if err := cl.(*net.TCPConn).SetReadBuffer(8 << 10); err != nil {
		t.Fatal(err)
	}
}

// TestRawConnCloseWhileWaiting: Close (here an Abort at shutdown) ends a
// reader waiting mid-frame and a writer waiting on a peer that does not
// read.
func TestRawConnCloseWhileWaiting(t *testing.T) {
	eng, ln := pollEngine(t, 20*time.Millisecond)
	before := openFDs(t)
	sv, cl := tcpPair(t, ln)
	defer cl.Close()
	smallBuffers(t, sv, cl)
	h := &echo{msgs: make(chan []byte, 4), closed: make(chan Error, 1)}
	h.c = eng.Attach(sv, nil, &Config{MaxMessage: 1 << 20, WriteTimeout: time.Minute}, h)
	h.c.Start()
	var frame bytes.Buffer
	_ = ws.WriteFrame(&frame, masked(ws.OpBinary, true, make([]byte, 1000)))
	_, _ = cl.Write(frame.Bytes()[:10])
	// Megabytes the peer never reads: the writer ends up waiting.
	for range 64 {
		h.c.SendData(make([]byte, 64<<10), nil)
	}
	time.Sleep(100 * time.Millisecond)
	done := make(chan struct{})
	go func() { h.c.Abort(); close(done) }()
	select {
	case <-h.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("not closed 5 s after Abort")
	}
	<-done
	fdsBackTo(t, before+1) // +1: the peer's end, still open
}

// TestRawConnWriteTimeout: a peer that does not take our writes is closed
// after WriteTimeout.
func TestRawConnWriteTimeout(t *testing.T) {
	eng, ln := pollEngine(t, 20*time.Millisecond)
	sv, cl := tcpPair(t, ln)
	defer cl.Close()
	smallBuffers(t, sv, cl)
	h := &echo{msgs: make(chan []byte, 4), closed: make(chan Error, 1)}
	h.c = eng.Attach(sv, nil, &Config{MaxMessage: 1 << 20, WriteTimeout: 200 * time.Millisecond}, h)
	h.c.Start()
	for range 64 {
		h.c.SendData(make([]byte, 64<<10), nil)
	}
	select {
	case e := <-h.closed:
		if e.Kind != KindWriteFailed {
			t.Fatalf("closed %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not closed 5 s after the write timeout")
	}
}
