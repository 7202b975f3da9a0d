package main

import (
	"context"
	"encoding/binary"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestReplayIsPacedNotKicked: a device replaying an offline buffer of
// 20,000 readings in one burst, at default settings (devices.readings_per_second
// 1000, burst 2000), gets every batch acked and is never closed with 1013:
// over the rate its socket is read more slowly (docs/protocol.md, "Rate
// limits"). Through the real serve wiring: devices' limiter, ingest, SQLite.
func TestReplayIsPacedNotKicked(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~20 s: the replay is paced at 1000 readings/s")
	}
	cleanEnv(t)
	ts := startServe(t, testConfig(t))
	key := waitAdminKey(t, ts)
	token := meridiantest.AddDevice(t, ts.base, key, "replay-1")

	d := ws.Dialer{Protocols: []string{wire.Subprotocol}, Timeout: 5 * time.Second,
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}})}
	conn, br, _, err := d.Dial(context.Background(), "ws"+strings.TrimPrefix(ts.base, "http")+"/v1/device")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var src interface{ Read([]byte) (int, error) } = conn
	if br != nil {
		src = br
	}

	const batches, perBatch = 40, 500
	start := time.Now().Add(-time.Hour).UnixMilli()
	go func() {
		for seq := 1; seq <= batches; seq++ {
			rs := make([]wire.Reading, perBatch)
			for i := range rs {
				rs[i] = wire.Reading{T: start + int64(seq*perBatch+i), HasT: true, Metric: "temp", Value: float64(i)}
			}
			b, _ := (&wire.Batch{Type: wire.TypeBatch, Seq: uint64(seq), Readings: rs}).MarshalMsg(nil)
			_ = conn.SetWriteDeadline(time.Now().Add(time.Minute))
			if ws.WriteFrame(conn, ws.MaskFrame(ws.NewBinaryFrame(b))) != nil {
				return
			}
		}
	}()
	acked := 0
	for acked < batches {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		f, err := ws.ReadFrame(src)
		if err != nil {
			t.Fatalf("after %d acks: %v", acked, err)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			_ = ws.WriteFrame(conn, ws.MaskFrame(ws.NewPongFrame(f.Payload)))
			continue
		case ws.OpClose:
			t.Fatalf("closed %d %q after %d acks", binary.BigEndian.Uint16(f.Payload), f.Payload[2:], acked)
		}
		typ, _ := wire.TypeOf(f.Payload)
		switch typ {
		case wire.TypeHello:
		case wire.TypeAck:
			var a wire.Ack
			if _, err := a.UnmarshalMsg(f.Payload); err != nil || a.Seq != uint64(acked+1) || a.Accepted != perBatch {
				t.Fatalf("ack %d: %+v %v", acked+1, a, err)
			}
			acked++
		default:
			t.Fatalf("unexpected %q frame after %d acks: %q", typ, acked, f.Payload)
		}
	}
}
