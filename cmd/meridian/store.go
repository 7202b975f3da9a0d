package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/queryapi"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// backend is what the commands wire a store into: the union of the small
// interfaces each consumer declares, plus what cmd itself calls. (The
// conformance suite's interface, storagetest.Backend, stays in tests: the
// binary links no test code.)
type backend interface {
	ingest.Store                                     // Commit, Watermark, Ping
	devices.Repo                                     // the registry: devices, tokens, API keys, session history
	queryapi.Reader                                  // /v1/query, /v1/series, `meridian query`
	storage.Maintainer                               // partitions, retention, rollups
	sessionStore                                     // device_sessions and last_seen
	Mode() string                                    // storage.ModeTimescale, ModePostgres or ModeSQLite
	DatabaseSize(ctx context.Context) (int64, error) // the system page's storage tile
	Migrate(ctx context.Context) error
	Close() error
}

// sessionStore records device sessions (devices.SessionLog).
type sessionStore = devices.SessionWriter

// The wiring promises: each backend fits every consumer.
var (
	_ backend = (*postgres.Store)(nil)
	_ backend = (*sqlite.Store)(nil)
)

// migrateStatus is the backend-neutral `migrate --status` answer.
type migrateStatus struct {
	Backend string   `json:"backend"`
	Mode    string   `json:"mode"`
	Current int64    `json:"current"`
	Latest  int64    `json:"latest"`
	Pending []string `json:"pending"`
	TooNew  bool     `json:"too_new"`
}

// store is an opened backend with what cmd shows about it.
type store struct {
	backend
	kind  string // "postgres" or "sqlite"
	where string // masked URL or file path, for logs
	// status reads the schema version without changing anything.
	status func(ctx context.Context) (migrateStatus, error)
	// waitReady blocks until the backend can serve data calls; the postgres
	// store connects in the background and may not be ready at Open.
	waitReady func(ctx context.Context) error
}

// openStore opens the configured backend: PostgreSQL when storage.url is
// set, else SQLite at <data_dir>/meridian.db. migrate overrides
// storage.migrate (the migrate command opens without migrating first).
func openStore(ctx context.Context, cfg Config, migrate bool, log *slog.Logger) (*store, error) {
	if cfg.Storage.URL != "" {
		pcfg := cfg.Storage.postgresConfig()
		pcfg.Migrate = migrate
		pg, err := postgres.Open(ctx, pcfg, log.With("component", "storage"))
		if err != nil {
			return nil, fmt.Errorf("open postgres store: %w", err)
		}
		return &store{
			backend: pg,
			kind:    "postgres",
			where:   maskURL(cfg.Storage.URL),
			status: func(ctx context.Context) (migrateStatus, error) {
				st, err := pg.MigrateStatus(ctx)
				return migrateStatus{Backend: "postgres", Mode: st.Mode, Current: st.Current, Latest: st.Latest, Pending: st.Pending, TooNew: st.TooNew}, err
			},
			waitReady: pg.WaitReady,
		}, nil
	}

	return openSQLite(ctx, cfg, migrate, log)
}

// openSQLite opens the embedded store at <data_dir>/meridian.db (creating
// the directory); it is ready at once or fails.
func openSQLite(ctx context.Context, cfg Config, migrate bool, log *slog.Logger) (*store, error) {
	scfg := cfg.sqliteConfig()
	scfg.Migrate = migrate
	sq, err := sqlite.Open(ctx, scfg, log.With("component", "storage"))
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", scfg.Path, err)
	}
	return &store{
		backend: sq,
		kind:    "sqlite",
		where:   sq.Path(),
		status: func(ctx context.Context) (migrateStatus, error) {
			st, err := sq.MigrateStatus(ctx)
			return migrateStatus{Backend: "sqlite", Mode: st.Mode, Current: st.Current, Latest: st.Latest, Pending: st.Pending, TooNew: st.TooNew}, err
		},
		waitReady: func(context.Context) error { return nil },
	}, nil
}
