package bridge

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/tinylib/msgp/msgp"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" = ok
		wantID  string // id on success or recovered id on error
		payload any    // expected decoded msgpack payload on success
		queue   bool
	}{
		{name: "full", in: `{"id":"c1","name":"reboot","payload":{"delay":5,"f":1.5,"s":"x","a":[true,null]},"queue":true}`, wantID: "c1",
			payload: map[string]any{"delay": int64(5), "f": 1.5, "s": "x", "a": []any{true, nil}}, queue: true},
		{name: "no payload", in: `{"id":"c2","name":"ping"}`, wantID: "c2"},
		{name: "null payload", in: `{"id":"c2","name":"ping","payload":null}`, wantID: "c2"},
		{name: "big uint", in: `{"id":"c3","name":"n","payload":18446744073709551615}`, wantID: "c3", payload: uint64(math.MaxUint64)},
		{name: "not json", in: `reboot`, wantErr: "must be a JSON object"},
		{name: "array", in: `[1]`, wantErr: "must be a JSON object"},
		{name: "unknown field keeps id", in: `{"id":"c4","name":"x","qeue":true}`, wantErr: `unknown field "qeue"`, wantID: "c4"},
		{name: "bad type keeps id", in: `{"id":"c5","name":5}`, wantErr: "must be a JSON object", wantID: "c5"},
		{name: "missing id", in: `{"name":"x"}`, wantErr: "command id must be"},
		{name: "id with slash", in: `{"id":"a/b","name":"x"}`, wantErr: "command id must be"},
		{name: "id wildcard not recovered", in: `{"id":"#","name":5}`, wantErr: "must be a JSON object"},
		{name: "missing name", in: `{"id":"c6"}`, wantErr: "command name must be", wantID: "c6"},
		{name: "control in name", in: `{"id":"c7","name":"a\u0001"}`, wantErr: "command name must be", wantID: "c7"},
		{name: "trailing", in: `{"id":"c8","name":"x"} {}`, wantErr: "trailing data", wantID: "c8"},
		{name: "number out of range", in: `{"id":"c10","name":"x","payload":[1e400]}`, wantErr: "number 1e400 is out of range", wantID: "c10"},
		{name: "too large", in: `{"id":"c9","name":"x","payload":"` + strings.Repeat("a", maxCommandBytes) + `"}`, wantErr: "more than the 32768 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, id, err := parseCommand([]byte(tt.in), true)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				if id != tt.wantID {
					t.Fatalf("recovered id = %q, want %q", id, tt.wantID)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if c.ID != tt.wantID || c.Queue != tt.queue {
				t.Fatalf("got %+v", c)
			}
			if tt.payload == nil {
				if c.Payload != nil {
					t.Fatalf("payload = %x, want none", c.Payload)
				}
				return
			}
			got, rest, err := msgp.ReadIntfBytes(c.Payload)
			if err != nil || len(rest) != 0 {
				t.Fatalf("payload not one MessagePack value: %v", err)
			}
			if !reflect.DeepEqual(got, tt.payload) {
				t.Fatalf("payload = %#v, want %#v", got, tt.payload)
			}
		})
	}
}

func TestParseCommandHTTPOptionalID(t *testing.T) {
	c, _, err := parseCommand([]byte(`{"name":"x"}`), false)
	if err != nil || c.ID != "" {
		t.Fatalf("got %+v, %v", c, err)
	}
}

func TestMsgpackToJSON(t *testing.T) {
	mp := func(v any) []byte {
		b, err := msgp.AppendIntf(nil, v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want string
		err  bool
	}{
		{"nil frame", []byte{0xc0}, `null`, false},
		{"empty", nil, `null`, false},
		{"map", mp(map[string]any{"ok": true, "n": int64(-3), "f": 2.5, "s": "é"}), `{"f":2.5,"n":-3,"ok":true,"s":"é"}`, false},
		{"nan", mp(math.NaN()), `null`, false},
		{"inf in array", mp([]any{math.Inf(1), 1.0}), `[null,1]`, false},
		{"binary", mp([]byte{1, 2}), `"AQI="`, false},
		{"truncated", []byte{0x82, 0xa1}, ``, true},
		{"trailing", []byte{0xc0, 0xc0}, ``, true},
		{"bad prefix", []byte{0xc1}, ``, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := msgpackToJSON(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("want error, got %s", got)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestFromResultBadPayload(t *testing.T) {
	r := fromResult(telemetry.CommandResult{Device: "d", ID: "c1", OK: true, Payload: []byte{0xc1}})
	if r.Error != "bad_payload" || string(r.Payload) != "null" || r.ID != "c1" {
		t.Fatalf("got %+v", r)
	}
}

var testBatch = telemetry.Batch{Device: "boiler-7", Seq: 42, Readings: []telemetry.Reading{
	{Time: 1700000000000, Metric: "temp", Value: 21.5},
	{Time: 1700000000001, Metric: `we"ird\`, Value: -1e-7},
}}

func TestBatchJSONShape(t *testing.T) {
	got := appendBatchJSON(nil, "node-a", testBatch)
	want := `{"device":"boiler-7","seq":42,"node":"node-a","readings":[{"t":1700000000000,"metric":"temp","value":21.5},{"t":1700000000001,"metric":"we\"ird\\","value":-1e-07}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if !json.Valid(got) {
		t.Fatal("invalid JSON")
	}
	if got := appendReadingJSON(nil, telemetry.Reading{Time: 5, Value: math.NaN()}); string(got) != `{"t":5,"value":null}` {
		t.Fatalf("reading = %s", got)
	}
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "tab\there", "\x00\x1f", "ünï", "\xff bad utf8", `"\`} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		var a, b string
		if err := json.Unmarshal(telemetry.AppendJSONString(nil, s), &a); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		_ = json.Unmarshal(want.Bytes(), &b)
		if a != b {
			t.Fatalf("%q: decoded %q, encoding/json gives %q", s, a, b)
		}
	}
}

func TestDecodeBatchBothFormats(t *testing.T) {
	for name, data := range map[string][]byte{
		"json":    appendBatchJSON(nil, "n1", testBatch),
		"msgpack": appendBatchMsgpack(nil, "n1", testBatch),
	} {
		t.Run(name, func(t *testing.T) {
			rb, err := decodeBatch(data)
			if err != nil {
				t.Fatal(err)
			}
			if rb.Node != "n1" || !reflect.DeepEqual(rb.Batch, testBatch) {
				t.Fatalf("got %+v", rb)
			}
		})
	}
	if _, err := decodeBatch([]byte{0x81, 0xa8}); err == nil {
		t.Fatal("truncated msgpack must fail")
	}
	if _, err := decodeBatch([]byte(`{"readings":5}`)); err == nil {
		t.Fatal("bad JSON must fail")
	}
}

func TestReadingTopic(t *testing.T) {
	tp := topics{prefix: "m"}
	tests := map[string]string{
		"temp":         "m/d/temp",
		"zone/1/temp":  "m/d/zone/1/temp",
		"status":       "m/d/_metric/status",
		"commands/x":   "m/d/_metric/commands/x",
		"telemetry":    "m/d/_metric/telemetry",
		"statusx":      "m/d/statusx",
		"_metric/temp": "m/d/_metric/_metric/temp",
	}
	for metric, want := range tests {
		if got := tp.reading("d", metric); got != want {
			t.Errorf("reading(%q) = %q, want %q", metric, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	tp := topics{prefix: "a/b"}
	tests := []struct {
		topic string
		kind  inKind
		subj  string
	}{
		{"a/b/d1/commands", inCommand, "d1"},
		{"a/b/d1/commands/c1/result", inResult, "d1"},
		{"a/b/d1/commands/error", inUnknown, ""},
		{"a/b/d1/session", inSession, "d1"},
		{"a/b/d1/status", inStatus, "d1"},
		{"a/b/_nodes/n1/status", inNode, "n1"},
		{"a/b/d1/telemetry", inTelemetry, "d1"},
		{"a/x/d1/telemetry", inUnknown, ""},
		{"a/b/d1/temp", inUnknown, ""},
	}
	for _, tt := range tests {
		k, s := tp.classify(tt.topic)
		if k != tt.kind || s != tt.subj {
			t.Errorf("classify(%q) = %v %q, want %v %q", tt.topic, k, s, tt.kind, tt.subj)
		}
	}
}

func TestValidDevice(t *testing.T) {
	for id, want := range map[string]bool{"boiler-7": true, "a": true, "a_b.c-d": true, "": false, "Boiler": false, "_nodes": false, "-a": false, "a/b": false, "a+": false, strings.Repeat("a", 65): false} {
		if validDevice(id) != want {
			t.Errorf("validDevice(%q) = %v", id, !want)
		}
	}
}
