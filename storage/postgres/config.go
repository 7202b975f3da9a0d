package postgres

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-iot/meridian/storage"
)

// Config configures the PostgreSQL backend. Zero values are invalid unless
// stated; start from DefaultConfig.
type Config struct {
	// URL is a libpq-style connection URL or DSN. Required.
	URL string
	// MaxConns bounds the pool. The pipeline's writer holds one connection
	// per flush in flight, Maintain one, queries and the registry the rest.
	MaxConns int32
	// ChunkInterval is the hypertable chunk width (TimescaleDB mode only).
	ChunkInterval time.Duration
	// CompressAfter compresses chunks older than this (TimescaleDB mode
	// only); 0 disables compression.
	CompressAfter time.Duration
	// Retention: raw readings and rollups older than these are removed by
	// Maintain; 0 keeps them forever.
	Retention storage.Retention
	// Migrate applies pending migrations when the store first reaches the
	// database. When false the store waits until someone runs
	// `meridian migrate`.
	Migrate bool
	// PartitionsAhead is how many daily partitions (today included) plain
	// mode keeps created ahead of time.
	PartitionsAhead int
	// ReadOnlyRole, when set, is the database role Query switches to (SET
	// LOCAL ROLE) on the service's own connection. It is no security
	// boundary (set_config('role', 'none', true) switches back inside one
	// statement); QueryURL is. Kept for compatibility.
	ReadOnlyRole string
	// QueryURL is the connection URL ad-hoc SQL (Query) logs in with: a
	// least-privilege role with SELECT on the public views only
	// (CreateQueryRole makes one). Empty: Query uses URL's role, and refuses
	// when that role is a superuser or holds replication or server-file
	// privileges (unless AllowPrivilegedQuery).
	QueryURL string
	// QueryConns bounds the pool Query uses, separate from the service's
	// pool so ad-hoc SQL never holds the connections that commits, token
	// and API-key lookups need.
	QueryConns int32
	// AllowPrivilegedQuery lets Query run on a privileged service role when
	// QueryURL is empty. Not a configuration key: `meridian query` sets it,
	// because its user already holds the service's credentials.
	AllowPrivilegedQuery bool

	// plainOnly makes a fresh database use plain-PostgreSQL mode even where
	// TimescaleDB is available, so tests can compare both modes on one
	// server.
	plainOnly bool
	// noTestQueryRole stops the tests' store helper from making a query
	// role, for tests of what happens without one.
	noTestQueryRole bool
}

// DefaultConfig returns the defaults; URL is left empty.
func DefaultConfig() Config {
	return Config{
		// 10 = 2 concurrent flushes + 1 Maintain + 7 for queries, series and
		// registry; PostgreSQL's default max_connections (100) leaves room
		// for several nodes.
		MaxConns: 10,
		// One day: at 10k readings/s a chunk is ~860M rows before
		// compression, ~25 bytes each, which stays in the range TimescaleDB
		// recommends (a chunk's indexes fit in a quarter of memory) on
		// modest servers; retention then drops whole days.
		ChunkInterval: 24 * time.Hour,
		// A week: late replays usually arrive within hours, and inserts into
		// uncompressed chunks are cheaper.
		CompressAfter: 7 * 24 * time.Hour,
		Retention: storage.Retention{
			Raw:     90 * 24 * time.Hour,
			Rollups: 2 * 365 * 24 * time.Hour,
		},
		Migrate: true,
		// Three days ahead survives a long weekend of Maintain not running
		// before rows start landing in the default partition.
		PartitionsAhead: 3,
		// Two: ad-hoc SQL is occasional and may be heavy; queryapi admits a
		// few more requests than this, which wait for a connection.
		QueryConns: 2,
	}
}

// Validate checks every field; errors name the configuration key.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("storage.postgres.url: must be set"))
	} else if _, err := pgxpool.ParseConfig(c.URL); err != nil {
		// pgx redacts the password in its parse errors.
		errs = append(errs, fmt.Errorf("storage.postgres.url: %w", err))
	}
	if c.QueryURL != "" {
		if _, err := pgxpool.ParseConfig(c.QueryURL); err != nil {
			errs = append(errs, fmt.Errorf("storage.postgres.query_url: %w", err))
		}
	}
	if c.QueryConns <= 0 || c.QueryConns > 64 {
		errs = append(errs, fmt.Errorf("storage.postgres.query_conns: must be 1..64, got %d", c.QueryConns))
	}
	if c.MaxConns <= 0 {
		errs = append(errs, fmt.Errorf("storage.postgres.max_conns: must be > 0, got %d", c.MaxConns))
	}
	if c.ChunkInterval < time.Minute {
		errs = append(errs, fmt.Errorf("storage.postgres.chunk_interval: must be >= 1m, got %s", c.ChunkInterval))
	}
	if c.CompressAfter < 0 {
		errs = append(errs, fmt.Errorf("storage.postgres.compress_after: must be >= 0, got %s", c.CompressAfter))
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
	if c.PartitionsAhead < 1 || c.PartitionsAhead > 366 {
		errs = append(errs, fmt.Errorf("storage.postgres.partitions_ahead: must be 1..366, got %d", c.PartitionsAhead))
	}
	return errors.Join(errs...)
}
