package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestHelloOneWatermarkRead: a handshake of a device with nothing in the
// pipeline reads the watermark once (before the upgrade) and hello carries
// that value, also after an earlier session's batches were committed.
func TestHelloOneWatermarkRead(t *testing.T) {
	ts := startServer(t, nil)
	reads := func() int64 { return ts.store.watermarkReads.Load() }

	c, h := ts.dial("tok-once", wire.Subprotocol)
	if h.Acked != 0 || reads() != 1 {
		t.Fatalf("first handshake: acked %d, %d watermark reads, want 0 and 1", h.Acked, reads())
	}
	c.send(batch(5, wire.Reading{T: now(), HasT: true, Metric: "m", Value: 1}))
	if a := c.ack(); a.Seq != 5 {
		t.Fatalf("ack %+v", a)
	}
	c.conn.Close()
	waitFor := func(cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatal("timed out")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(func() bool { return !ts.srv.Online("once") })

	before := reads()
	_, h = ts.dial("tok-once", wire.Subprotocol)
	if h.Acked != 5 || reads()-before != 1 {
		t.Fatalf("second handshake: acked %d, %d watermark reads, want 5 and 1", h.Acked, reads()-before)
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
	submit := func(device string, seq uint64) <-chan struct{} {
		t.Helper()
		done := make(chan struct{})
		b := telemetry.Batch{Device: device, Seq: seq, Readings: []telemetry.Reading{{Time: now(), Metric: "m", Value: 1}}}
		if err := s.pipe.submit(ctx, b, func(telemetry.Outcome, error) { close(done) }); err != nil {
			t.Fatal(err)
		}
		return done
	}

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
