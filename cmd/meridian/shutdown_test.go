package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/devices/adminclient"
)

// TestShutdownBoundedWhateverClientsDo plays the stalled clients of
// hardening item 6 against a real server, then stops it: serve must return
// within ingest.shutdown_grace plus a small margin, and nothing may touch
// the store after it closed.
//   - a chunked POST /v1/device/batches whose body never ends;
//   - a device WebSocket that stopped reading (its acks and close frame
//     cannot be delivered);
//   - a live-feed SSE stream whose client stopped reading;
//   - a request whose headers never end.
func TestShutdownBoundedWhateverClientsDo(t *testing.T) {
	cleanEnv(t)
	cfg := testConfig(t)
	cfg.Ingest.ShutdownGrace = 2 * time.Second
	// The body deadline must not be what rescues shutdown.
	cfg.Server.HTTP.BodyTimeout = time.Minute
	cfg.Server.HTTP.HeaderTimeout = time.Minute
	ts := startServe(t, cfg)
	admin := waitAdminKey(t, ts)
	host := strings.TrimPrefix(ts.base, "http://")
	ac, err := adminclient.New(ts.base, admin, adminclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ac.AddDevice(t.Context(), "stall-http", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	wsDev, err := ac.AddDevice(t.Context(), "stall-ws", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	viewer, err := ac.AddAPIKey(t.Context(), "stall-live", devices.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	// A chunked batch body that never ends.
	c1 := dial()
	_, _ = io.WriteString(c1, "POST /v1/device/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+dev.Token+
		"\r\nContent-Type: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\x83\xa4\r\n")

	// A device that reads its hello, then nothing more.
	c2 := wsDial(t, "ws://"+host+"/v1/device", http.Header{"Authorization": {"Bearer " + wsDev.Token}})
	if op, _ := c2.next(t, 5*time.Second); op != ws.OpBinary {
		t.Fatalf("hello op %v", op)
	}
	if tc, ok := c2.conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(1024) // make its receive window fill quickly
	}

	// An SSE live stream nobody reads.
	c3 := dial()
	_, _ = io.WriteString(c3, "GET /v1/live/sse?device=stall-ws HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+viewer.Key+"\r\n\r\n")
	if line, err := bufio.NewReader(c3).ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("sse: %q %v", line, err)
	}

	// Headers that never end.
	c4 := dial()
	_, _ = io.WriteString(c4, "GET /healthz HTTP/1.1\r\nHost: x\r\n")

	time.Sleep(200 * time.Millisecond) // let every handler reach its stall
	start := time.Now()
	if err := ts.stop(); err != nil {
		t.Logf("serve returned: %v", err) // a drain error is allowed; a hang is not
	}
	if d := time.Since(start); d > cfg.Ingest.ShutdownGrace+2*time.Second {
		t.Fatalf("shutdown took %s with stalled clients; want within shutdown_grace (%s) + 2s", d, cfg.Ingest.ShutdownGrace)
	}
	if logs := ts.logs.String(); strings.Contains(logs, "database is closed") || strings.Contains(logs, "closed pool") {
		t.Fatalf("something used the store after it closed:\n%s", logs)
	}
}
