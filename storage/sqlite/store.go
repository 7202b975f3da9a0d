package sqlite

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sqlite3 "github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/driver"

	"github.com/meridian-iot/meridian/storage"
)

// Store is the SQLite backend. Create it with Open; it is safe for
// concurrent use (see the package doc for how writes are serialised).
type Store struct {
	cfg  Config
	path string
	log  *slog.Logger

	// w holds exactly one connection: SQLite has one writer, and queueing
	// for database/sql's only connection is how writes are serialised.
	w *sql.DB
	// r is the read-only pool (mode=ro, query_only) for lookups and
	// series.
	r *sql.DB
	// q is the read-only pool ad-hoc SQL runs on, separate from r so slow
	// queries never make a device handshake wait (see withQuery).
	q *sql.DB
	// look holds r's prepared handshake-path lookups (lookups.go).
	look lookups

	// mu guards the name caches. Ids enter them only after the transaction
	// that registered them committed. The maps change only while the
	// changer holds the writer connection, and under mu.Lock; so code
	// holding the writer connection reads them without mu, and everyone
	// else (Series) reads under mu.RLock.
	mu        sync.RWMutex
	deviceIDs map[string]int64
	metricIDs map[string]int64

	// lateBefore (Unix ms): readings older than this land in rollup buckets
	// a refresh has already computed, so Commit marks their (device, hour)
	// dirty. math.MinInt64 until the first refresh. Only changed while
	// holding the writer connection, so it is ordered with commits.
	lateBefore atomic.Int64

	// stmts are the commit path's prepared statements on the writer
	// connection; guarded by holding that connection.
	stmts *commitStmts

	// schemaErr is set while the schema is not at this binary's version
	// (opened without Config.Migrate); Migrate clears it.
	schemaErr atomic.Pointer[error]

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating when missing) the database at cfg.Path, checks and
// (with cfg.Migrate) applies the schema, and returns a ready store. A
// database migrated by a newer binary fails with storage.ErrSchemaTooNew.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("storage.sqlite.path %q: %w", cfg.Path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create database directory: %w", err)
	}
	s := &Store{
		cfg:       cfg,
		path:      path,
		log:       log,
		deviceIDs: map[string]int64{},
		metricIDs: map[string]int64{},
	}
	s.lateBefore.Store(math.MinInt64)

	if s.w, err = sql.Open("sqlite3", s.dsn(false)); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := s.checkWritable(ctx); err != nil {
		s.w.Close()
		return nil, err
	}
	if err := s.setup(ctx, cfg.Migrate); err != nil {
		// Without Migrate (`meridian migrate`, `migrate --status`, serve
		// with storage.migrate off) a schema that is behind or too new
		// still opens, so the version can be shown and migrated; until
		// then Ping reports the problem and readiness fails.
		if cfg.Migrate || !(errors.Is(err, errSchemaBehind) || errors.Is(err, storage.ErrSchemaTooNew)) {
			s.w.Close()
			return nil, err
		}
		s.schemaErr.Store(&err)
	}
	if s.r, err = sql.Open("sqlite3", s.dsn(true)); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open %s read-only: %w", path, err)
	}
	s.r.SetMaxOpenConns(cfg.ReadConns)
	s.r.SetMaxIdleConns(cfg.ReadConns)
	if err := s.r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s read-only: %w", path, err)
	}
	if s.q, err = sql.Open("sqlite3", s.dsn(true)); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s read-only: %w", path, err)
	}
	s.q.SetMaxOpenConns(cfg.QueryConns)
	s.q.SetMaxIdleConns(cfg.QueryConns)
	if s.schemaErr.Load() == nil {
		if err := s.loadState(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	log.Info("sqlite store open", "path", path, "synchronous", cfg.Synchronous)
	return s, nil
}

// dsn builds the connection string. PRAGMAs in the DSN run on every new
// connection, so a connection database/sql replaces gets them too.
func (s *Store) dsn(readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.FormatInt(s.cfg.BusyTimeout.Milliseconds(), 10)+")")
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		q.Set("mode", "ro")
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(wal)")
		q.Add("_pragma", "synchronous("+s.cfg.Synchronous+")")
		// Checkpoint every 10,000 pages (~40 MB of WAL) instead of SQLite's
		// 1,000: a commit dirties ~one index page per device, so with the
		// default a checkpoint ran every few commits and rewrote the same
		// pages; on BenchmarkCommit this raised readings per CPU-second from
		// ~164k to ~214k (median of 4 interleaved runs each).
		q.Add("_pragma", "wal_autocheckpoint(10000)")
		// After a checkpoint, shrink a WAL that a long reader made grow.
		q.Add("_pragma", "journal_size_limit(67108864)")
		// Every write transaction starts BEGIN IMMEDIATE: taking the write
		// lock up front means a transaction never fails half-way with
		// SQLITE_BUSY when upgrading from a read lock.
		q.Set("_txlock", "immediate")
	}
	u := url.URL{Scheme: "file", OmitHost: true, Path: filepath.ToSlash(s.path), RawQuery: q.Encode()}
	return u.String()
}

// checkWritable creates the file and fails clearly when it cannot be
// written: SQLite silently opens a write-protected file read-only, and the
// first commit would fail only then.
func (s *Store) checkWritable(ctx context.Context) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	defer conn.Close()
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	var ro bool
	if err := conn.Raw(func(dc any) error {
		ro, _ = dc.(driver.Conn).Raw().ReadOnly("main")
		return nil
	}); err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	if ro {
		return fmt.Errorf("open %s: database file is read-only (check its permissions and owner)", s.path)
	}
	if mode != "wal" {
		return fmt.Errorf("open %s: could not switch to WAL mode (journal_mode is %q; is the directory writable and on a local file system?)", s.path, mode)
	}
	// Touch the write lock: fails now, not at the first commit, when the
	// directory (for the -wal and -shm files) is not writable.
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("open %s: take the write lock: %w", s.path, err)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	return nil
}

// loadState fills the name caches and the rollup progress.
func (s *Store) loadState(ctx context.Context) error {
	load := func(q string, into map[string]int64) error {
		rows, err := s.r.QueryContext(ctx, q)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				return err
			}
			into[name] = id
		}
		return rows.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deviceIDs, s.metricIDs = map[string]int64{}, map[string]int64{}
	if err := load("SELECT id, device FROM device_ids", s.deviceIDs); err != nil {
		return fmt.Errorf("load device ids: %w", err)
	}
	if err := load("SELECT id, metric FROM metrics", s.metricIDs); err != nil {
		return fmt.Errorf("load metric ids: %w", err)
	}
	to, err := s.metaInt(ctx, s.r, metaRefreshedTo)
	if err != nil {
		return err
	}
	if to != nil {
		s.lateBefore.Store(*to)
	}
	return nil
}

// Keys of meridian_meta this package writes.
const (
	metaRefreshedTo = "rollup_refreshed_to" // Unix ms the last rollup refresh covered up to
	metaRawCutoff   = "raw_cutoff"          // Unix ms: raw rows older than this have been deleted
)

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) metaInt(ctx context.Context, q queryRower, key string) (*int64, error) {
	var v int64
	err := q.QueryRowContext(ctx, "SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = ?", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return &v, nil
}

// Mode reports storage.ModeSQLite.
func (s *Store) Mode() string { return storage.ModeSQLite }

// Path is the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Ping checks that both pools can reach the file and that the schema is
// the one this binary needs.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.schemaErr.Load(); err != nil {
		return *err
	}
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite (read): %w", err)
	}
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite (write): %w", err)
	}
	return nil
}

// Close closes both pools; later calls return the first call's result.
// In-flight calls finish first (database/sql waits for connections in use).
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	var errs []error
	if s.w != nil {
		// Finalize the cached statements first, or the writer connection
		// would refuse to close.
		errs = append(errs, s.withWriter(context.Background(), func(*sqlite3.Conn) error {
			if s.stmts != nil {
				s.stmts.close()
				s.stmts = nil
			}
			return nil
		}))
	}
	if s.q != nil {
		errs = append(errs, s.q.Close())
	}
	if s.r != nil {
		errs = append(errs, s.closeLookups(), s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	return errors.Join(errs...)
}

// withWriter runs f with the writer connection's direct SQLite handle, with
// ctx wired to sqlite3_interrupt so a cancelled context stops a running
// statement.
func (s *Store) withWriter(ctx context.Context, f func(c *sqlite3.Conn) error) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("get the writer connection: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c := dc.(driver.Conn).Raw()
		old := c.SetInterrupt(ctx)
		defer c.SetInterrupt(old)
		err := f(c)
		if !c.GetAutocommit() {
			// f left a transaction open (a failed ROLLBACK): never hand the
			// connection on in that state.
			c.SetInterrupt(context.Background())
			if rerr := c.Exec("ROLLBACK"); rerr != nil {
				return errors.Join(err, rerr, sqldriver.ErrBadConn)
			}
		}
		return err
	})
}

// Times in registry tables: UTC text in SQLite's datetime format, which
// sorts as text and compares with datetime('now', ...).
const timeLayout = "2006-01-02 15:04:05.000"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func fmtTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return fmtTime(*t)
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse stored time %q: %w", s, err)
	}
	return t, nil
}

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}
