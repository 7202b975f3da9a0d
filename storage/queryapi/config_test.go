package queryapi

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"defaults", DefaultConfig(), ""},
		{"zero means defaults", Config{}, ""},
		{"negative timeout", Config{Timeout: -time.Second}, "storage.query.timeout: must be >= 0, got -1s"},
		{"rows", Config{MaxRows: 2_000_000}, "storage.query.max_rows: must be 0 (default) or 1..1000000, got 2000000"},
		{"bytes", Config{MaxBytes: -1}, "storage.query.max_bytes: must be 0 (default) or 1..1073741824, got -1"},
		{"concurrent", Config{MaxConcurrent: 5000}, "storage.query.max_concurrent: must be 0 (default) or 1..1024, got 5000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want it to contain %q", err, c.want)
			}
		})
	}
}
