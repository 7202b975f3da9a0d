package meridian_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// fakeServer is a scripted device endpoint for what a real server cannot
// be made to do on demand (refuse a well-formed batch as undecodable, shrink
// its limits between two connections). script runs once per connection
// after hello, with the connection number (from 1).
type fakeServer struct {
	url       string
	heartbeat int // hello.heartbeat; 0: 20
	conns     atomic.Int32
	mu        sync.Mutex
	batches   []wire.Batch // every batch received, in order
}

func newFakeServer(t *testing.T, script func(n int, conn net.Conn, f *fakeServer), heartbeat ...int) *fakeServer {
	f := &fakeServer{heartbeat: 20}
	if len(heartbeat) > 0 {
		f.heartbeat = heartbeat[0]
	}
	var wg sync.WaitGroup
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.Close()
		n := int(f.conns.Add(1))
		hello, _ := (&wire.Hello{Type: wire.TypeHello, Device: "fake", Acked: 0, MaxBatch: 1000, MaxFrame: 65536, Heartbeat: f.heartbeat}).MarshalMsg(nil)
		if wsutil.WriteServerBinary(conn, hello) != nil {
			return
		}
		script(n, conn, f)
	}))
	f.url = hs.URL
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		wg.Wait()
	})
	return f
}

// next reads the next batch, or returns false when the connection ended.
func (f *fakeServer) next(conn net.Conn) (wire.Batch, bool) {
	for {
		p, op, err := wsutil.ReadClientData(conn)
		if err != nil {
			return wire.Batch{}, false
		}
		if op != ws.OpBinary {
			continue
		}
		var b wire.Batch
		if _, err := b.UnmarshalMsg(p); err != nil {
			return wire.Batch{}, false
		}
		f.mu.Lock()
		f.batches = append(f.batches, b)
		f.mu.Unlock()
		return b, true
	}
}

func ack(conn net.Conn, b wire.Batch) error {
	p, _ := (&wire.Ack{Type: wire.TypeAck, Seq: b.Seq, Accepted: len(b.Readings), Errors: []string{}}).MarshalMsg(nil)
	return wsutil.WriteServerBinary(conn, p)
}

func closeWith(conn net.Conn, code int, errCode string) {
	p, _ := (&wire.Error{Type: wire.TypeError, Code: errCode, Message: errCode}).MarshalMsg(nil)
	_ = wsutil.WriteServerBinary(conn, p)
	_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(code), errCode)))
}

func (f *fakeServer) received() []wire.Batch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.Batch(nil), f.batches...)
}

func TestClientCloseCodes(t *testing.T) {
	t.Run("1013 waits TryLater before reconnecting", func(t *testing.T) {
		f := newFakeServer(t, func(_ int, conn net.Conn, _ *fakeServer) {
			closeWith(conn, wire.CloseTryAgainLater, "rate_limited")
		})
		cfg := fastConfig(f.url, "x")
		cfg.BackoffBase, cfg.BackoffMax, cfg.TryLater = time.Millisecond, time.Millisecond, 300*time.Millisecond
		c, err := meridian.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		time.Sleep(700 * time.Millisecond)
		_ = stop()
		if n := f.conns.Load(); n < 2 || n > 3 {
			t.Fatalf("%d connections in 700 ms with a 300 ms TryLater, want 2 or 3", n)
		}
	})
	t.Run("503 Retry-After is waited out", func(t *testing.T) {
		var conns atomic.Int32
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conns.Add(1)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many connections, retry later", http.StatusServiceUnavailable)
		}))
		defer hs.Close()
		cfg := fastConfig(hs.URL, "x")
		cfg.BackoffBase, cfg.BackoffMax = time.Millisecond, time.Millisecond
		c, err := meridian.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		time.Sleep(1500 * time.Millisecond)
		_ = stop()
		if n := conns.Load(); n != 2 {
			t.Fatalf("%d attempts in 1.5 s with Retry-After: 1, want 2", n)
		}
	})
	t.Run("a silent server is left after three heartbeats", func(t *testing.T) {
		f := newFakeServer(t, func(_ int, conn net.Conn, f *fakeServer) {
			for { // no pings, no acks: read until the client leaves
				if _, ok := f.next(conn); !ok {
					return
				}
			}
		}, 1)
		c, err := meridian.New(fastConfig(f.url, "x"))
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		start := time.Now()
		waitFor(t, "a reconnect", 6*time.Second, func() bool { return f.conns.Load() >= 2 })
		_ = stop()
		if d := time.Since(start); d < 2500*time.Millisecond {
			t.Fatalf("left the server after %s, before three 1 s heartbeats", d)
		}
	})
	t.Run("1001 reconnects with backoff only", func(t *testing.T) {
		f := newFakeServer(t, func(_ int, conn net.Conn, _ *fakeServer) {
			closeWith(conn, wire.CloseGoingAway, "shutdown")
		})
		cfg := fastConfig(f.url, "x")
		cfg.BackoffBase, cfg.BackoffMax, cfg.TryLater = time.Millisecond, 5*time.Millisecond, time.Hour
		c, err := meridian.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		waitFor(t, "5 reconnects", 5*time.Second, func() bool { return f.conns.Load() >= 5 })
		_ = stop()
	})
	t.Run("1007 on the same batch three times drops it", func(t *testing.T) {
		f := newFakeServer(t, func(_ int, conn net.Conn, f *fakeServer) {
			b, ok := f.next(conn)
			if !ok {
				return
			}
			if b.Readings[0].Metric == "poison" {
				closeWith(conn, wire.CloseInvalidData, "invalid_frame")
				return
			}
			_ = ack(conn, b)
			f.next(conn) // until the client goes
		})
		c, err := meridian.New(fastConfig(f.url, "x"))
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		_ = c.Send(context.Background(), []meridian.Reading{{Metric: "poison", Value: 1}})
		_ = c.Send(context.Background(), []meridian.Reading{{Metric: "fine", Value: 1}})
		waitFor(t, "ring empty", 5*time.Second, func() bool { return c.Pending() == 0 })
		_ = stop()
		var poison int
		for _, b := range f.received() {
			if b.Readings[0].Metric == "poison" {
				poison++
			}
		}
		if poison != 3 {
			t.Fatalf("poison batch sent %d times, want 3", poison)
		}
	})
	t.Run("1009 re-splits the batch under fresh seqs", func(t *testing.T) {
		f := newFakeServer(t, func(_ int, conn net.Conn, f *fakeServer) {
			for {
				b, ok := f.next(conn)
				if !ok {
					return
				}
				if len(b.Readings) > 2 {
					closeWith(conn, wire.CloseTooBig, "frame_too_big")
					return
				}
				if ack(conn, b) != nil {
					return
				}
			}
		})
		c, err := meridian.New(fastConfig(f.url, "x"))
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c)
		_ = c.Send(context.Background(), readings("m", time.Now(), 4))
		waitFor(t, "ring empty", 5*time.Second, func() bool { return c.Pending() == 0 })
		_ = stop()
		got := f.received()
		if len(got) != 3 || got[0].Seq != 1 || got[1].Seq != 2 || got[2].Seq != 3 ||
			len(got[1].Readings) != 2 || len(got[2].Readings) != 2 {
			t.Fatalf("batches received: %+v", got)
		}
	})
}
