package dashboard

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/tinylib/msgp/msgp"
)

// FuzzParseClientMsg: whatever a browser sends, parsing neither panics nor
// lets an invalid subscription through.
func FuzzParseClientMsg(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","device":"boiler-7","metrics":["temp_c","rpm"]}`,
		`{"type":"subscribe","device":"boiler-7"}`,
		`{"type":"unsubscribe","device":"boiler-7"}`,
		`{"type":"subscribe","device":"Boiler 7"}`,
		`{"type":"subscribe","device":"d","metrics":[""]}`,
		`{"type":"nope"}`,
		`{"type":"subscribe","device":"d","metrics":`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseClientMsg(b)
		if err != nil {
			return
		}
		if !deviceRe.MatchString(m.Device) || len(m.Metrics) > maxMetricsFilter {
			t.Fatalf("accepted %+v", m)
		}
		for _, mt := range m.Metrics {
			if !metricRe.MatchString(mt) {
				t.Fatalf("accepted metric %q", mt)
			}
		}
	})
}

// FuzzJSONToMsgpack: every accepted command payload converts to valid
// MessagePack that converts back to JSON.
func FuzzJSONToMsgpack(f *testing.F) {
	for _, s := range []string{`{"delay_s":5}`, `[1,2.5,"x",true,null,{"a":[]}]`, `1e400`, `-9223372036854775809`, `"\u00e9"`, ``, `{} {}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		mp, err := jsonToMsgpack(b)
		if err != nil || mp == nil {
			return
		}
		var buf bytes.Buffer
		if _, err := msgp.UnmarshalAsJSON(&buf, mp); err != nil {
			t.Fatalf("%q → invalid msgpack: %v", b, err)
		}
		if !json.Valid(buf.Bytes()) {
			t.Fatalf("%q → %q is not JSON", b, buf.Bytes())
		}
	})
}
