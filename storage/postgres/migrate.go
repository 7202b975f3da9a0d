package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/meridian-iot/meridian/migrations"
	"github.com/meridian-iot/meridian/storage"
)

// setupLockID is the advisory lock that serialises mode detection (and the
// TimescaleDB policy setup) between nodes starting together; goose uses its
// own lock for the migrations themselves.
const setupLockID int64 = 0x6d65726964690001 // "meridi" + 1

// Status is the migration state `meridian migrate --status` shows.
type Status = migrations.Status

// Migrate detects the mode (creating the timescaledb extension when
// available) and applies pending migrations. Safe to call while the
// background setup runs, and from several nodes at once.
func (s *Store) Migrate(ctx context.Context) error {
	return s.setup(ctx, true)
}

// MigrateStatus reports the schema version without changing anything.
func (s *Store) MigrateStatus(ctx context.Context) (Status, error) {
	var st Status
	mode, err := s.recordedMode(ctx, s.pool)
	if err != nil {
		return st, err
	}
	if mode == "" {
		avail, err := timescaleAvailable(ctx, s.pool)
		if err != nil {
			return st, err
		}
		mode = storage.ModePostgres
		if avail == timescaleLoadable {
			mode = storage.ModeTimescale
		}
	}
	applied, err := appliedVersions(ctx, s.pool)
	if err != nil {
		return st, err
	}
	return migrations.StatusOf(mode, migrationsFor(mode), applied)
}

// setup runs once per process on first contact: pick the mode, check the
// schema version, migrate (when allowed), set TimescaleDB policies, then mark
// the store ready.
func (s *Store) setup(ctx context.Context, migrate bool) error {
	mode, err := s.detectMode(ctx, migrate)
	if err != nil {
		return err
	}
	fsys := migrationsFor(mode)
	applied, err := appliedVersions(ctx, s.pool)
	if err != nil {
		return err
	}
	st, err := migrations.StatusOf(mode, fsys, applied)
	if err != nil {
		return err
	}
	if st.TooNew {
		return fmt.Errorf("%w: database is at schema version %d, this binary knows up to %d; upgrade meridian", storage.ErrSchemaTooNew, st.Current, st.Latest)
	}
	if len(st.Pending) > 0 {
		if !migrate {
			return fmt.Errorf("database schema at version %d, this binary needs %d: run `meridian migrate` or enable migration at start", st.Current, st.Latest)
		}
		if err := s.runMigrations(ctx, fsys); err != nil {
			return err
		}
	}
	if mode == storage.ModeTimescale {
		if err := s.applyTimescalePolicies(ctx); err != nil {
			return err
		}
	}
	s.markReady(mode)
	return nil
}

func (s *Store) runMigrations(ctx context.Context, fsys fs.FS) error {
	// Check every 2s for up to 5 minutes: long enough for another node's
	// migration, short enough to start promptly once it is done.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(2, 150))
	if err != nil {
		return fmt.Errorf("create migration lock: %w", err)
	}
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	results, err := p.Up(ctx)
	for _, r := range results {
		s.log.Info("migration applied", "migration", path.Base(r.Source.Path), "took", r.Duration)
	}
	if err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// detectMode returns the recorded mode, or for a fresh database tries to
// create the timescaledb extension and picks the mode from the outcome.
// Without migrate it changes nothing: a fresh database gets the mode it
// would get, and setup then waits for someone to migrate.
func (s *Store) detectMode(ctx context.Context, migrate bool) (string, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Release()
	var mode string
	_, err = withAdvisoryLock(ctx, conn.Conn(), setupLockID, true, func() (err error) {
		mode, err = s.detectModeLocked(ctx, conn, migrate)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("setup lock: %w", err)
	}
	return mode, nil
}

// detectModeLocked is detectMode under the setup lock.
func (s *Store) detectModeLocked(ctx context.Context, conn *pgxpool.Conn, migrate bool) (string, error) {
	mode, err := s.recordedMode(ctx, conn)
	if err != nil {
		return "", err
	}
	switch mode {
	case storage.ModeTimescale:
		if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS timescaledb`); err != nil {
			return "", fmt.Errorf("database was set up for TimescaleDB but the extension cannot be loaded: %w", err)
		}
		return mode, nil
	case storage.ModePostgres:
		return mode, nil
	case "":
	default:
		return "", fmt.Errorf("database records unknown storage mode %q", mode)
	}
	if s.cfg.plainOnly {
		return storage.ModePostgres, nil
	}
	switch avail, err := timescaleAvailable(ctx, conn); {
	case err != nil:
		return "", err
	case avail == timescaleMissing:
		s.log.Info("timescaledb extension not available, using plain PostgreSQL partitioning")
		return storage.ModePostgres, nil
	case avail == timescaleNotPreloaded:
		s.log.Warn("timescaledb extension installed but not in shared_preload_libraries, using plain PostgreSQL partitioning")
		return storage.ModePostgres, nil
	}
	if !migrate {
		return storage.ModeTimescale, nil
	}
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS timescaledb`); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			// Installed but not loadable (shared_preload_libraries) or not
			// permitted: plain mode still works.
			s.log.Warn("timescaledb extension available but cannot be created, using plain PostgreSQL", "err", err)
			return storage.ModePostgres, nil
		}
		return "", fmt.Errorf("create extension timescaledb: %w", err)
	}
	return storage.ModeTimescale, nil
}

// What timescaleAvailable found.
const (
	timescaleMissing      = iota // not installed on the server
	timescaleNotPreloaded        // installed, but CREATE EXTENSION would fail
	timescaleLoadable
)

// timescaleAvailable reports whether the timescaledb extension is installed
// and its loader preloaded. Without the loader CREATE EXTENSION fails with a
// FATAL error that ends the session, so look first: the loader defines
// timescaledb.* settings when preloaded (shared_preload_libraries itself is
// only visible to superusers).
func timescaleAvailable(ctx context.Context, q querier) (int, error) {
	var installed, preloaded bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
		current_setting('timescaledb.max_background_workers', true) IS NOT NULL`).Scan(&installed, &preloaded); err != nil {
		return 0, fmt.Errorf("check for timescaledb: %w", err)
	}
	switch {
	case !installed:
		return timescaleMissing, nil
	case !preloaded:
		return timescaleNotPreloaded, nil
	}
	return timescaleLoadable, nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// recordedMode reads the mode the migrations wrote, "" on a fresh database.
func (s *Store) recordedMode(ctx context.Context, q querier) (string, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('meridian_meta') IS NOT NULL`).Scan(&exists); err != nil {
		return "", fmt.Errorf("read storage mode: %w", err)
	}
	if !exists {
		return "", nil
	}
	var mode string
	err := q.QueryRow(ctx, `SELECT value FROM meridian_meta WHERE key = 'mode'`).Scan(&mode)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read storage mode: %w", err)
	}
	return mode, nil
}

func migrationsFor(mode string) fs.FS {
	if mode == storage.ModeTimescale {
		return migrations.Timescale()
	}
	return migrations.Postgres()
}

// appliedVersions reads goose's version table directly (it may not exist
// yet), so a too-new database is caught before goose touches anything.
func appliedVersions(ctx context.Context, pool *pgxpool.Pool) (map[int64]bool, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('goose_db_version') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	out := map[int64]bool{}
	if !exists {
		return out, nil
	}
	// goose records each up and down; the latest row per version wins.
	rows, err := pool.Query(ctx, `SELECT DISTINCT ON (version_id) version_id, is_applied
		FROM goose_db_version WHERE version_id > 0 ORDER BY version_id, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var applied bool
		if err := rows.Scan(&v, &applied); err != nil {
			return nil, fmt.Errorf("read schema version: %w", err)
		}
		if applied {
			out[v] = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	return out, nil
}

// PublicRelations are the objects of the public schema (docs/sql.md) a
// query role may read; the views read the internal tables with their
// owner's rights, so nothing else needs granting.
var PublicRelations = []string{"telemetry", "telemetry_1m", "telemetry_1h", "devices", "metrics", "device_sessions"}

// CreateQueryRole makes role the least-privilege login role ad-hoc SQL
// should use (storage.postgres.query_url): CONNECT on this database, USAGE
// on schema public, SELECT on PublicRelations only. A role that does not
// exist is created (LOGIN, no superuser, replication, role or database
// creation rights, read-only transactions by default; password when not
// empty) — that needs a service role allowed to create roles. A role that
// exists (made by whoever set the database up, e.g. deploy/postgres) is
// only checked to hold none of those rights and granted: the views' owner,
// the service role, can always do that. Run it after migrating.
func (s *Store) CreateQueryRole(ctx context.Context, role, password string) error {
	if err := s.ready(); err != nil {
		return err
	}
	if role == "" {
		return errors.New("create query role: empty role name")
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var exists, privileged bool
		if err := tx.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(rolsuper OR rolreplication OR rolcreaterole OR rolcreatedb OR rolbypassrls), false)
			FROM pg_roles WHERE rolname = $1`, role).Scan(&exists, &privileged); err != nil {
			return fmt.Errorf("create query role %q: %w", role, err)
		}
		if privileged {
			return fmt.Errorf("create query role %q: the role exists and holds superuser, replication, role or database creation rights; pick another name or drop them", role)
		}
		id := pgx.Identifier{role}.Sanitize()
		var stmts []string
		if !exists {
			stmts = append(stmts,
				"CREATE ROLE "+id+" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
				"ALTER ROLE "+id+" SET default_transaction_read_only = on")
		}
		stmts = append(stmts, "GRANT USAGE ON SCHEMA public TO "+id)
		var rels []string
		for _, r := range PublicRelations {
			rels = append(rels, pgx.Identifier{r}.Sanitize())
		}
		stmts = append(stmts, "GRANT SELECT ON "+strings.Join(rels, ", ")+" TO "+id)
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("create query role %q: %s: %w", role, q, err)
			}
		}
		// Utility statements take no parameters: format() quotes the
		// database name and the password as SQL literals.
		for _, q := range []string{
			`SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1::text) WHERE $2::text IS NOT NULL`,
			`SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text) WHERE $2::text <> '' AND NOT ` + strconv.FormatBool(exists),
		} {
			var stmt *string
			if err := tx.QueryRow(ctx, q, role, password).Scan(&stmt); errors.Is(err, pgx.ErrNoRows) {
				continue
			} else if err != nil {
				return fmt.Errorf("create query role %q: %w", role, err)
			}
			if stmt == nil {
				continue
			}
			if _, err := tx.Exec(ctx, *stmt); err != nil {
				return fmt.Errorf("create query role %q: %w", role, err)
			}
		}
		return nil
	})
}
