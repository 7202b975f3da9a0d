package telemetry

import (
	"encoding/json"
	"math"
	"testing"
)

func TestAppendJSONString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"temp", `"temp"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"tab\tnl\n", `"tab\u0009nl\u000a"`},
		{"<b>&", `"\u003cb\u003e\u0026"`},
		{"°C µs", `"°C µs"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
		{"ls\u2028ps\u2029", `"ls\u2028ps\u2029"`},
	}
	for _, tc := range tests {
		got := string(AppendJSONString(nil, tc.in))
		if got != tc.want {
			t.Errorf("AppendJSONString(%q) = %s, want %s", tc.in, got, tc.want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Errorf("%s is not valid JSON: %v", got, err)
		}
	}
}

func TestAppendJSONFloat(t *testing.T) {
	for v, want := range map[float64]string{1.5: "1.5", -2: "-2", 1e21: "1e+21", math.NaN(): "null", math.Inf(1): "null"} {
		if got := string(AppendJSONFloat(nil, v)); got != want {
			t.Errorf("AppendJSONFloat(%v) = %s, want %s", v, got, want)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	f.Add("temp")
	f.Add("\xff<\u2028")
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s: %v", s, out, err)
		}
	})
}
