package backend

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/internal/redact"
	"github.com/meridian-iot/meridian/migrations"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/queryapi"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// Store is what the binary wires a store into: the union of the small
// interfaces each consumer declares, plus what the commands call
// themselves. (The conformance suite's interface, storagetest.Backend,
// stays in tests: the binary links no test code.)
type Store interface {
	ingest.Store          // Commit, Watermark, Ping
	devices.Repo          // the registry: devices, tokens, API keys, session history
	devices.SessionWriter // device_sessions and last_seen (devices.SessionLog)
	queryapi.Reader       // /v1/query, /v1/series, `meridian query`
	storage.Maintainer    // partitions, retention, rollups

	// Mode is storage.ModeTimescale, ModePostgres or ModeSQLite; "" until
	// the postgres store has reached its database.
	Mode() string
	// DatabaseSize is the system page's storage tile.
	DatabaseSize(ctx context.Context) (int64, error)
	// Migrate applies the pending migrations (`meridian migrate`).
	Migrate(ctx context.Context) error
	// MigrateStatus reads the schema version, changing nothing.
	MigrateStatus(ctx context.Context) (migrations.Status, error)
	Close() error
}

// The wiring promises: each backend fits every consumer.
var (
	_ Store = (*postgres.Store)(nil)
	_ Store = (*sqlite.Store)(nil)
)

// Kinds of backend, as Opened.Kind names them in logs, errors, `migrate
// --status` and /readyz.
const (
	KindPostgres = "postgres"
	KindSQLite   = "sqlite"
)

// Opened is an opened backend with what the commands show about it.
type Opened struct {
	Store
	// Kind is KindPostgres or KindSQLite.
	Kind string
	// Where is the masked URL or the file path, for logs and errors.
	Where string
}

// readyWaiter is a store that may not be ready when Open returns: the
// postgres store connects, detects its mode and migrates in the background.
type readyWaiter interface {
	WaitReady(ctx context.Context) error
}

// Open opens the backend cfg selects: PostgreSQL when cfg.URL is set, else
// SQLite at <dataDir>/meridian.db (creating the directory). migrate
// overrides cfg.Migrate: the migrate and query commands open without
// migrating first. The PostgreSQL store returns before it reaches the
// database (see WaitReady); the SQLite store is ready at once or fails.
func Open(ctx context.Context, cfg Config, dataDir string, migrate bool, log *slog.Logger) (*Opened, error) {
	log = log.With("component", "storage")
	if cfg.URL != "" {
		pcfg := cfg.PostgresConfig()
		pcfg.Migrate = migrate
		pg, err := postgres.Open(ctx, pcfg, log)
		if err != nil {
			return nil, fmt.Errorf("open postgres store: %w", err)
		}
		return &Opened{Store: pg, Kind: KindPostgres, Where: redact.URL(cfg.URL)}, nil
	}
	scfg := cfg.SQLiteConfig(dataDir)
	scfg.Migrate = migrate
	sq, err := sqlite.Open(ctx, scfg, log)
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", scfg.Path, err)
	}
	return &Opened{Store: sq, Kind: KindSQLite, Where: sq.Path()}, nil
}

// WaitReady blocks until the store can serve data calls, or fails with why
// it cannot (unreachable, not migrated, schema too new, ctx ended), naming
// the store.
func (o *Opened) WaitReady(ctx context.Context) error {
	w, ok := o.Store.(readyWaiter)
	if !ok {
		return nil
	}
	if err := w.WaitReady(ctx); err != nil {
		return fmt.Errorf("%s store at %s: %w", o.Kind, o.Where, err)
	}
	return nil
}

// WaitMigrated is WaitReady for a store opened without migrating, by a
// command that will not wait for someone else to migrate it: such a store
// never becomes ready while this binary's migrations are pending, so that
// fails at once, saying what to run. (A status that cannot be read yet, on
// an unreachable database, leaves the answer to WaitReady.)
func (o *Opened) WaitMigrated(ctx context.Context) error {
	if ms, err := o.MigrateStatus(ctx); err == nil && ms.Current < ms.Latest {
		return fmt.Errorf("%s store at %s is at schema version %d, this binary needs %d: run `meridian migrate` (or `meridian serve`) first",
			o.Kind, o.Where, ms.Current, ms.Latest)
	}
	return o.WaitReady(ctx)
}
