package front

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

type fakeCheck struct{ err error }

func (f fakeCheck) Ready(context.Context) error { return f.err }

type fakeStore struct {
	err  error
	mode string
}

func (f fakeStore) Ping(context.Context) error { return f.err }
func (f fakeStore) Mode() string               { return f.mode }

func TestReadyz(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name   string
		ing    error
		st     error
		mode   string
		status int
		want   ReadyReport
	}{
		{"ready", nil, nil, "sqlite", 200, ReadyReport{Ready: true,
			Storage: StorageReady{Backend: "sqlite", Mode: "sqlite", CheckResult: CheckResult{OK: true}},
			Ingest:  CheckResult{OK: true}}},
		{"store down", down, down, "", 503, ReadyReport{
			Storage: StorageReady{Backend: "sqlite", CheckResult: CheckResult{Error: "connection refused"}},
			Ingest:  CheckResult{Error: "connection refused"}}},
		{"draining", errors.New("shutting down"), nil, "sqlite", 503, ReadyReport{
			Storage: StorageReady{Backend: "sqlite", Mode: "sqlite", CheckResult: CheckResult{OK: true}},
			Ingest:  CheckResult{Error: "shutting down"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Readyz(fakeCheck{tt.ing}, fakeStore{tt.st, tt.mode}, "sqlite")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tt.status {
				t.Errorf("status %d, want %d", rec.Code, tt.status)
			}
			var got ReadyReport
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if got != tt.want {
				t.Errorf("report\n got: %+v\nwant: %+v", got, tt.want)
			}
		})
	}
}

func TestTrustProxies(t *testing.T) {
	trusted := ParseProxies([]string{"10.0.0.0/8", "192.168.1.1"})
	tests := []struct {
		name, peer, xff, want string
	}{
		{"untrusted peer ignores header", "203.0.113.9:5000", "1.2.3.4", "203.0.113.9:5000"},
		{"trusted peer, one hop", "10.1.2.3:5000", "198.51.100.7", "198.51.100.7:0"},
		{"spoofed left entries ignored", "10.1.2.3:5000", "6.6.6.6, 198.51.100.7", "198.51.100.7:0"},
		{"chain of trusted proxies", "192.168.1.1:5000", "198.51.100.7, 10.9.9.9", "198.51.100.7:0"},
		{"no header", "10.1.2.3:5000", "", "10.1.2.3:5000"},
		{"garbage header", "10.1.2.3:5000", "not-an-ip", "10.1.2.3:5000"},
		{"ipv6 client", "10.1.2.3:5000", "2001:db8::1", "[2001:db8::1]:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			h := TrustProxies(trusted, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r.RemoteAddr }))
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.peer
			if tt.xff != "" {
				r.Header.Set("X-Forwarded-For", tt.xff)
			}
			h.ServeHTTP(httptest.NewRecorder(), r)
			if got != tt.want {
				t.Errorf("RemoteAddr %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"listen without port", func(c *Config) { c.Listen = "8470" }, `server.listen: must be host:port such as ":8470" or "127.0.0.1:8470", got "8470"`},
		{"listen bad port", func(c *Config) { c.Listen = ":http-ish" }, `server.listen: port must be a number from 0 to 65535, got ":http-ish"`},
		{"key without cert", func(c *Config) { c.TLS.KeyFile = "k.pem" }, `server.tls.cert_file: must be set when server.tls.key_file is, got ""`},
		{"header timeout", func(c *Config) { c.HTTP.HeaderTimeout = 0 }, "server.http.header_timeout: must be at least 1s, got 0s"},
		{"trusted proxy", func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/8", "nginx"} }, `server.trusted_proxies: must be IP addresses or CIDR prefixes, got "nginx"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.set(&c)
			got := ""
			if err := c.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}
