package meridian

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{URL: "http://localhost:8470", Token: "t"}
	tests := []struct {
		name string
		mut  func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"wss url", func(c *Config) { c.URL = "wss://m.example.com/v1/device" }, ""},
		{"no url", func(c *Config) { c.URL = "" }, "scheme must be"},
		{"ftp url", func(c *Config) { c.URL = "ftp://x" }, `"ftp://x": scheme must be`},
		{"no host", func(c *Config) { c.URL = "http://" }, "has no host"},
		{"no token", func(c *Config) { c.Token = "" }, "Token is empty"},
		{"transport", func(c *Config) { c.Transport = "mqtt" }, `Transport "mqtt"`},
		{"ring", func(c *Config) { c.RingSize = -1 }, "RingSize -1"},
		{"backoff", func(c *Config) { c.BackoffBase, c.BackoffMax = time.Minute, time.Second }, "BackoffBase 1m0s, BackoffMax 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mut(&c)
			c.setDefaults()
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	tests := []struct{ in, ws, base string }{
		{"http://localhost:8470", "ws://localhost:8470/v1/device", "http://localhost:8470"},
		{"http://localhost:8470/", "ws://localhost:8470/v1/device", "http://localhost:8470"},
		{"https://m.example.com", "wss://m.example.com/v1/device", "https://m.example.com"},
		{"ws://10.0.0.2:8470/v1/device", "ws://10.0.0.2:8470/v1/device", "http://10.0.0.2:8470"},
		{"wss://m.example.com/meridian/v1/device", "wss://m.example.com/meridian/v1/device", "https://m.example.com/meridian"},
		{"https://m.example.com/meridian", "wss://m.example.com/meridian/v1/device", "https://m.example.com/meridian"},
	}
	for _, tt := range tests {
		ws, base, err := Endpoints(tt.in)
		if err != nil || ws != tt.ws || base != tt.base {
			t.Errorf("Endpoints(%q) = %q, %q, %v; want %q, %q", tt.in, ws, base, err, tt.ws, tt.base)
		}
	}
}

// fit splits readings to the server's max_batch and max_frame.
func TestFit(t *testing.T) {
	c := &Client{maxBatch: 1000, maxFrame: 65536}
	rs := make([]Reading, 5000)
	for i := range rs {
		rs[i] = Reading{Metric: strings.Repeat("m", 100), Value: 1}
	}
	wrs := toWire(rs)
	n := c.fit(wrs)
	if n >= 1000 || n < 100 {
		t.Fatalf("fit %d readings of 100-byte metrics into 64 KiB", n)
	}
	c.maxFrame = 1 << 30
	if n := c.fit(wrs); n != 1000 {
		t.Fatalf("fit %d, want max_batch 1000", n)
	}
}

func TestReadingValidate(t *testing.T) {
	tests := []struct {
		name string
		r    Reading
		want string
	}{
		{"fine", Reading{Metric: "boiler/flow.temp", Value: 60}, ""},
		{"space", Reading{Metric: "boiler temp", Value: 1}, "must be 1-128 bytes"},
		{"empty", Reading{Value: 1}, "must be 1-128 bytes"},
		{"long", Reading{Metric: strings.Repeat("m", 129), Value: 1}, "must be 1-128 bytes"},
		{"nan", Reading{Metric: "x", Value: math.NaN()}, "finite"},
		{"inf", Reading{Metric: "x", Value: math.Inf(-1)}, "finite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}
