package sqlite

import (
	"errors"
	"fmt"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Synchronous modes (PRAGMA synchronous) a Config may ask for.
const (
	SyncFull   = "full"
	SyncNormal = "normal"
)

// Config configures the SQLite store. Start from DefaultConfig.
type Config struct {
	// Path is the database file; cmd sets <data_dir>/meridian.db. Its
	// directory is created (0750) when missing. Required.
	Path string
	// Retention: raw readings and rollups older than these are removed by
	// Maintain; 0 keeps them forever.
	Retention storage.Retention
	// Migrate applies pending migrations in Open. When false, Open fails on
	// a database that is behind and `meridian migrate` must run first.
	Migrate bool
	// BusyTimeout is how long a statement waits for a lock held by another
	// process (the `meridian` CLI next to a running server) before failing;
	// 0 means the default (5s).
	BusyTimeout time.Duration
	// Synchronous is "full" or "normal" ("" means "full"). With WAL, "full" syncs the log on
	// every commit, so an acknowledged batch survives power loss and OS
	// crashes. "normal" syncs only at checkpoints: a commit survives a crash
	// of the process but an OS crash or power cut may lose the last
	// transactions (the database stays consistent) — and the devices were
	// told they were stored. Meridian promises acked means durable, so the
	// default is "full"; on this project's benchmark "normal" commits ~10-20%
	// faster (one fsync less per commit), which may suit hosts with a UPS.
	Synchronous string
	// ReadConns bounds the read-only pool used by Query, Series and lookups;
	// 0 means the default (4).
	ReadConns int
	// QueryConns bounds the separate pool that ad-hoc SQL (Query) runs on,
	// so queries never hold the connections that token, API-key and
	// watermark lookups use; 0 means the default (2).
	QueryConns int
	// QueryHeapLimit caps the SQLite heap of each query connection (bytes);
	// a statement that needs more fails with "out of memory" instead of
	// growing the process; 0 means the default (64 MiB).
	QueryHeapLimit int64
}

// DefaultConfig returns the defaults; Path is left empty.
func DefaultConfig() Config {
	return Config{
		Retention: storage.Retention{
			Raw:     90 * 24 * time.Hour,
			Rollups: 2 * 365 * 24 * time.Hour,
		},
		Migrate: true,
		// Long enough for a CLI migration or checkpoint by another process,
		// short enough that a stuck lock surfaces as an error, not a hang.
		BusyTimeout: 5 * time.Second,
		Synchronous: SyncFull,
		// Two cores are typical of the edge hosts this backend targets; four
		// readers keep dashboard series and an ad-hoc query from queueing
		// behind each other without oversubscribing them.
		ReadConns: 4,
		// One core's worth of ad-hoc SQL at a time plus one waiting keeps
		// the other core for ingest on a two-core host.
		QueryConns: 2,
		// 64 MiB per query connection: sorts and GROUP BYs of a few million
		// rows fit (SQLite spills bigger sorts to temp files), and two
		// connections stay far below a small host's memory.
		QueryHeapLimit: 64 << 20,
	}
}

// Validate checks every field; errors name the configuration key.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("storage.sqlite.path: must not be empty"))
	}
	if c.Retention.Raw < 0 {
		errs = append(errs, fmt.Errorf("storage.retention.raw: must be >= 0, got %s", c.Retention.Raw))
	} else if c.Retention.Raw > 0 && c.Retention.Raw < time.Hour {
		errs = append(errs, fmt.Errorf("storage.retention.raw: must be 0 (forever) or >= 1h, got %s", c.Retention.Raw))
	}
	if c.Retention.Rollups < 0 {
		errs = append(errs, fmt.Errorf("storage.retention.rollups: must be >= 0, got %s", c.Retention.Rollups))
	} else if c.Retention.Rollups > 0 && c.Retention.Rollups < time.Hour {
		errs = append(errs, fmt.Errorf("storage.retention.rollups: must be 0 (forever) or >= 1h, got %s", c.Retention.Rollups))
	}
	if c.BusyTimeout < 0 {
		errs = append(errs, fmt.Errorf("storage.sqlite.busy_timeout: must be >= 0, got %s", c.BusyTimeout))
	}
	switch c.Synchronous {
	case "", SyncFull, SyncNormal:
	default:
		errs = append(errs, fmt.Errorf("storage.sqlite.synchronous: must be %q or %q, got %q", SyncFull, SyncNormal, c.Synchronous))
	}
	if c.ReadConns < 0 || c.ReadConns > 64 {
		errs = append(errs, fmt.Errorf("storage.sqlite.read_conns: must be 0 (default) or 1..64, got %d", c.ReadConns))
	}
	if c.QueryConns < 0 || c.QueryConns > 64 {
		errs = append(errs, fmt.Errorf("storage.sqlite.query_conns: must be 0 (default) or 1..64, got %d", c.QueryConns))
	}
	if c.QueryHeapLimit != 0 && (c.QueryHeapLimit < 1<<20 || c.QueryHeapLimit > 1<<31) {
		errs = append(errs, fmt.Errorf("storage.sqlite.query_heap_limit: must be 0 (default) or 1 MiB..2 GiB, got %d", c.QueryHeapLimit))
	}
	return errors.Join(errs...)
}

// withDefaults fills the fields whose zero value means "the default".
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.BusyTimeout == 0 {
		c.BusyTimeout = d.BusyTimeout
	}
	if c.Synchronous == "" {
		c.Synchronous = d.Synchronous
	}
	if c.ReadConns == 0 {
		c.ReadConns = d.ReadConns
	}
	if c.QueryConns == 0 {
		c.QueryConns = d.QueryConns
	}
	if c.QueryHeapLimit == 0 {
		c.QueryHeapLimit = d.QueryHeapLimit
	}
	return c
}
