package dashboard

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
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

// FuzzSafeNext: whatever the login form or query carries as next, the
// redirect target is a path on this site that no browser can read as
// another host.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/", "/ui/devices/x?a=1", "/\t/evil.example/x", "//evil", "/\\evil", "https://evil", "/%09/evil", "\x00", "/ok\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := safeNext(s)
		if got != "/" && got != s {
			t.Fatalf("safeNext(%q) = %q: neither the input nor /", s, got)
		}
		// What a browser does before resolving: drop tabs and newlines,
		// read backslashes as slashes.
		b := strings.NewReplacer("\t", "", "\n", "", "\r", "", "\\", "/").Replace(got)
		if !strings.HasPrefix(b, "/") || strings.HasPrefix(b, "//") {
			t.Fatalf("safeNext(%q) = %q, which a browser reads as %q (off-site)", s, got, b)
		}
		u, err := url.Parse(got)
		if err != nil || u.Host != "" || u.Scheme != "" {
			t.Fatalf("safeNext(%q) = %q parses to host %q scheme %q (%v)", s, got, u.Host, u.Scheme, err)
		}
	})
}

// FuzzListQuery: any fleet list query parses or is refused; a parsed one
// is within bounds.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"", "offset=0&limit=50&sort=state&dir=desc&state=online", "label=site%3Dnorth&label=a%3Db&q=x", "limit=0", "sort=%00", "state=never&offset=99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		lq, err := parseListQuery(q)
		if err != nil {
			return
		}
		if lq.limit < 1 || lq.limit > maxPageSize || lq.offset < 0 || !slices.Contains(sortKeys, lq.sort) {
			t.Fatalf("%q parsed to %+v", raw, lq)
		}
		if _, ok := stateOrder[lq.state]; lq.state != "" && !ok {
			t.Fatalf("%q: state %q", raw, lq.state)
		}
	})
}
