package ingest

import (
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		mut  func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"linger 0 (group commit)", func(c *Config) { c.Linger = 0 }, ""},
		{"linger 100ms (old fixed interval)", func(c *Config) { c.Linger = 100 * time.Millisecond }, ""},
		{"linger 10s", func(c *Config) { c.Linger = 10 * time.Second }, ""},
		{"negative linger", func(c *Config) { c.Linger = -time.Millisecond }, "ingest.linger: must be between 0 and 10s, got -1ms"},
		{"linger too long", func(c *Config) { c.Linger = time.Minute }, "ingest.linger: must be between 0 and 10s, got 1m0s"},
		{"flush size 0", func(c *Config) { c.FlushSize = 0 }, "ingest.flush_size: must be >= 1, got 0"},
		{"queue below max batch", func(c *Config) { c.QueueReadings = 10 }, "ingest.queue_readings: must be >= ingest.max_batch (1000), got 10"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.mut(&cfg)
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.want != "" && (err == nil || err.Error() != c.want):
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}
