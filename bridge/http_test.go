package bridge

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
)

func TestCommandHTTP(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d1", "d2", "d3"}, []string{"n1"})...)
	cfg := externalConfig(url, prefix, "n1")
	cfg.CommandTimeout = 500 * time.Millisecond
	devs := newFakeDevices()
	b := startBridge(t, cfg, devs, func(o *Options) {
		o.DeviceExists = func(_ context.Context, id string) (bool, error) { return id != "nope", nil }
	})
	connect(b, devs, "d1")
	connect(b, devs, "d3")
	srv := httptest.NewServer(b.CommandHandler())
	defer srv.Close()

	// d1 answers every command; d3 never does.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case s := <-devs.cmds:
				if s.device != "d1" {
					continue
				}
				p, _ := msgp.AppendIntf(nil, map[string]any{"echo": s.cmd.Name})
				b.Result(telemetry.CommandResult{Device: s.device, ID: s.cmd.ID, OK: true, Payload: p})
			}
		}
	}()

	post := func(device, body string) (int, map[string]any) {
		resp, err := http.Post(srv.URL+"/v1/admin/devices/"+device+"/commands", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("response %q: %v", data, err)
		}
		return resp.StatusCode, v
	}
	tests := []struct {
		name, device, body string
		code               int
		check              func(map[string]any) bool
	}{
		{"delivered", "d1", `{"id":"h1","name":"ping","payload":{"a":1}}`, 200,
			func(v map[string]any) bool {
				return v["id"] == "h1" && v["ok"] == true && v["payload"].(map[string]any)["echo"] == "ping"
			}},
		{"generated id", "d1", `{"name":"ping"}`, 200, func(v map[string]any) bool { return strings.HasPrefix(v["id"].(string), "h-") }},
		{"offline", "d2", `{"id":"h2","name":"ping"}`, 409, func(v map[string]any) bool { return v["error"] == "offline" }},
		{"timeout", "d3", `{"id":"h3","name":"ping"}`, 504, func(v map[string]any) bool { return v["error"] == "timeout" }},
		{"queued", "d2", `{"id":"h4","name":"ping","queue":true}`, 202, func(v map[string]any) bool { return v["queued"] == true }},
		{"unknown device", "nope", `{"name":"ping"}`, 404, func(v map[string]any) bool { return v["error"] == "unknown_device" }},
		{"bad device id", "Bad", `{"name":"ping"}`, 400, func(v map[string]any) bool { return v["error"] == "invalid_device" }},
		{"malformed", "d1", `{"name":""}`, 400, func(v map[string]any) bool { return v["error"] == "malformed" }},
		{"too large", "d1", `{"name":"x","payload":"` + strings.Repeat("a", maxCommandBytes) + `"}`, 413, func(v map[string]any) bool { return v["error"] == "too_large" }},
	}
	for _, tt := range tests {
		code, v := post(tt.device, tt.body)
		if code != tt.code || !tt.check(v) {
			t.Errorf("%s: %d %v, want %d", tt.name, code, v, tt.code)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/admin/devices/d1/commands")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET = %d, want 405", resp.StatusCode)
	}
	// The queued command reaches d2 when it connects.
	connect(b, devs, "d2")
	eventually(t, "the queued HTTP command to reach d2", func() bool {
		b.cmds.mu.Lock()
		defer b.cmds.mu.Unlock()
		return len(b.cmds.queued["d2"]) == 0
	})
}

// TestSend: the Go-level Send (used by the dashboard) takes and returns
// MessagePack payloads and reports offline/timeout in the result.
func TestSend(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"s1", "s2", "s3"}, []string{"n1"})...)
	cfg := externalConfig(url, prefix, "n1")
	devs := newFakeDevices()
	b := startBridge(t, cfg, devs, nil)
	connect(b, devs, "s1")
	connect(b, devs, "s3")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case s := <-devs.cmds:
				if s.device == "s1" {
					b.Result(telemetry.CommandResult{Device: s.device, ID: s.cmd.ID, OK: true, Payload: s.cmd.Payload})
				}
			}
		}
	}()
	payload, _ := msgp.AppendIntf(nil, map[string]any{"level": int64(3)})
	res, err := b.Send(context.Background(), "s1", telemetry.Command{Name: "set"}, 2*time.Second)
	if err != nil || !res.OK || res.Error != "" || !strings.HasPrefix(res.ID, "h-") {
		t.Fatalf("no-payload send: %+v %v", res, err)
	}
	res, err = b.Send(context.Background(), "s1", telemetry.Command{ID: "x1", Name: "set", Payload: payload}, 2*time.Second)
	if err != nil || !res.OK || res.ID != "x1" {
		t.Fatalf("send: %+v %v", res, err)
	}
	v, _, err := msgp.ReadIntfBytes(res.Payload)
	if m, ok := v.(map[string]any); err != nil || !ok || m["level"] != int64(3) {
		t.Fatalf("echoed payload %#v %v", v, err)
	}
	if res, err := b.Send(context.Background(), "s2", telemetry.Command{Name: "set"}, time.Second); err != nil || res.Error != "offline" {
		t.Fatalf("offline: %+v %v", res, err)
	}
	if res, err := b.Send(context.Background(), "s3", telemetry.Command{Name: "set"}, 300*time.Millisecond); err != nil || res.Error != "timeout" {
		t.Fatalf("timeout: %+v %v", res, err)
	}
}
