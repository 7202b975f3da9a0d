package dashboard

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/wsconn"
)

type pumpStub struct{ closed chan struct{} }

func (pumpStub) Message(ws.OpCode, []byte) *wsconn.Error { return nil }
func (pumpStub) Ending(wsconn.Error)                     {}
func (pumpStub) Farewell(wsconn.Error) []byte            { return nil }
func (h pumpStub) Closed(wsconn.Error)                   { close(h.closed) }

// TestPumpEndsWhenHubDropsClient: the hub drops a client (slow) while a
// burst is being written to a peer that does not read: pump returns and the
// connection still finishes (its writer is not stuck in a callback), so the
// socket is closed and the client cleaned up.
func TestPumpEndsWhenHubDropsClient(t *testing.T) {
	for i := range 10 {
		eng, err := wsconn.NewEngine(wsconn.EngineConfig{Blocking: true, Tick: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		a, b := net.Pipe()
		cfg := wsconn.Config{MaxMessage: 4096, WriteTimeout: 50 * time.Millisecond, OpText: true}
		h := pumpStub{closed: make(chan struct{})}
		c := &client{out: make(chan []byte, 256), done: make(chan struct{})}
		for range 256 {
			c.out <- []byte("x")
		}
		lc := &liveConn{c: c, written: make(chan struct{}, 1), pumped: make(chan struct{})}
		lc.conn = eng.Attach(a, nil, &cfg, h)
		go lc.pump()
		time.Sleep(5 * time.Millisecond) // a burst in flight, the peer not reading
		c.close(reasonSlow)
		select {
		case <-lc.pumped:
		case <-time.After(2 * time.Second):
			t.Fatalf("run %d: pump did not return", i)
		}
		select {
		case <-h.closed:
		case <-time.After(2 * time.Second):
			t.Fatalf("run %d: the connection never finished (writer stuck)", i)
		}
		b.Close()
		eng.Close()
	}
}

// TestLiveKeyRevokedEndsStream: a live stream opened with a bearer API key
// ends at the next check after the key is revoked (the check the WebSocket
// ping and the SSE heartbeat run).
func TestLiveKeyRevokedEndsStream(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.d.hub.attach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.d.recheckKey(viewerKey, c)
	select {
	case <-c.done:
		t.Fatal("a valid key's stream was dropped")
	case <-time.After(200 * time.Millisecond):
	}
	e.auth.revoke(viewerKey)
	e.d.recheckKey(viewerKey, c)
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
		t.Fatal("the stream of a revoked key is still open")
	}
	if r := c.closeReason(); r != reasonSession {
		t.Fatalf("close reason %q, want %q", r, reasonSession)
	}
}
