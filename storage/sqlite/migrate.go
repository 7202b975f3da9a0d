package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path"

	sqlite3 "github.com/ncruces/go-sqlite3"
	"github.com/pressly/goose/v3"

	"github.com/meridian-iot/meridian/migrations"
	"github.com/meridian-iot/meridian/storage"
)

// Status is the migration state `meridian migrate --status` shows; the
// same shape as the postgres backend's.
type Status = migrations.Status

// errSchemaBehind: the database needs migrations this binary carries.
var errSchemaBehind = errors.New("database schema is behind this binary")

// Migrate applies pending migrations. Open does it when Config.Migrate is
// set; `meridian migrate` calls it on a store opened without.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.setup(ctx, true); err != nil {
		return err
	}
	if s.schemaErr.Load() != nil {
		// Opened behind: the name caches and rollup progress were not
		// loaded. Hold the writer so no commit runs in between.
		if err := s.withWriter(ctx, func(*sqlite3.Conn) error { return s.loadState(ctx) }); err != nil {
			return err
		}
		s.schemaErr.Store(nil)
	}
	return nil
}

// MigrateStatus reports the schema version without changing anything.
func (s *Store) MigrateStatus(ctx context.Context) (Status, error) {
	applied, err := appliedVersions(ctx, s.w)
	if err != nil {
		return Status{Mode: storage.ModeSQLite}, err
	}
	return migrations.StatusOf(storage.ModeSQLite, migrations.SQLite(), applied)
}

// setup checks the schema version and migrates when allowed.
func (s *Store) setup(ctx context.Context, migrate bool) error {
	fsys := migrations.SQLite()
	_, names, err := migrations.Versions(fsys)
	if err != nil {
		return err
	}
	applied, err := appliedVersions(ctx, s.w)
	if err != nil {
		return err
	}
	st, err := migrations.StatusOf(storage.ModeSQLite, fsys, applied)
	if err != nil {
		return err
	}
	if st.TooNew {
		return fmt.Errorf("%w: %s is at schema version %d, this binary knows up to %d; upgrade meridian", storage.ErrSchemaTooNew, s.path, st.Current, st.Latest)
	}
	if len(st.Pending) == 0 {
		return nil
	}
	if !migrate {
		return fmt.Errorf("%w: %s is at schema version %d, this binary needs %d; run `meridian migrate` or enable storage.migrate", errSchemaBehind, s.path, st.Current, st.Latest)
	}
	// goose runs on the writer pool's only connection, so migrations in
	// this process are serialised with everything else that writes, and
	// each migration's BEGIN IMMEDIATE holds off other processes.
	p, err := goose.NewProvider(goose.DialectSQLite3, s.w, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	results, err := p.Up(ctx)
	for _, r := range results {
		if r.Error == nil {
			s.log.Info("migration applied", "migration", path.Base(r.Source.Path), "took", r.Duration)
		}
	}
	if err != nil {
		// Another process (a second `meridian migrate`) may have applied the
		// same versions between our check and our turn for the lock; then
		// our copy fails on existing tables and there is nothing left to do.
		if again, aerr := appliedVersions(ctx, s.w); aerr == nil && len(again) >= len(names) && allApplied(names, again) {
			return nil
		}
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

func allApplied(names map[int64]string, applied map[int64]bool) bool {
	for v := range names {
		if !applied[v] {
			return false
		}
	}
	return true
}

// appliedVersions reads goose's version table; empty when it does not
// exist yet.
func appliedVersions(ctx context.Context, db *sql.DB) (map[int64]bool, error) {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, goose.DefaultTablename).Scan(&n); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	applied := map[int64]bool{}
	if n == 0 {
		return applied, nil
	}
	// goose records each up and down; a version is applied when its latest
	// row says so.
	rows, err := db.QueryContext(ctx, `SELECT version_id, is_applied FROM `+goose.DefaultTablename+` ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var ok bool
		if err := rows.Scan(&v, &ok); err != nil {
			return nil, fmt.Errorf("read schema version: %w", err)
		}
		if v == 0 {
			continue // goose's initial marker row
		}
		if ok {
			applied[v] = true
		} else {
			delete(applied, v)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	return applied, nil
}
