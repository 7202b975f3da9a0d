package devices

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero grace is allowed", func(c *Config) { c.TokenGrace = 0 }, ""},
		{"negative grace", func(c *Config) { c.TokenGrace = -time.Second }, "devices.token_grace: must be >= 0, got -1s"},
		{"short provisioning key", func(c *Config) { c.Provisioning.Key = "short" },
			"devices.provisioning.key: must be empty (provisioning off) or at least 16 characters, got 5 characters"},
		{"good provisioning key", func(c *Config) { c.Provisioning.Key = "0123456789abcdef" }, ""},
		{"negative provisioning rate", func(c *Config) { c.Provisioning.RatePerMinute = -1 },
			"devices.provisioning.rate_per_minute: must be >= 0 (0 means the default, 10), got -1"},
		{"admin key without prefix", func(c *Config) { c.AdminKey = strings.Repeat("a", 40) },
			`devices.admin_key: must be empty or "mak_" followed by 32-200 characters of [A-Za-z0-9_-], got 40 characters`},
		{"admin key too short", func(c *Config) { c.AdminKey = "mak_abc" },
			`devices.admin_key: must be empty or "mak_" followed by 32-200 characters of [A-Za-z0-9_-], got 7 characters`},
		{"good admin key", func(c *Config) { c.AdminKey = "mak_" + strings.Repeat("ab", 32) }, ""},
		{"negative connect rate", func(c *Config) { c.ConnectPerMinute = -5 },
			"devices.connect_per_minute: must be >= 0 (0 means the default, 30), got -5"},
		{"negative readings rate", func(c *Config) { c.ReadingsPerSecond = -1 },
			"devices.readings_per_second: must be >= 0 (0 means the default, 1000), got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("Validate() = %v\nwant %s", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.TokenGrace != 24*time.Hour || c.Provisioning.RatePerMinute != 10 || c.ConnectPerMinute != 30 ||
		c.ReadingsPerSecond != 1000 || c.Provisioning.Key != "" || c.AdminKey != "" {
		t.Fatalf("DefaultConfig() = %+v", c)
	}
}
