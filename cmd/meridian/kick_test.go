package main

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestRevokeAndDisableKickLiveSession: through the real server, revoking a
// device's tokens or disabling it closes its live WebSocket with 1008
// within a second, and the old token no longer connects.
func TestRevokeAndDisableKickLiveSession(t *testing.T) {
	cleanEnv(t)
	ts := startServe(t, testConfig(t))
	key := waitAdminKey(t, ts)
	host := strings.TrimPrefix(ts.base, "http://")
	admin := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return resp.StatusCode, v
	}
	for _, tc := range []struct{ name, action string }{
		{"revoke", "/revoke-tokens"},
		{"disable", "/disable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "kick-" + tc.name
			status, v := admin("POST", "/v1/admin/devices", `{"id":"`+id+`"}`)
			token, _ := v["token"].(string)
			if status != http.StatusCreated || token == "" {
				t.Fatalf("add device: %d %v", status, v)
			}
			hdr := http.Header{"Authorization": {"Bearer " + token}}
			c := wsDial(t, "ws://"+host+"/v1/device", hdr)
			if op, p := c.next(t, 5*time.Second); op != ws.OpBinary {
				t.Fatalf("first frame op %v", op)
			} else if typ, _ := wire.TypeOf(p); typ != wire.TypeHello {
				t.Fatalf("first frame %q, want hello", typ)
			}
			start := time.Now()
			if status, v := admin("POST", "/v1/admin/devices/"+id+tc.action, ``); status >= 300 {
				t.Fatalf("%s: %d %v", tc.action, status, v)
			}
			for {
				op, p := c.next(t, 2*time.Second)
				if op != ws.OpClose {
					continue // the error frame comes first
				}
				if code := binary.BigEndian.Uint16(p); code != wire.ClosePolicy {
					t.Fatalf("close code %d (%q), want 1008", code, p[2:])
				}
				break
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("session closed after %s, want within 1s", d)
			}
			d := ws.Dialer{Timeout: 5 * time.Second, Header: ws.HandshakeHeaderHTTP(hdr)}
			if conn, _, _, err := d.Dial(t.Context(), "ws://"+host+"/v1/device"); err == nil {
				conn.Close()
				t.Fatal("old token still connects")
			} else if se, ok := err.(ws.StatusError); !ok || int(se) != http.StatusUnauthorized {
				t.Fatalf("reconnect: %v, want 401", err)
			}
		})
	}
}
