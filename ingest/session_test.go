package ingest

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// http.DefaultClient's idle keep-alive connections of the fallback tests.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

func goodReading() wire.Reading { return wire.Reading{T: now(), HasT: true, Metric: "m", Value: 1} }

// TestFrameRules: RFC 6455 rules enforced by the connection core, seen
// through a real device session: fragmented messages are reassembled;
// unmasked, reserved-bit and stray continuation frames close 1002.
func TestFrameRules(t *testing.T) {
	ts := startServer(t, nil)
	b, _ := batch(1, goodReading()).MarshalMsg(nil)
	cases := []struct {
		name    string
		frames  []ws.Frame
		code    int // 0: expect an ack
		errCode string
	}{
		{"fragmented batch", []ws.Frame{
			ws.MaskFrame(ws.NewFrame(ws.OpBinary, false, b[:5])),
			ws.MaskFrame(ws.NewPingFrame([]byte("p"))),
			ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, b[5:])),
		}, 0, ""},
		{"unmasked", []ws.Frame{ws.NewBinaryFrame(b)}, wire.CloseProtocol, "unmasked_frame"},
		{"reserved bit", []ws.Frame{func() ws.Frame {
			f := ws.MaskFrame(ws.NewBinaryFrame(b))
			f.Header.Rsv = ws.Rsv(false, true, false)
			return f
		}()}, wire.CloseProtocol, "bad_frame"},
		{"continuation first", []ws.Frame{ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, b))}, wire.CloseProtocol, "bad_frame"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := ts.dial("tok-fr" + string(rune('a'+i)))
			for _, f := range tc.frames {
				_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if err := ws.WriteFrame(c.conn, f); err != nil {
					t.Fatal(err)
				}
			}
			if tc.code == 0 {
				if a := c.ack(); a.Seq != 1 || a.Accepted != 1 {
					t.Fatalf("ack %+v", a)
				}
				return
			}
			c.expectClose(tc.code, tc.errCode)
		})
	}
}

// bucketLimiter is a real token bucket per device (like devices' limiter).
type bucketLimiter struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
	r  rate.Limit
	b  int
}

func (l *bucketLimiter) AllowConnect(string) bool { return true }
func (l *bucketLimiter) AllowReadings(device string, n int) bool {
	l.mu.Lock()
	lim := l.m[device]
	if lim == nil {
		lim = rate.NewLimiter(l.r, l.b)
		l.m[device] = lim
	}
	l.mu.Unlock()
	return lim.AllowN(time.Now(), n)
}

// TestRateLimitPacesAndAcksFirst: over its readings rate a device is slowed
// down (every batch acked, no close), and when it is finally closed with
// 1013 (over the limit beyond rate_pause_max) the acks of batches already
// committed come before the close frame.
func TestRateLimitPacesAndAcksFirst(t *testing.T) {
	lim := &bucketLimiter{m: map[string]*rate.Limiter{}, r: 200, b: 20}
	ts := startServer(t, func(c *Config) { c.RatePauseMax = 2 * time.Second }, func(o *Options) { o.Limits = lim })
	c, _ := ts.dial("tok-pace")
	rs := make([]wire.Reading, 20)
	for i := range rs {
		rs[i] = goodReading()
	}
	start := time.Now()
	go func() {
		for seq := uint64(1); seq <= 10; seq++ {
			b, _ := batch(seq, rs...).MarshalMsg(nil)
			_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewBinaryFrame(b)))
		}
	}()
	for seq := uint64(1); seq <= 10; seq++ {
		if a := c.ack(); a.Seq != seq || a.Accepted != 20 {
			t.Fatalf("ack %d: %+v", seq, a)
		}
	}
	// 200 readings at 200/s with a burst of 20: about 0.9 s of pacing.
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("200 readings at 200/s took %v: not paced", d)
	}

	// A batch the bucket can never pass (over the burst) is closed 1013
	// after rate_pause_max, after the ack of the batch before it.
	ts.store.stall()
	c.send(batch(11, rs...))
	big := make([]wire.Reading, 40)
	for i := range big {
		big[i] = goodReading()
	}
	time.Sleep(50 * time.Millisecond)
	c.send(batch(12, big...))
	time.Sleep(100 * time.Millisecond)
	ts.store.resume()
	if a := c.ack(); a.Seq != 11 {
		t.Fatalf("ack %+v, want seq 11", a)
	}
	c.expectClose(wire.CloseTryAgainLater, "rate_limited")
}

// TestShutdownBoundedByStalledClients: Shutdown returns within
// shutdown_grace plus the margin whatever devices do, and only after every
// session has finished (so serve can close the store after it).
func TestShutdownBoundedByStalledClients(t *testing.T) {
	const grace = 500 * time.Millisecond
	cases := []struct {
		name  string
		stall func(t *testing.T, ts *testServer)
	}{
		{"device not reading its socket", func(t *testing.T, ts *testServer) {
			ts.dial("tok-deaf")
			// Commands fill the kernel buffers until the writer blocks: the
			// queue then stays full.
			payload := bytes.Repeat([]byte{0xc0}, 3000)
			full := time.Time{}
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				err := ts.srv.SendCommand("deaf", telemetry.Command{ID: "c", Name: "fill", Payload: payload})
				switch {
				case err == nil:
					full = time.Time{}
				case full.IsZero():
					full = time.Now()
				case time.Since(full) > 200*time.Millisecond:
					return
				default:
					time.Sleep(time.Millisecond)
				}
			}
			t.Fatal("the device's socket never filled up")
		}},
		{"device mid-frame", func(t *testing.T, ts *testServer) {
			c, _ := ts.dial("tok-half")
			b, _ := batch(1, goodReading()).MarshalMsg(nil)
			var buf bytes.Buffer
			_ = ws.WriteFrame(&buf, ws.MaskFrame(ws.NewBinaryFrame(b)))
			_, _ = c.conn.Write(buf.Bytes()[:buf.Len()-3]) // never finished
		}},
		{"device paced over its rate", func(t *testing.T, ts *testServer) {
			c, _ := ts.dial("tok-greedy") // the test limiter never lets it pass
			c.send(batch(1, goodReading()))
			time.Sleep(50 * time.Millisecond)
		}},
		{"stalled chunked POST body", func(t *testing.T, ts *testServer) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			_, _ = io.WriteString(conn, "POST /v1/device/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-chunky\r\n"+
				"Content-Type: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\x83\xa4ty\r\n")
			time.Sleep(50 * time.Millisecond)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) {
				c.ShutdownGrace, c.WriteTimeout, c.HandshakeTimeout, c.RatePauseMax = grace, time.Minute, time.Minute, time.Minute
			})
			tc.stall(t, ts)
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			start := time.Now()
			_ = ts.srv.Shutdown(ctx)
			if d := time.Since(start); d > grace+shutdownMargin+500*time.Millisecond {
				t.Fatalf("Shutdown took %v, want at most grace %v + margin %v", d, grace, shutdownMargin)
			}
			ts.store.resume()
			if n := ts.srv.conns.Load(); n != 0 {
				t.Fatalf("%d sessions still running after Shutdown", n)
			}
		})
	}
}
