package backend

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/internal/redact"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/queryapi"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// Config selects and tunes the store (the storage.* keys).
type Config struct {
	// URL is a PostgreSQL connection URL. Empty selects the embedded SQLite
	// store under server.data_dir.
	URL string
	// Retention bounds how long readings and rollups are kept.
	Retention storage.Retention
	// MaintainInterval is how often the store's housekeeping runs (partitions
	// ahead, retention, rollup refresh).
	MaintainInterval time.Duration
	// Migrate applies pending schema migrations when serve starts.
	Migrate bool
	// Postgres holds the PostgreSQL-only settings. Its URL, Retention and
	// Migrate are not keys of their own: PostgresConfig fills them from the
	// shared settings above.
	Postgres postgres.Config
	// SQLite holds the embedded store's own settings. Its Path is
	// <server.data_dir>/meridian.db; Retention and Migrate come from the
	// shared settings (see SQLiteConfig).
	SQLite sqlite.Config
	// Query bounds /v1/query.
	Query queryapi.Config
}

// DefaultConfig is the embedded store, migrated at start.
func DefaultConfig() Config {
	return Config{
		// The storage package's reasoning applies to every backend.
		Retention: postgres.DefaultConfig().Retention,
		// Once a minute keeps rollups at most a minute behind and creates
		// partitions long before they are needed, at the cost of a few
		// cheap statements.
		MaintainInterval: time.Minute,
		Migrate:          true,
		Postgres:         postgres.DefaultConfig(),
		SQLite:           sqlite.DefaultConfig(),
		Query:            queryapi.DefaultConfig(),
	}
}

// SQLiteFile is the embedded database's file name under server.data_dir.
const SQLiteFile = "meridian.db"

// SQLiteConfig is the embedded store's config with the shared settings
// filled in; its file is SQLiteFile in dataDir.
func (c Config) SQLiteConfig(dataDir string) sqlite.Config {
	sq := c.SQLite
	sq.Path = filepath.Join(dataDir, SQLiteFile)
	sq.Retention = c.Retention
	sq.Migrate = c.Migrate
	return sq
}

// PostgresConfig is the PostgreSQL backend's config with the shared
// settings filled in.
func (c Config) PostgresConfig() postgres.Config {
	pg := c.Postgres
	pg.URL = c.URL
	pg.Retention = c.Retention
	pg.Migrate = c.Migrate
	return pg
}

// Validate reports every invalid value, joined (errors.Join), each as
// "key: why, got value", in the order of the keys: the storage.* keys both
// backends share first, then PostgreSQL's, SQLite's and the query bounds.
// Both backends' settings are checked whichever is in use, so a mistake
// shows before someone switches backends. A URL is never echoed with its
// password.
func (c Config) Validate() error {
	var errs []error
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
			errs = append(errs, fmt.Errorf("storage.url: must be a postgres://user:password@host:port/db URL or empty for the embedded store, got %q", redact.URL(c.URL)))
		}
	}
	r := c.Retention
	for _, ch := range []struct {
		bad bool
		err string
	}{
		{r.Raw < 0, fmt.Sprintf("storage.retention.raw: must be >= 0 (0 keeps readings forever), got %v", r.Raw)},
		{r.Rollups < 0, fmt.Sprintf("storage.retention.rollups: must be >= 0 (0 keeps rollups forever), got %v", r.Rollups)},
		{r.Raw > 0 && r.Raw < time.Hour, fmt.Sprintf("storage.retention.raw: must be 0 or at least 1h, got %v", r.Raw)},
		{r.Rollups > 0 && r.Rollups < r.Raw, fmt.Sprintf("storage.retention.rollups: must be 0 or at least storage.retention.raw (%v), got %v", r.Raw, r.Rollups)},
		{c.MaintainInterval < time.Second, fmt.Sprintf("storage.maintain_interval: must be at least 1s, got %v", c.MaintainInterval)},
	} {
		if ch.bad {
			errs = append(errs, errors.New(ch.err))
		}
	}
	pg := c.PostgresConfig()
	if pg.URL == "" {
		pg.URL = "postgres://localhost/placeholder"
	}
	for _, err := range unjoin(pg.Validate()) {
		// The backend names the URL by its own field; here it is storage.url
		// (pgx already hides the password in its parse errors).
		errs = append(errs, errors.New(strings.Replace(err.Error(), "storage.postgres.url:", "storage.url:", 1)))
	}
	// The path is never empty (it always names SQLiteFile), so of the sqlite
	// config only its own settings can be wrong.
	errs = append(errs, unjoin(c.SQLiteConfig("").Validate())...)
	errs = append(errs, unjoin(c.Query.Validate())...)
	return errors.Join(errs...)
}

// unjoin lists the errors an errors.Join holds (a backend's Validate
// reports them joined), err alone, or none for nil.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}
