package main

import (
	"github.com/meridian-iot/meridian/cmd/internal/front"
	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"

	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

type testServer struct {
	base string
	out  *meridiantest.Buffer
	logs *meridiantest.Buffer
	stop func() error // cancels and waits for serve to return
}

// startServe runs serve on a random loopback port with the embedded store
// in a temp dir.
func startServe(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	ts := &testServer{out: &meridiantest.Buffer{}, logs: &meridiantest.Buffer{}}
	log := slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { done <- serve(ctx, cfg, log, ts.out, func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		ts.base = "http://" + a.String()
	case err := <-done:
		cancel()
		t.Fatalf("serve returned before listening: %v\nlogs:\n%s", err, ts.logs)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("serve did not start listening within 20s")
	}
	var once sync.Once
	var stopErr error
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(cfg.Ingest.ShutdownGrace + 10*time.Second):
				t.Error("serve did not return after cancel")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = ts.stop() })
	return ts
}

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Server.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.Ingest.ShutdownGrace = 5 * time.Second
	// The embedded broker on a free port: tests run in parallel, and the
	// default 127.0.0.1:1884 can only be bound once.
	cfg.MQTT.Embedded.Listen = "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func get(t *testing.T, url, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var adminKeyLine = regexp.MustCompile(`(?m)^\s+(mak_\S+)$`)

func waitAdminKey(t *testing.T, ts *testServer) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := adminKeyLine.FindStringSubmatch(ts.out.String()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no admin key printed; stdout:\n%s\nlogs:\n%s", ts.out, ts.logs)
	return ""
}

func TestServeEmbeddedDefaults(t *testing.T) {
	cfg := testConfig(t)
	ts := startServe(t, cfg)

	if code, body := get(t, ts.base+"/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	// Ready once the store answers and the operator keys exist: moments
	// after the listener is up, so poll briefly.
	var (
		code int
		body string
		rep  front.ReadyReport
		err  error
	)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, body = get(t, ts.base+"/readyz", "")
		if err = json.Unmarshal([]byte(body), &rep); err == nil && code == 200 {
			break
		}
	}
	if err != nil || code != 200 || !rep.Ready || rep.Storage.Mode != "sqlite" {
		t.Errorf("/readyz = %d %s (%v)", code, body, err)
	}

	key := waitAdminKey(t, ts)
	if strings.Contains(ts.logs.String(), key) {
		t.Error("the admin key appeared in the log")
	}
	if code, _ := get(t, ts.base+"/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics without a key = %d, want 401", code)
	}
	code, body = get(t, ts.base+"/metrics", key)
	if code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("/metrics with the admin key = %d, body lacks Go/process collectors:\n%.300s", code, body)
	}
	if code, _ := get(t, ts.base+"/v1/admin/devices", key); code != 200 {
		t.Errorf("/v1/admin/devices with the admin key = %d", code)
	}

	if err := ts.stop(); err != nil {
		t.Fatalf("serve returned %v\nlogs:\n%s", err, ts.logs)
	}
	for _, want := range []string{"meridian serving", "storage=sqlite", "durable=true", "stopped"} {
		if !strings.Contains(ts.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, ts.logs)
		}
	}

	// A second start on the same data dir prints no new key.
	ts2 := startServe(t, cfg)
	if code, _ := get(t, ts2.base+"/metrics", key); code != 200 {
		t.Errorf("after restart, /metrics with the first key = %d", code)
	}
	if err := ts2.stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ts2.out.String(), "mak_") {
		t.Errorf("second start printed a key again:\n%s", ts2.out)
	}
}

func TestServeOpenMetrics(t *testing.T) {
	cfg := testConfig(t)
	cfg.Server.Metrics.Open = true
	ts := startServe(t, cfg)
	if code, _ := get(t, ts.base+"/metrics", ""); code != 200 {
		t.Errorf("/metrics open = %d, want 200", code)
	}
}

func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t)
	cfg.Server.Listen = ln.Addr().String()
	err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "(server.listen)") {
		t.Fatalf("serve on a busy port: %v", err)
	}
}

func TestServePostgres(t *testing.T) {
	cfg := testConfig(t)
	cfg.Storage.URL = testPGURL(t)
	ts := startServe(t, cfg)

	// The postgres store connects and migrates in the background.
	var rep front.ReadyReport
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, ts.base+"/readyz", "")
		rep = front.ReadyReport{}
		_ = json.Unmarshal([]byte(body), &rep)
		if code == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !rep.Ready || rep.Storage.Backend != "postgres" || (rep.Storage.Mode != "postgres" && rep.Storage.Mode != "timescaledb") {
		t.Fatalf("/readyz never ready: %+v\nlogs:\n%s", rep, ts.logs)
	}
	key := waitAdminKey(t, ts)
	if code, _ := get(t, ts.base+"/metrics", key); code != 200 {
		t.Errorf("/metrics with the admin key = %d", code)
	}
	if err := ts.stop(); err != nil {
		t.Fatalf("serve returned %v\nlogs:\n%s", err, ts.logs)
	}
}
