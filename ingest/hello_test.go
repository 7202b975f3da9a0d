package ingest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestHelloOneWatermarkRead: a handshake of a device with nothing in the
// pipeline reads the watermark once (before the upgrade), or not at all
// when the authenticator read it with the token (AckedAuthenticator), and
// hello carries that value, also after an earlier session's batches were
// committed.
func TestHelloOneWatermarkRead(t *testing.T) {
	cases := []struct {
		name   string
		acked  bool // an AckedAuthenticator
		perDev int64
	}{
		{"plain authenticator", false, 1},
		{"watermark read with the token", true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			if tc.acked {
				ts.srv.auth = ackedAuth{store: ts.store}
			}
			reads := func() int64 { return ts.store.watermarkReads.Load() }

			c, h := ts.dial("tok-once", wire.Subprotocol)
			if h.Acked != 0 || reads() != tc.perDev {
				t.Fatalf("first handshake: acked %d, %d watermark reads, want 0 and %d", h.Acked, reads(), tc.perDev)
			}
			c.send(batch(5, wire.Reading{T: now(), HasT: true, Metric: "m", Value: 1}))
			if a := c.ack(); a.Seq != 5 {
				t.Fatalf("ack %+v", a)
			}
			c.conn.Close()
			deadline := time.Now().Add(5 * time.Second)
			for ts.srv.Online("once") {
				if time.Now().After(deadline) {
					t.Fatal("timed out")
				}
				time.Sleep(5 * time.Millisecond)
			}

			before := reads()
			_, h = ts.dial("tok-once", wire.Subprotocol)
			if h.Acked != 5 || reads()-before != tc.perDev {
				t.Fatalf("second handshake: acked %d, %d watermark reads, want 5 and %d", h.Acked, reads()-before, tc.perDev)
			}
		})
	}
}

// TestHelloRereadsAfterSubmit: when the device had a batch in the pipeline
// at the pre-upgrade read, or submitted one after it (an HTTP post, a
// taken-over session), hello waits for it and reads the watermark again,
// so acked covers that batch.
func TestHelloRereadsAfterSubmit(t *testing.T) {
	ts := startServer(t, nil)
	s, st := ts.srv, ts.store
	ctx := context.Background()
	preRead := func(device string) preRead {
		t.Helper()
		m := s.pipe.markIdle(device)
		acked, err := st.Watermark(ctx, device)
		if err != nil {
			t.Fatal(err)
		}
		return preRead{acked: acked, mark: m}
	}
	submit := func(device string, seq uint64) <-chan struct{} { return submitOne(t, s, device, seq) }

	cases := []struct {
		name string
		// between runs after the pre-upgrade read; it returns the acked
		// hello must carry.
		between   func(device string) uint64
		wantReads int64
	}{
		{"nothing submitted", func(string) uint64 { return 0 }, 1},
		{"submitted and committed since", func(d string) uint64 { <-submit(d, 3); return 3 }, 2},
		{"submitted, still in the pipeline", func(d string) uint64 {
			st.stall()
			submit(d, 4)
			time.AfterFunc(50*time.Millisecond, st.resume)
			return 4
		}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			device := "reread-" + tc.name
			before := st.watermarkReads.Load()
			pre := preRead(device)
			want := tc.between(device)
			h, err := s.helloAfterIdle(ctx, nil, pre, device, "sess")
			if err != nil {
				t.Fatal(err)
			}
			if h.Acked != want || st.watermarkReads.Load()-before != tc.wantReads {
				t.Fatalf("acked %d after %d watermark reads, want %d after %d", h.Acked, st.watermarkReads.Load()-before, want, tc.wantReads)
			}
		})
	}

	// Busy at the pre-upgrade read: never reused, even once idle again.
	st.stall()
	done := submit("busy", 9)
	pre := preRead("busy")
	st.resume()
	<-done
	if pre.mark.ok {
		t.Fatal("mark taken with a batch in the pipeline reports idle")
	}
	h, err := s.helloAfterIdle(ctx, nil, pre, "busy", "sess")
	if err != nil || h.Acked != 9 {
		t.Fatalf("hello after a busy pre-read: acked %d (%v), want 9", h.Acked, err)
	}
}

// pipeHolds reports whether device has a batch in the pipeline.
func (s *Server) pipeHolds(device string) bool {
	s.pipe.pendMu.Lock()
	defer s.pipe.pendMu.Unlock()
	return s.pipe.pending[device] > 0
}

// ackedAuth is tokenAuth that reads the device's watermark with the token,
// as devices.Service does in one store query (AckedAuthenticator).
type ackedAuth struct {
	tokenAuth
	store *memStore
}

func (a ackedAuth) AuthenticateDeviceAcked(ctx context.Context, token string) (string, uint64, bool, error) {
	dev, err := a.AuthenticateDevice(ctx, token)
	if err != nil {
		return "", 0, false, err
	}
	a.store.mu.Lock()
	defer a.store.mu.Unlock()
	return dev, a.store.wm[dev], true, nil
}

// TestHelloWatermarkFromTokenLookup: with an AckedAuthenticator, when one
// of the device's batches was in flight or finished after the token lookup
// began, the watermark that lookup read is not trusted and hello covers the
// batch (TestHelloOneWatermarkRead covers the quiet case: no read of its
// own).
func TestHelloWatermarkFromTokenLookup(t *testing.T) {
	ts := startServer(t, nil)
	s, st := ts.srv, ts.store
	s.auth = ackedAuth{store: st}
	reads := func() int64 { return st.watermarkReads.Load() }

	ctx := context.Background()
	submit := func(device string, seq uint64) <-chan struct{} { return submitOne(t, s, device, seq) }
	r := httptest.NewRequest(http.MethodGet, "/v1/device", nil)
	cases := []struct {
		name    string
		between func(device string) (want uint64, wait func())
	}{
		{"a batch finished after the lookup began", func(d string) (uint64, func()) {
			<-submit(d, 3)
			return 3, func() {}
		}},
		{"a batch in flight during the lookup", func(d string) (uint64, func()) {
			st.stall()
			done := submit(d, 4)
			return 4, func() { st.resume(); <-done }
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			device := "fused-" + strings.ReplaceAll(tc.name, " ", "-")
			since := s.pipe.markAll()
			// The lookup's read happens here and sees 0; then the batch.
			want, wait := tc.between(device)
			before := reads()
			pre, ok := s.preRead(httptest.NewRecorder(), r, device, since, 0, true)
			wait()
			if !ok {
				t.Fatal("preRead refused")
			}
			h, err := s.helloAfterIdle(ctx, nil, pre, device, "sess")
			if err != nil {
				t.Fatal(err)
			}
			if h.Acked != want || reads() == before {
				t.Fatalf("acked %d after %d watermark reads, want %d after at least one", h.Acked, reads()-before, want)
			}
		})
	}
}

// submitOne puts a one-reading batch of device into the pipeline directly
// (as an HTTP post or a taken-over session would) and returns a channel
// closed once it is done.
func submitOne(t *testing.T, s *Server, device string, seq uint64) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	b := telemetry.Batch{Device: device, Seq: seq, Readings: []telemetry.Reading{{Time: now(), Metric: "m", Value: 1}}}
	if err := s.pipe.submit(context.Background(), b, func(telemetry.Outcome, error) { close(done) }); err != nil {
		t.Fatal(err)
	}
	return done
}
