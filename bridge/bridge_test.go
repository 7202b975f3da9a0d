package bridge

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
)

func TestTelemetryBatchPublished(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, nil, []string{"n1"})...)
	b := startBridge(t, externalConfig(url, prefix, "n1"), newFakeDevices(), nil)
	msgs := watch(t, url, "", "", prefix+"/#")

	b.Committed(telemetry.Batch{Device: "boiler-7", Seq: 9, Readings: []telemetry.Reading{
		{Time: 1700000000000, Metric: "temp", Value: 21.5},
		{Time: 1700000000500, Metric: "on", Value: 1},
	}})
	m := next(t, msgs, prefix+"/boiler-7/telemetry")
	var got map[string]any
	if err := json.Unmarshal([]byte(m.payload), &got); err != nil {
		t.Fatalf("payload %q: %v", m.payload, err)
	}
	want := map[string]any{
		"device": "boiler-7", "seq": 9.0, "node": "n1",
		"readings": []any{
			map[string]any{"t": 1700000000000.0, "metric": "temp", "value": 21.5},
			map[string]any{"t": 1700000000500.0, "metric": "on", "value": 1.0},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("payload = %v\nwant %v", got, want)
	}
	if m.retained {
		t.Fatal("batch messages must not be retained")
	}
}

func TestTelemetryPerReadingLayout(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, append(retainedTopics(prefix, nil, []string{"n1"}), prefix+"/d1/temp", prefix+"/d1/_metric/status")...)
	cfg := externalConfig(url, prefix, "n1")
	cfg.Telemetry = TelemetryConfig{Layout: LayoutReading, Retain: true}
	b := startBridge(t, cfg, newFakeDevices(), nil)
	msgs := watch(t, url, "", "", prefix+"/d1/#")

	b.Committed(telemetry.Batch{Device: "d1", Seq: 1, Readings: []telemetry.Reading{
		{Time: 1000, Metric: "temp", Value: 20.25},
		{Time: 1001, Metric: "status", Value: 3},
	}})
	if m := next(t, msgs, prefix+"/d1/temp"); m.payload != `{"t":1000,"value":20.25}` {
		t.Fatalf("temp payload %s", m.payload)
	}
	if m := next(t, msgs, prefix+"/d1/_metric/status"); m.payload != `{"t":1001,"value":3}` {
		t.Fatalf("reserved metric payload %s", m.payload)
	}
	// Retained: a late subscriber gets the last value at once.
	late := watch(t, url, "", "", prefix+"/d1/temp")
	if m := next(t, late, prefix+"/d1/temp"); !m.retained || m.payload != `{"t":1000,"value":20.25}` {
		t.Fatalf("late subscriber got %+v", m)
	}
	select {
	case m := <-msgs:
		if m.topic == prefix+"/d1/telemetry" {
			t.Fatal("reading layout must not publish batch messages")
		}
	case <-time.After(200 * time.Millisecond):
	}
}

func TestTelemetryMsgpackFormat(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, nil, []string{"n1"})...)
	cfg := externalConfig(url, prefix, "n1")
	cfg.Format = "msgpack"
	b := startBridge(t, cfg, newFakeDevices(), nil)
	msgs := watch(t, url, "", "", prefix+"/+/telemetry")
	want := telemetry.Batch{Device: "d1", Seq: 3, Readings: []telemetry.Reading{{Time: 5, Metric: "x", Value: 1.5}}}
	b.Committed(want)
	m := next(t, msgs, prefix+"/d1/telemetry")
	v, _, err := msgp.ReadIntfBytes([]byte(m.payload))
	if err != nil {
		t.Fatal(err)
	}
	if got := v.(map[string]any); got["device"] != "d1" || got["node"] != "n1" {
		t.Fatalf("payload %v", got)
	}
}

func TestPresenceRetained(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d1"}, []string{"n1"})...)
	devs := newFakeDevices()
	b := startBridge(t, externalConfig(url, prefix, "n1"), devs, nil)
	connect(b, devs, "d1")

	// A subscriber arriving later sees the retained state.
	time.Sleep(200 * time.Millisecond)
	msgs := watch(t, url, "", "", prefix+"/d1/+")
	got := collect(t, msgs, prefix+"/d1/status", prefix+"/d1/session")
	if m := got[prefix+"/d1/status"]; !m.retained || m.payload != "online" {
		t.Fatalf("status %+v, want retained online", m)
	}
	var c claim
	if err := json.Unmarshal([]byte(got[prefix+"/d1/session"].payload), &c); err != nil || c.Node != "n1" || !c.Online {
		t.Fatalf("session record %+v, %v", c, err)
	}
	disconnect(b, devs, "d1")
	nextPayload(t, msgs, prefix+"/d1/status", "offline")

	// The node status is retained too.
	nodes := watch(t, url, "", "", prefix+"/_nodes/+/status")
	if m := next(t, nodes, prefix+"/_nodes/n1/status"); m.payload != "online" {
		t.Fatalf("node status %q", m.payload)
	}
}

func TestShutdownMarksOffline(t *testing.T) {
	t.Parallel()
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d1"}, []string{"n1"})...)
	msgs := watch(t, url, "", "", prefix+"/#")
	devs := newFakeDevices()
	b, stop := startStoppable(t, externalConfig(url, prefix, "n1"), devs)
	connect(b, devs, "d1")
	nextPayload(t, msgs, prefix+"/d1/status", "online")
	stop()
	nextPayload(t, msgs, prefix+"/d1/status", "offline")
	nextPayload(t, msgs, prefix+"/_nodes/n1/status", "offline")
}

// commandRig is one node with a fake device endpoint and a watcher.
type commandRig struct {
	url, prefix string
	b           *Bridge
	devs        *fakeDevices
	msgs        chan message
}

func newCommandRig(t *testing.T, mod func(*Config)) *commandRig {
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d1", "d2"}, []string{"n1"})...)
	cfg := externalConfig(url, prefix, "n1")
	if mod != nil {
		mod(&cfg)
	}
	devs := newFakeDevices()
	r := &commandRig{url: url, prefix: prefix, devs: devs}
	r.b = startBridge(t, cfg, devs, nil)
	r.msgs = watch(t, url, "", "", prefix+"/#")
	return r
}

func (r *commandRig) result(t *testing.T, device, id string) resultJSON {
	t.Helper()
	m := next(t, r.msgs, r.prefix+"/"+device+"/commands/"+id+"/result")
	var res resultJSON
	if err := json.Unmarshal([]byte(m.payload), &res); err != nil {
		t.Fatalf("result %q: %v", m.payload, err)
	}
	return res
}

func TestCommandRoundTrip(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, nil)
	connect(r.b, r.devs, "d1")
	nextPayload(t, r.msgs, r.prefix+"/d1/status", "online")

	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"c1","name":"reboot","payload":{"delay":5}}`)
	var sent sentCommand
	select {
	case sent = <-r.devs.cmds:
	case <-time.After(5 * time.Second):
		t.Fatal("command not delivered to the device")
	}
	if sent.device != "d1" || sent.cmd.ID != "c1" || sent.cmd.Name != "reboot" {
		t.Fatalf("sent %+v", sent)
	}
	if p, _, err := msgp.ReadIntfBytes(sent.cmd.Payload); err != nil || !reflect.DeepEqual(p, map[string]any{"delay": int64(5)}) {
		t.Fatalf("payload %v %v", p, err)
	}
	// The device answers (ingest calls Result).
	pl, _ := msgp.AppendIntf(nil, map[string]any{"uptime": int64(12)})
	r.b.Result(telemetry.CommandResult{Device: "d1", ID: "c1", OK: true, Payload: pl})
	m := next(t, r.msgs, r.prefix+"/d1/commands/c1/result")
	if m.payload != `{"id":"c1","ok":true,"payload":{"uptime":12}}` {
		t.Fatalf("result %s", m.payload)
	}
}

func TestCommandOffline(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, nil)
	publish(t, r.url, r.prefix+"/d2/commands", `{"id":"c1","name":"reboot"}`)
	m := next(t, r.msgs, r.prefix+"/d2/commands/c1/result")
	if m.payload != `{"id":"c1","ok":false,"error":"offline"}` {
		t.Fatalf("result %s", m.payload)
	}
}

func TestQueuedCommandDeliveredOnConnect(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, nil)
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"q1","name":"set","payload":[1,2],"queue":true}`)
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"q2","name":"set","queue":true}`)
	// No answer while queued.
	deadline := time.After(300 * time.Millisecond)
wait:
	for {
		select {
		case m := <-r.msgs:
			if m.topic == r.prefix+"/d1/commands/q1/result" {
				t.Fatalf("queued command answered: %s", m.payload)
			}
		case <-deadline:
			break wait
		}
	}
	connect(r.b, r.devs, "d1")
	for _, id := range []string{"q1", "q2"} {
		select {
		case s := <-r.devs.cmds:
			if s.cmd.ID != id {
				t.Fatalf("delivered %s, want %s (in order)", s.cmd.ID, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("queued command %s not delivered on connect", id)
		}
	}
}

func TestQueuedCommandLimits(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, func(c *Config) { c.CommandQueue.MaxPerDevice = 1; c.CommandQueue.MaxAge = time.Second })
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"q1","name":"a","queue":true}`)
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"q2","name":"b","queue":true}`)
	if res := r.result(t, "d1", "q2"); res.Error != "queue_full" {
		t.Fatalf("second queued command: %+v", res)
	}
	if res := r.result(t, "d1", "q1"); res.Error != "expired" {
		t.Fatalf("first queued command after max_age: %+v", res)
	}
}

func TestMalformedCommand(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, nil)
	tests := []struct {
		name, payload, topic, wantErr string
	}{
		{"not json", `reboot now`, "/d1/commands/error", "malformed"},
		{"id recovered", `{"id":"m1","name":7}`, "/d1/commands/m1/result", "malformed"},
		{"unknown field", `{"id":"m2","name":"x","extra":1}`, "/d1/commands/m2/result", "malformed"},
		{"bad device", `{"id":"m3","name":"x"}`, "/Bad/commands/error", "invalid_device"},
	}
	for _, tt := range tests {
		dev := "/d1"
		if tt.wantErr == "invalid_device" {
			dev = "/Bad"
		}
		publish(t, r.url, r.prefix+dev+"/commands", tt.payload)
		m := next(t, r.msgs, r.prefix+tt.topic)
		var res resultJSON
		if err := json.Unmarshal([]byte(m.payload), &res); err != nil || res.OK || res.Error != tt.wantErr || res.Detail == "" {
			t.Fatalf("%s: result %s", tt.name, m.payload)
		}
	}
	// Still alive and answering.
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"ok1","name":"x"}`)
	if res := r.result(t, "d1", "ok1"); res.Error != "offline" {
		t.Fatalf("after malformed input: %+v", res)
	}
}

func TestCommandBusy(t *testing.T) {
	t.Parallel()
	r := newCommandRig(t, nil)
	connect(r.b, r.devs, "d1")
	r.devs.mu.Lock()
	r.devs.busy = true
	r.devs.mu.Unlock()
	publish(t, r.url, r.prefix+"/d1/commands", `{"id":"b1","name":"x"}`)
	if res := r.result(t, "d1", "b1"); res.Error != "busy" {
		t.Fatalf("busy device: %+v", res)
	}
}
