package backend

import (
	"errors"
	"testing"
	"time"
)

// TestValidate checks each bad value against the exact line an operator
// sees (cmd prints the first of the joined errors).
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Config)
		want string // the first error; "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"postgres url", func(c *Config) { c.URL = "postgres://u:pw@db:5432/meridian" }, ""},
		{
			"url wrong scheme masks password",
			func(c *Config) { c.URL = "mysql://u:hunter2@db/x" },
			`storage.url: must be a postgres://user:password@host:port/db URL or empty for the embedded store, got "mysql://u:***@db/x"`,
		},
		{
			"url pgx rejects, not echoed",
			func(c *Config) { c.URL = "postgres://u:pw@h:99999999/db" },
			"storage.url: cannot parse `postgres://u:xxxxx@h:99999999/db`: invalid port",
		},
		{
			"negative retention",
			func(c *Config) { c.Retention.Raw = -time.Hour },
			"storage.retention.raw: must be >= 0 (0 keeps readings forever), got -1h0m0s",
		},
		{
			"negative rollup retention",
			func(c *Config) { c.Retention.Rollups = -time.Hour },
			"storage.retention.rollups: must be >= 0 (0 keeps rollups forever), got -1h0m0s",
		},
		{
			"raw retention under an hour",
			func(c *Config) { c.Retention.Raw = time.Minute },
			"storage.retention.raw: must be 0 or at least 1h, got 1m0s",
		},
		{
			"rollups shorter than raw",
			func(c *Config) { c.Retention.Raw, c.Retention.Rollups = 48*time.Hour, 24*time.Hour },
			"storage.retention.rollups: must be 0 or at least storage.retention.raw (48h0m0s), got 24h0m0s",
		},
		{
			"maintain interval",
			func(c *Config) { c.MaintainInterval = 10 * time.Millisecond },
			"storage.maintain_interval: must be at least 1s, got 10ms",
		},
		{
			"pool size",
			func(c *Config) { c.Postgres.MaxConns = 0 },
			"storage.postgres.max_conns: must be > 0, got 0",
		},
		{
			"sqlite synchronous",
			func(c *Config) { c.SQLite.Synchronous = "off" },
			`storage.sqlite.synchronous: must be "full" or "normal", got "off"`,
		},
		{
			"query rows",
			func(c *Config) { c.Query.MaxRows = -1 },
			"storage.query.max_rows: must be 0 (default) or 1..1000000, got -1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.set(&c)
			got := ""
			if errs := unjoin(c.Validate()); len(errs) > 0 {
				got = errs[0].Error()
			}
			if got != tt.want {
				t.Errorf("first error\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

// TestValidateReportsEveryKey: the errors are joined, one per bad key, in
// key order.
func TestValidateReportsEveryKey(t *testing.T) {
	c := DefaultConfig()
	c.MaintainInterval = 0
	c.SQLite.ReadConns = 100
	errs := unjoin(c.Validate())
	if len(errs) != 2 {
		t.Fatalf("got %d errors, want 2: %v", len(errs), errors.Join(errs...))
	}
	for i, want := range []string{
		"storage.maintain_interval: must be at least 1s, got 0s",
		"storage.sqlite.read_conns: must be 0 (default) or 1..64, got 100",
	} {
		if errs[i].Error() != want {
			t.Errorf("error %d = %q, want %q", i, errs[i], want)
		}
	}
}

// TestBackendConfigs: the shared keys reach both backends; the SQLite file
// lives in the data directory.
func TestBackendConfigs(t *testing.T) {
	c := DefaultConfig()
	c.URL = "postgres://db/meridian"
	c.Retention.Raw = 72 * time.Hour
	c.Migrate = false
	pg := c.PostgresConfig()
	if pg.URL != c.URL || pg.Retention != c.Retention || pg.Migrate {
		t.Errorf("postgres config = URL %q, retention %+v, migrate %v", pg.URL, pg.Retention, pg.Migrate)
	}
	sq := c.SQLiteConfig("/var/lib/meridian")
	if sq.Path != "/var/lib/meridian/meridian.db" || sq.Retention != c.Retention || sq.Migrate {
		t.Errorf("sqlite config = path %q, retention %+v, migrate %v", sq.Path, sq.Retention, sq.Migrate)
	}
}
