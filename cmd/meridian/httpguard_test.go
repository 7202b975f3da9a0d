package main

import (
	"github.com/meridian-iot/meridian/cmd/internal/front"

	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// closedWithin reports whether the server closes conn within d (a read
// returns EOF or a reset rather than timing out on our side).
func closedWithin(t *testing.T, conn net.Conn, d time.Duration) bool {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if err == nil {
		return true // EOF
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true // reset
}

// TestHTTPIdleAndBodyDeadlines plays the attacker of hardening item 4
// against a real server: a keep-alive connection gone quiet, a chunked body
// that never ends, a body shorter than its Content-Length, and a flood of
// connections that never send anything. Each must be closed by the server,
// without credentials, within its documented bound.
func TestHTTPIdleAndBodyDeadlines(t *testing.T) {
	cleanEnv(t)
	cfg := testConfig(t)
	cfg.Server.HTTP = front.HTTPConfig{IdleTimeout: time.Second, HeaderTimeout: time.Second, BodyTimeout: time.Second, MaxPendingConns: 20}
	cfg.Devices.Provisioning.Key = "fleet-key-0123456789abcdef"
	ts := startServe(t, cfg)
	addr := strings.TrimPrefix(ts.base, "http://")
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	const bound = 5 * time.Second // the 1 s deadlines plus scheduling slack

	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial()
		_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("healthz: %v %v", resp, err)
		}
		_ = resp.Body.Close()
		if !closedWithin(t, c, bound) {
			t.Fatal("an idle keep-alive connection is still open")
		}
	})
	t.Run("chunked login body that never ends", func(t *testing.T) {
		c := dial()
		_, _ = io.WriteString(c, "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n4\r\nkey=\r\n")
		if !closedWithin(t, c, bound) {
			t.Fatal("a never-ending chunked /login body keeps its connection")
		}
	})
	t.Run("short provision body", func(t *testing.T) {
		c := dial()
		_, _ = io.WriteString(c, "POST /v1/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"device\":")
		if !closedWithin(t, c, bound) {
			t.Fatal("a /v1/provision body shorter than its Content-Length keeps its connection")
		}
	})
	t.Run("silent connections are capped and timed out", func(t *testing.T) {
		conns := make([]net.Conn, 0, 25)
		for range 25 {
			conns = append(conns, dial())
		}
		closedNow := 0
		for _, c := range conns[20:] {
			if closedWithin(t, c, 500*time.Millisecond) {
				closedNow++
			}
		}
		if closedNow != 5 {
			t.Errorf("%d of the 5 connections beyond max_pending_conns were closed at once", closedNow)
		}
		for i, c := range conns[:20] {
			if !closedWithin(t, c, bound) {
				t.Fatalf("silent connection %d still open after the header timeout", i)
			}
		}
		// The cap counts only what is pending: the server still answers.
		if code, _ := get(t, ts.base+"/healthz", ""); code != 200 {
			t.Fatalf("healthz after the flood: %d", code)
		}
	})
	t.Run("a body sent in time leaves a reusable connection", func(t *testing.T) {
		// The body deadline is cleared at the end of the body, so the
		// keep-alive connection serves the next request normally.
		c := dial()
		br := bufio.NewReader(c)
		body := "key=mak_wrong"
		_, _ = io.WriteString(c, "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\n"+body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		time.Sleep(500 * time.Millisecond) // below IdleTimeout
		_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, err = http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("reused connection: %v %v", resp, err)
		}
	})
}
