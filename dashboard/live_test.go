package dashboard

import (
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/wsconn"
)

// TestLiveFrameRules: /v1/live runs on the same connection core as the
// device protocol: fragmented messages are reassembled, unmasked and
// reserved-bit frames close 1002, binary messages close 1003.
func TestLiveFrameRules(t *testing.T) {
	e := newTestEnv(t, nil)
	sub := []byte(`{"type":"subscribe","device":"boiler-7"}`)
	cases := []struct {
		name   string
		frames []ws.Frame
		code   ws.StatusCode // 0: expect "subscribed"
	}{
		{"fragmented subscribe", []ws.Frame{
			ws.MaskFrame(ws.NewFrame(ws.OpText, false, sub[:10])),
			ws.MaskFrame(ws.NewPingFrame(nil)),
			ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, sub[10:])),
		}, 0},
		{"unmasked", []ws.Frame{ws.NewTextFrame(sub)}, wsconn.CloseProtocol},
		{"reserved bit", []ws.Frame{func() ws.Frame {
			f := ws.MaskFrame(ws.NewTextFrame(sub))
			f.Header.Rsv = ws.Rsv(true, false, false)
			return f
		}()}, wsconn.CloseProtocol},
		{"binary", []ws.Frame{ws.MaskFrame(ws.NewBinaryFrame(sub))}, wsconn.CloseUnsupported},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := wsDial(t, e.srv.URL, http.Header{"Authorization": {"Bearer " + viewerKey}})
			if err != nil {
				t.Fatal(err)
			}
			if m := c.next(); m.Type != "hello" {
				t.Fatalf("first message %+v", m)
			}
			for _, f := range tc.frames {
				if err := ws.WriteFrame(c.conn, f); err != nil {
					t.Fatal(err)
				}
			}
			if tc.code == 0 {
				if m := c.next(); m.Type != "subscribed" {
					t.Fatalf("got %+v, want subscribed", m)
				}
				return
			}
			_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				f, err := ws.ReadFrame(c.r)
				if err != nil {
					t.Fatalf("no close frame: %v", err)
				}
				if f.Header.OpCode == ws.OpClose {
					if code, _ := ws.ParseCloseFrameData(f.Payload); code != tc.code {
						t.Fatalf("close %d, want %d", code, tc.code)
					}
					return
				}
			}
		})
	}
}
