package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/bridge"
	"github.com/meridian-iot/meridian/cmd/internal/conf"
	"github.com/meridian-iot/meridian/cmd/internal/front"
	"github.com/meridian-iot/meridian/dashboard"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/queryapi"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// Config is the whole configuration of the meridian binary. Each package owns
// its sub-struct, its defaults and its Validate; this type only composes them.
// Every leaf field has exactly one entry in the settings table (settings.go),
// which maps it to a config key, an env var and a description.
type Config struct {
	Server    ServerConfig
	Ingest    ingest.Config
	Storage   StorageConfig
	Devices   devices.Config
	MQTT      bridge.Config
	Dashboard dashboard.Config
}

// ServerConfig is what the process itself needs: where to listen, where to
// keep state, and how to log.
type ServerConfig struct {
	// Listen is the HTTP listen address for devices, operators and metrics.
	Listen string
	// DataDir holds the embedded database and other local state.
	DataDir string
	// LogFormat is "text" or "json".
	LogFormat string
	// LogLevel is "debug", "info", "warn" or "error".
	LogLevel string
	// TrustedProxies lists the addresses or CIDR prefixes of reverse proxies
	// whose X-Forwarded-For header is believed. Empty trusts nobody, so a
	// client cannot spoof its address by sending the header itself.
	TrustedProxies []string
	Metrics        MetricsConfig
	// TLS makes the server speak HTTPS/WSS itself.
	TLS front.TLSConfig
	// HTTP bounds idle, slow and never-finishing clients.
	HTTP front.HTTPConfig
}

// MetricsConfig controls /metrics.
type MetricsConfig struct {
	// Open serves /metrics without operator authentication. Off by default:
	// metrics reveal device counts and traffic, and the port faces devices.
	Open bool
}

// StorageConfig selects and tunes the store.
type StorageConfig struct {
	// URL is a PostgreSQL connection URL. Empty selects the embedded SQLite
	// store under Server.DataDir.
	URL string
	// Retention bounds how long readings and rollups are kept.
	Retention storage.Retention
	// MaintainInterval is how often the store's housekeeping runs (partitions
	// ahead, retention, rollup refresh).
	MaintainInterval time.Duration
	// Migrate applies pending schema migrations when serve starts.
	Migrate bool
	// Postgres holds the PostgreSQL-only settings. Its URL, Retention and
	// Migrate are not keys of their own: backendConfigs fills them from the
	// shared settings above.
	Postgres postgres.Config
	// SQLite holds the embedded store's own settings. Its Path is
	// <server.data_dir>/meridian.db; Retention and Migrate come from the
	// shared settings (see Config.sqliteConfig).
	SQLite sqlite.Config
	// Query bounds /v1/query.
	Query queryapi.Config
}

// sqliteFile is the embedded database's file name under server.data_dir.
const sqliteFile = "meridian.db"

// sqliteConfig is the embedded store's config with the shared settings
// filled in.
func (c Config) sqliteConfig() sqlite.Config {
	sq := c.Storage.SQLite
	sq.Path = filepath.Join(c.Server.DataDir, sqliteFile)
	sq.Retention = c.Storage.Retention
	sq.Migrate = c.Storage.Migrate
	return sq
}

// postgresConfig is the PostgreSQL backend's config with the shared settings
// filled in.
func (s StorageConfig) postgresConfig() postgres.Config {
	pg := s.Postgres
	pg.URL = s.URL
	pg.Retention = s.Retention
	pg.Migrate = s.Migrate
	return pg
}

// Listen port 8470: unassigned by IANA and clear of the services this kind of
// host runs (PostgreSQL 5432, MQTT 1883, MySQL 3306, NATS 4222, AMQP 5672,
// Redis 6379). All interfaces, because the server exists to be reached by
// devices on the LAN; every endpoint except /healthz and /readyz
// authenticates, so binding wide does not expose data.
const defaultListen = ":8470"

// DefaultConfig is the configuration with nothing set: a working server on
// the embedded store.
func DefaultConfig() Config {
	return Config{
		Server: ServerConfig{
			Listen:    defaultListen,
			DataDir:   "./meridian-data",
			LogFormat: "text",
			LogLevel:  "info",
			HTTP:      front.DefaultHTTPConfig(),
		},
		Ingest:    ingest.DefaultConfig(),
		Devices:   devices.DefaultConfig(),
		MQTT:      bridge.DefaultConfig(),
		Dashboard: dashboard.DefaultConfig(),
		Storage: StorageConfig{
			// The storage package's reasoning applies to every backend.
			Retention: postgres.DefaultConfig().Retention,
			// Once a minute keeps rollups at most a minute behind and
			// creates partitions long before they are needed, at the cost of
			// a few cheap statements.
			MaintainInterval: time.Minute,
			Migrate:          true,
			Postgres:         postgres.DefaultConfig(),
			SQLite:           sqlite.DefaultConfig(),
			Query:            queryapi.DefaultConfig(),
		},
	}
}

// Validate reports the first invalid value as "key: why, got value".
func (c Config) Validate() error {
	for _, check := range []func() error{
		c.Server.validate,
		c.Ingest.Validate,
		c.Storage.validate,
		func() error { return firstError(c.sqliteConfig().Validate()) },
		func() error { return firstError(c.Storage.Query.Validate()) },
		c.Devices.Validate,
		func() error { return firstError(c.MQTT.Validate()) },
		func() error { return firstError(c.Dashboard.Validate()) },
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (s ServerConfig) validate() error {
	if err := validListen(s.Listen); err != nil {
		return fmt.Errorf("server.listen: %s, got %q", err, s.Listen)
	}
	if strings.TrimSpace(s.DataDir) == "" {
		return fmt.Errorf("server.data_dir: must not be empty, got %q", s.DataDir)
	}
	if s.LogFormat != "text" && s.LogFormat != "json" {
		return fmt.Errorf("server.log_format: must be text or json, got %q", s.LogFormat)
	}
	if _, ok := logLevels[s.LogLevel]; !ok {
		return fmt.Errorf("server.log_level: must be debug, info, warn or error, got %q", s.LogLevel)
	}
	if err := s.TLS.Validate(); err != nil {
		return err
	}
	if err := s.HTTP.Validate(); err != nil {
		return err
	}
	for _, p := range s.TrustedProxies {
		if _, err := front.ParseProxy(p); err != nil {
			return fmt.Errorf("server.trusted_proxies: must be IP addresses or CIDR prefixes, got %q", p)
		}
	}
	return nil
}

func validListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf(`must be host:port such as ":8470" or "127.0.0.1:8470"`)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port must be a number from 0 to 65535")
	}
	return nil
}

func (s StorageConfig) validate() error {
	if s.URL != "" {
		u, err := url.Parse(s.URL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
			return fmt.Errorf("storage.url: must be a postgres://user:password@host:port/db URL or empty for the embedded store, got %q", maskURL(s.URL))
		}
	}
	if s.Retention.Raw < 0 {
		return fmt.Errorf("storage.retention.raw: must be >= 0 (0 keeps readings forever), got %v", s.Retention.Raw)
	}
	if s.Retention.Rollups < 0 {
		return fmt.Errorf("storage.retention.rollups: must be >= 0 (0 keeps rollups forever), got %v", s.Retention.Rollups)
	}
	if s.Retention.Raw > 0 && s.Retention.Raw < time.Hour {
		return fmt.Errorf("storage.retention.raw: must be 0 or at least 1h, got %v", s.Retention.Raw)
	}
	if s.Retention.Rollups > 0 && s.Retention.Rollups < s.Retention.Raw {
		return fmt.Errorf("storage.retention.rollups: must be 0 or at least storage.retention.raw (%v), got %v", s.Retention.Raw, s.Retention.Rollups)
	}
	if s.MaintainInterval < time.Second {
		return fmt.Errorf("storage.maintain_interval: must be at least 1s, got %v", s.MaintainInterval)
	}
	// The postgres settings are checked even when the embedded store is in
	// use, so a mistake shows before someone switches backends.
	pg := s.postgresConfig()
	if pg.URL == "" {
		pg.URL = "postgres://localhost/placeholder"
	}
	if err := firstError(pg.Validate()); err != nil {
		// The backend names the URL by its own field; here it is storage.url,
		// and its value is never echoed unmasked.
		msg := strings.Replace(err.Error(), "storage.postgres.url:", "storage.url:", 1)
		return errors.New(msg)
	}
	return nil
}

// firstError keeps the first of joined errors: a config error is one line.
func firstError(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		return j.Unwrap()[0]
	}
	return err
}

const masked = conf.Masked

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)

// maskURL hides the password of a connection URL (or key=value DSN) so it can
// be printed and logged.
func maskURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return dsnPassword.ReplaceAllString(s, "${1}"+masked)
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), masked)
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", masked)
		u.RawQuery = q.Encode()
	}
	// url.String escapes "*"; keep the mask readable.
	return strings.ReplaceAll(u.String(), "%2A%2A%2A", masked)
}
