package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestServeSessionRecordsDrainedAtShutdown: session records are queued, not
// written by the handshake; the stop order must still write every open and
// close (including the closes of sessions ended by the shutdown itself)
// before the store closes.
func TestServeSessionRecordsDrainedAtShutdown(t *testing.T) {
	for name := range backends(t) {
		t.Run(name, func(t *testing.T) {
			cleanEnv(t)
			cfg := testConfig(t)
			args := []string{"--data-dir", cfg.Server.DataDir}
			if name == "postgres" {
				cfg.Storage.URL = testPGURL(t)
				args = []string{"--storage-url", cfg.Storage.URL}
			}
			ts := startServe(t, cfg)
			key := waitAdminKey(t, ts)
			token := meridiantest.AddDevice(t, ts.base, key, "sess-1")
			hdr := http.Header{"Authorization": {"Bearer " + token}}
			u := "ws://" + strings.TrimPrefix(ts.base, "http://") + "/v1/device"
			// Three sessions: two taken over by the next, the last one
			// ended by the shutdown.
			for range 3 {
				c := wsDial(t, u, hdr)
				if op, p := c.next(t, 5*time.Second); op != ws.OpBinary {
					t.Fatalf("first frame op %v", op)
				} else if typ, _ := wire.TypeOf(p); typ != wire.TypeHello {
					t.Fatalf("first frame %q, want hello", typ)
				}
			}
			if err := ts.stop(); err != nil {
				t.Fatalf("serve: %v\nlogs:\n%s", err, ts.logs)
			}
			out, line, code := runCLI(t, append([]string{"query", "--format", "csv",
				"SELECT count(*) AS sessions, count(ended_at) AS closed FROM device_sessions WHERE device = 'sess-1'"}, args...)...)
			if code != 0 {
				t.Fatalf("query: exit %d: %s", code, line)
			}
			if want := "sessions,closed\n3,3\n"; out != want {
				t.Fatalf("device_sessions after shutdown:\n%s\nwant:\n%s\nlogs:\n%s", out, want, ts.logs)
			}
		})
	}
}
