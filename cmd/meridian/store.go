package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/sqlite"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// backend is what the commands need from a store: the whole conformance
// surface plus migrations.
type backend interface {
	storagetest.Backend
	Migrate(ctx context.Context) error
}

// The wiring promises: each backend fits every consumer.
var (
	_ backend      = (*postgres.Store)(nil)
	_ backend      = (*sqlite.Store)(nil)
	_ ingest.Store = backend(nil)
	_ devices.Repo = backend(nil)
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
