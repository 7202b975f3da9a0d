package wsconn

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// slowHandler blocks in Message the way a paced or back-pressured device
// session does.
type slowHandler struct {
	ended atomic.Pointer[Error]
	c     *Conn
}

func (h *slowHandler) Message(ws.OpCode, []byte) *Error {
	time.Sleep(300 * time.Millisecond)
	return nil
}
func (h *slowHandler) Ending(e Error)        { h.ended.Store(&e); h.c.Close(e) }
func (h *slowHandler) Farewell(Error) []byte { return nil }
func (h *slowHandler) Closed(Error)          {}

// TestNotIdleWhileHandlerBlocks: a peer that keeps sending while its handler
// is blocked (its frames wait unread in the socket) is not closed as idle.
func TestNotIdleWhileHandlerBlocks(t *testing.T) {
	eng, ln := pollEngine(t, 10*time.Millisecond)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		cl, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		defer cl.Close()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if ws.WriteFrame(cl, masked(ws.OpBinary, true, []byte("b"))) != nil {
				return
			}
		}
	}()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	h := &slowHandler{}
	h.c = eng.Attach(sc, nil, &Config{MaxMessage: 100, Idle: 150 * time.Millisecond, WriteTimeout: time.Second}, h)
	h.c.Start()
	time.Sleep(1200 * time.Millisecond)
	if e := h.ended.Load(); e != nil {
		t.Fatalf("closed while the peer sent every 20 ms and the handler was busy: %+v", *e)
	}
	h.c.Abort()
}

// TestPingFloodKeepsOnePong: a peer flooding pings without reading its
// socket has at most one pong queued, not one per ping.
func TestPingFloodKeepsOnePong(t *testing.T) {
	eng, err := NewEngine(EngineConfig{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	a, b := net.Pipe()
	defer b.Close()
	h := &slowHandler{}
	c := eng.Attach(a, nil, &Config{MaxMessage: 4096, WriteTimeout: 5 * time.Second}, h)
	h.c = c
	c.Start()
	for range 2000 {
		if err := ws.WriteFrame(b, masked(ws.OpPing, true, make([]byte, 125))); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	pongs := 0
	for _, f := range c.queue {
		if f.pong {
			pongs++
		}
	}
	c.mu.Unlock()
	if pongs > 1 {
		t.Fatalf("%d pongs queued after 2,000 pings from a peer that does not read", pongs)
	}
	c.Abort()
}
