package main

import (
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// setting is one config key. The settings table is the single place that
// names keys: defaults, env bindings, decoding, `config print` and
// `config docs` are all derived from it, so they cannot disagree. Sub-configs
// owned by other packages (ingest.Config, ...) carry no struct tags; the
// table maps their fields to keys instead.
type setting struct {
	key    string            // dotted, snake_case: "ingest.max_batch"
	field  func(*Config) any // pointer to the field the key sets
	doc    string            // one line for docs/config.md
	flag   string            // command-line flag that also sets it, if any
	secret bool              // masked by `config print`
	mask   func(string) string
}

// envPrefix + the upper-cased key with "." replaced by "_" names a key's
// environment variable: ingest.max_batch is MERIDIAN_INGEST_MAX_BATCH.
const envPrefix = "MERIDIAN"

func envName(key string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// sections documents the top-level sections, in the order docs show them.
var sectionDocs = []struct{ name, doc string }{
	{"server", "The process: listen address, state directory, logging, metrics."},
	{"ingest", "The device endpoint and the batching pipeline (docs/protocol.md). Sizing arithmetic for each default is in ingest/config.go."},
	{"storage", "Where readings live. Empty `storage.url` selects the embedded SQLite store at `<server.data_dir>/meridian.db`; a postgres URL selects PostgreSQL (TimescaleDB when the extension is installed)."},
	{"devices", "The device registry and operator access: API keys, device tokens, provisioning, per-device rate limits."},
	{"mqtt", "The MQTT bridge (docs/mqtt.md): telemetry out, commands in. Empty `mqtt.url` runs an embedded broker on `mqtt.embedded.listen`; API keys are its passwords."},
	{"dashboard", "The operator web UI and the live feed at /v1/live (docs/dashboard.md)."},
}

func settingsTable() []setting {
	return []setting{
		{key: "server.listen", field: func(c *Config) any { return &c.Server.Listen }, flag: "listen",
			doc: "HTTP listen address for devices, operators and metrics. All interfaces by default, since devices on the LAN must reach it."},
		{key: "server.data_dir", field: func(c *Config) any { return &c.Server.DataDir }, flag: "data-dir",
			doc: "Directory for local state: the embedded database file lives here."},
		{key: "server.log_format", field: func(c *Config) any { return &c.Server.LogFormat }, flag: "log-format",
			doc: "Log format: `text` for people, `json` for log collectors."},
		{key: "server.log_level", field: func(c *Config) any { return &c.Server.LogLevel }, flag: "log-level",
			doc: "Lowest level logged: `debug`, `info`, `warn` or `error`."},
		{key: "server.trusted_proxies", field: func(c *Config) any { return &c.Server.TrustedProxies },
			doc: "IP addresses or CIDR prefixes of reverse proxies whose `X-Forwarded-For` is believed. Empty trusts none. In env, comma-separated."},
		{key: "server.tls.cert_file", field: func(c *Config) any { return &c.Server.TLS.CertFile },
			doc: "PEM certificate chain for serving HTTPS/WSS directly (edge hosts without a proxy). Reloaded without a restart when the file changes or on SIGHUP. Empty: plain HTTP."},
		{key: "server.tls.key_file", field: func(c *Config) any { return &c.Server.TLS.KeyFile },
			doc: "PEM private key for `server.tls.cert_file`."},
		{key: "server.metrics.open", field: func(c *Config) any { return &c.Server.Metrics.Open },
			doc: "Serve `/metrics` without an operator API key. Off by default: metrics reveal fleet size and traffic."},

		{key: "ingest.max_batch", field: func(c *Config) any { return &c.Ingest.MaxBatch },
			doc: "Most readings one batch may carry (announced in hello as `max_batch`)."},
		{key: "ingest.max_frame", field: func(c *Config) any { return &c.Ingest.MaxFrame },
			doc: "Largest WebSocket message or HTTP body accepted, in bytes (hello `max_frame`); bounds each connection's read buffer."},
		{key: "ingest.heartbeat", field: func(c *Config) any { return &c.Ingest.Heartbeat },
			doc: "Ping interval; a device silent for two intervals is disconnected. Keep it below your proxies' idle timeout."},
		{key: "ingest.handshake_timeout", field: func(c *Config) any { return &c.Ingest.HandshakeTimeout },
			doc: "Longest a client may take to complete the HTTP upgrade."},
		{key: "ingest.write_timeout", field: func(c *Config) any { return &c.Ingest.WriteTimeout },
			doc: "Longest one frame write to a device may take."},
		{key: "ingest.max_future", field: func(c *Config) any { return &c.Ingest.MaxFuture },
			doc: "A reading stamped further ahead of the server clock is rejected (clock drift allowance)."},
		{key: "ingest.max_past", field: func(c *Config) any { return &c.Ingest.MaxPast },
			doc: "A reading stamped further behind the server clock is rejected (how old an offline buffer may be)."},
		{key: "ingest.queue_readings", field: func(c *Config) any { return &c.Ingest.QueueReadings },
			doc: "Readings accepted but not yet committed, across all devices. When full, device reads pause (backpressure) instead of memory growing."},
		{key: "ingest.flush_size", field: func(c *Config) any { return &c.Ingest.FlushSize },
			doc: "Readings that trigger a flush to storage."},
		{key: "ingest.flush_interval", field: func(c *Config) any { return &c.Ingest.FlushInterval },
			doc: "Longest a reading waits before it is flushed; bounds ack latency at low rates."},
		{key: "ingest.writers", field: func(c *Config) any { return &c.Ingest.Writers },
			doc: "Concurrent flush writers; devices are sharded across them so each device's batches stay in order."},
		{key: "ingest.session_queue", field: func(c *Config) any { return &c.Ingest.SessionQueue },
			doc: "Batches one connection may have in flight (read, not yet acked); at the limit its reads pause until an ack is written."},
		{key: "ingest.max_connections", field: func(c *Config) any { return &c.Ingest.MaxConnections },
			doc: "Device WebSocket sessions allowed on this node; beyond it handshakes get 503 with Retry-After."},
		{key: "ingest.max_handshakes", field: func(c *Config) any { return &c.Ingest.MaxHandshakes },
			doc: "Device handshakes in progress at once (each costs a token lookup and a watermark read); beyond it 503 with Retry-After."},
		{key: "ingest.shutdown_grace", field: func(c *Config) any { return &c.Ingest.ShutdownGrace },
			doc: "Longest a graceful shutdown may take to flush, ack and close devices."},
		{key: "ingest.node", field: func(c *Config) any { return &c.Ingest.Node },
			doc: "Name of this server in session records and logs. Empty uses the host name."},

		{key: "storage.url", field: func(c *Config) any { return &c.Storage.URL }, flag: "storage-url", secret: true, mask: maskURL,
			doc: "PostgreSQL URL (`postgres://user:password@host:5432/db`). Empty uses the embedded SQLite store. Prefer the env var: flags show in `ps`."},
		{key: "storage.retention.raw", field: func(c *Config) any { return &c.Storage.Retention.Raw },
			doc: "How long raw readings are kept; `0` keeps them forever."},
		{key: "storage.retention.rollups", field: func(c *Config) any { return &c.Storage.Retention.Rollups },
			doc: "How long 1-minute and 1-hour rollups are kept; `0` keeps them forever. Must be at least the raw retention."},
		{key: "storage.maintain_interval", field: func(c *Config) any { return &c.Storage.MaintainInterval },
			doc: "How often storage housekeeping runs: partitions ahead, retention, rollup refresh."},
		{key: "storage.migrate", field: func(c *Config) any { return &c.Storage.Migrate },
			doc: "Apply pending schema migrations when `serve` starts. When off, run `meridian migrate` yourself."},
		{key: "storage.sqlite.synchronous", field: func(c *Config) any { return &c.Storage.SQLite.Synchronous },
			doc: "`full` syncs the WAL on every commit, so an acknowledged batch survives a power cut; `normal` syncs only at checkpoints (faster; an OS crash may lose the last acknowledged batches). Keep `full` unless the host has a UPS."},
		{key: "storage.sqlite.busy_timeout", field: func(c *Config) any { return &c.Storage.SQLite.BusyTimeout },
			doc: "How long a statement waits for a lock held by another process (the CLI next to a running server) before failing."},
		{key: "storage.sqlite.read_conns", field: func(c *Config) any { return &c.Storage.SQLite.ReadConns },
			doc: "Read-only connections for series and token, API-key and watermark lookups (ad-hoc SQL has its own, `storage.sqlite.query_conns`)."},
		{key: "storage.sqlite.query_conns", field: func(c *Config) any { return &c.Storage.SQLite.QueryConns },
			doc: "Read-only connections for ad-hoc SQL (`/v1/query`, `meridian query`), apart from the lookups' so a slow query never delays a device handshake."},
		{key: "storage.sqlite.query_heap_limit", field: func(c *Config) any { return &c.Storage.SQLite.QueryHeapLimit },
			doc: "Bytes of SQLite heap each ad-hoc query connection may use; a statement needing more fails with \"out of memory\"."},
		{key: "storage.postgres.max_conns", field: func(c *Config) any { return &c.Storage.Postgres.MaxConns },
			doc: "PostgreSQL connection pool size: flushes in flight, housekeeping, queries and the registry share it."},
		{key: "storage.postgres.chunk_interval", field: func(c *Config) any { return &c.Storage.Postgres.ChunkInterval },
			doc: "Hypertable chunk width (TimescaleDB mode only)."},
		{key: "storage.postgres.compress_after", field: func(c *Config) any { return &c.Storage.Postgres.CompressAfter },
			doc: "Compress chunks older than this (TimescaleDB mode only); `0` disables compression."},
		{key: "storage.postgres.partitions_ahead", field: func(c *Config) any { return &c.Storage.Postgres.PartitionsAhead },
			doc: "Daily partitions kept created ahead of time, today included (plain PostgreSQL mode)."},
		{key: "storage.postgres.read_only_role", field: func(c *Config) any { return &c.Storage.Postgres.ReadOnlyRole },
			doc: "Deprecated, no security boundary (a statement can switch back): use `storage.postgres.query_url`. Role ad-hoc SQL switches to with SET LOCAL ROLE when no query URL is set."},
		{key: "storage.postgres.query_url", field: func(c *Config) any { return &c.Storage.Postgres.QueryURL }, secret: true, mask: maskURL,
			doc: "PostgreSQL URL ad-hoc SQL (`/v1/query`) logs in with: a least-privilege role (`meridian migrate --create-query-role NAME` makes one; docs/sql.md). Empty: the service's role, and `/v1/query` refuses if that role is a superuser or holds replication or server-file privileges."},
		{key: "storage.postgres.query_conns", field: func(c *Config) any { return &c.Storage.Postgres.QueryConns },
			doc: "Connections of the ad-hoc SQL pool, apart from the service's pool so queries never delay commits or lookups."},
		{key: "storage.query.timeout", field: func(c *Config) any { return &c.Storage.Query.Timeout },
			doc: "Deadline of a whole `/v1/query` request: the statement and writing the answer."},
		{key: "storage.query.max_rows", field: func(c *Config) any { return &c.Storage.Query.MaxRows },
			doc: "Row cap of `/v1/query` results (a request may ask for fewer with `max_rows`)."},
		{key: "storage.query.max_bytes", field: func(c *Config) any { return &c.Storage.Query.MaxBytes },
			doc: "Byte cap of `/v1/query` results, enforced as rows stream from the database; a result cut by it says `\"truncated_by\": \"bytes\"`."},
		{key: "storage.query.max_concurrent", field: func(c *Config) any { return &c.Storage.Query.MaxConcurrent },
			doc: "`/v1/query` requests running at once; more are answered 429."},

		{key: "devices.admin_key", field: func(c *Config) any { return &c.Devices.AdminKey }, secret: true,
			doc: "Operator admin API key registered at start (`mak_` + at least 32 of `[A-Za-z0-9_-]`, e.g. `mak_$(openssl rand -hex 32)`). Empty: on first start a key is generated and printed once."},
		{key: "devices.token_grace", field: func(c *Config) any { return &c.Devices.TokenGrace },
			doc: "How long a device's previous token keeps working after a rotation, so a sleeping device can pick up the new one."},
		{key: "devices.connect_per_minute", field: func(c *Config) any { return &c.Devices.ConnectPerMinute },
			doc: "Connection attempts allowed per device per minute (burst the same); stops reconnect loops."},
		{key: "devices.readings_per_second", field: func(c *Config) any { return &c.Devices.ReadingsPerSecond },
			doc: "Readings allowed per device per second (burst twice that, for offline-buffer replays)."},
		{key: "devices.provisioning.key", field: func(c *Config) any { return &c.Devices.Provisioning.Key }, secret: true,
			doc: "Fleet secret a device presents to `POST /v1/provision` to get its token. Empty turns provisioning off (secure default); otherwise at least 16 characters."},
		{key: "devices.provisioning.allow_reprovision", field: func(c *Config) any { return &c.Devices.Provisioning.AllowReprovision },
			doc: "Let an already registered id provision again (reflashed device), revoking its old tokens. Off: the fleet key alone cannot take over a device id."},
		{key: "devices.provisioning.rate_per_minute", field: func(c *Config) any { return &c.Devices.Provisioning.RatePerMinute },
			doc: "Provisioning attempts allowed per remote address per minute."},

		{key: "mqtt.url", field: func(c *Config) any { return &c.MQTT.URL }, secret: true, mask: maskURL,
			doc: "External broker (`tcp://host:1883`, `ssl://host:8883`, `ws://host/mqtt`). Empty runs the embedded broker."},
		{key: "mqtt.embedded.enabled", field: func(c *Config) any { return &c.MQTT.Embedded.Enabled },
			doc: "Run the embedded broker when `mqtt.url` is empty. Off with no URL turns the bridge off."},
		{key: "mqtt.embedded.listen", field: func(c *Config) any { return &c.MQTT.Embedded.Listen },
			doc: "Embedded broker address. Loopback by default (no TLS; API keys travel as passwords); port 1884 because 1883 is usually taken by a system broker."},
		{key: "mqtt.node", field: func(c *Config) any { return &c.MQTT.Node },
			doc: "This server's name among several sharing one broker; must be unique per process. Empty: `ingest.node`, else the host name."},
		{key: "mqtt.client_id", field: func(c *Config) any { return &c.MQTT.ClientID },
			doc: "MQTT client id. Empty: `meridian-<node>`."},
		{key: "mqtt.username", field: func(c *Config) any { return &c.MQTT.Username },
			doc: "User name for an external broker."},
		{key: "mqtt.password", field: func(c *Config) any { return &c.MQTT.Password }, secret: true,
			doc: "Password for an external broker."},
		{key: "mqtt.topic_prefix", field: func(c *Config) any { return &c.MQTT.TopicPrefix },
			doc: "First topic level of everything the bridge publishes and subscribes to."},
		{key: "mqtt.telemetry.layout", field: func(c *Config) any { return &c.MQTT.Telemetry.Layout },
			doc: "`batch` (one message per batch on `<prefix>/<device>/telemetry`), `reading` (`<prefix>/<device>/<metric>`) or `both`. Several nodes need `batch` or `both`."},
		{key: "mqtt.telemetry.retain", field: func(c *Config) any { return &c.MQTT.Telemetry.Retain },
			doc: "Retain per-reading messages, so a new subscriber gets each metric's last value at once."},
		{key: "mqtt.format", field: func(c *Config) any { return &c.MQTT.Format },
			doc: "Telemetry payload encoding: `json` or `msgpack`."},
		{key: "mqtt.qos", field: func(c *Config) any { return &c.MQTT.QoS },
			doc: "QoS of telemetry messages (0, 1 or 2)."},
		{key: "mqtt.queue_size", field: func(c *Config) any { return &c.MQTT.QueueSize },
			doc: "Committed batches waiting to be published; when full the oldest is dropped and counted, so MQTT never slows ingestion."},
		{key: "mqtt.command_queue.max_per_device", field: func(c *Config) any { return &c.MQTT.CommandQueue.MaxPerDevice },
			doc: "Queued commands (`\"queue\": true`) that may wait for one offline device."},
		{key: "mqtt.command_queue.max_total", field: func(c *Config) any { return &c.MQTT.CommandQueue.MaxTotal },
			doc: "Queued commands across all devices."},
		{key: "mqtt.command_queue.max_age", field: func(c *Config) any { return &c.MQTT.CommandQueue.MaxAge },
			doc: "How long a queued command waits before it is answered `expired`."},
		{key: "mqtt.command_timeout", field: func(c *Config) any { return &c.MQTT.CommandTimeout },
			doc: "How long the HTTP command endpoint waits for a device's result."},
		{key: "mqtt.keep_alive", field: func(c *Config) any { return &c.MQTT.KeepAlive },
			doc: "MQTT keep-alive; the broker fires this node's Last Will after 1.5x of silence."},
		{key: "mqtt.write_timeout", field: func(c *Config) any { return &c.MQTT.WriteTimeout },
			doc: "Bound on one packet write and on a connect attempt to the broker."},
		{key: "mqtt.max_reconnect_interval", field: func(c *Config) any { return &c.MQTT.MaxReconnectInterval },
			doc: "Cap of the reconnect backoff."},
		{key: "mqtt.shutdown_grace", field: func(c *Config) any { return &c.MQTT.ShutdownGrace },
			doc: "Bound on the clean disconnect (offline status, queued telemetry)."},

		{key: "dashboard.enabled", field: func(c *Config) any { return &c.Dashboard.Enabled },
			doc: "Serve the operator pages and /v1/live."},
		{key: "dashboard.allowed_origins", field: func(c *Config) any { return &c.Dashboard.AllowedOrigins },
			doc: "Extra browser origins allowed to open /v1/live and post forms. Empty: same host only. In env, comma-separated."},
		{key: "dashboard.session_ttl", field: func(c *Config) any { return &c.Dashboard.SessionTTL },
			doc: "How long a login lasts without activity (sessions are in memory)."},
		{key: "dashboard.max_updates_per_second", field: func(c *Config) any { return &c.Dashboard.MaxUpdatesPerSecond },
			doc: "Live updates per series per client; faster readings are coalesced keeping min, max and last."},
		{key: "dashboard.client_queue", field: func(c *Config) any { return &c.Dashboard.ClientQueue },
			doc: "Live messages that may wait for one browser; a slow browser is downsampled, then disconnected."},
	}
}

// configError marks an error in the configuration; main exits 2 for it.
type configError struct{ err error }

func (e configError) Error() string { return "invalid config: " + e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// loadConfig layers, lowest first: defaults, the file named by --config,
// MERIDIAN_* env vars, flags. It returns a validated Config or a configError.
func loadConfig(flags *pflag.FlagSet) (Config, error) {
	cfg, err := decodeConfig(flags)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, configError{err}
	}
	return cfg, nil
}

// decodeConfig is loadConfig without Validate.
func decodeConfig(flags *pflag.FlagSet) (Config, error) {
	cfg := DefaultConfig()
	table := settingsTable()

	v := viper.New()
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, s := range table {
		// SetDefault makes the key known to viper, so env and flags work
		// without a file naming it.
		v.SetDefault(s.key, reflect.ValueOf(s.field(&cfg)).Elem().Interface())
		if err := v.BindEnv(s.key); err != nil {
			return Config{}, fmt.Errorf("bind env for %s: %w", s.key, err)
		}
		if s.flag != "" && flags != nil {
			if f := flags.Lookup(s.flag); f != nil {
				if err := v.BindPFlag(s.key, f); err != nil {
					return Config{}, fmt.Errorf("bind flag --%s: %w", s.flag, err)
				}
			}
		}
	}

	path := configPath(flags)
	if path != "" {
		if err := readConfigFile(v, path, table); err != nil {
			return Config{}, configError{err}
		}
	}

	for _, s := range table {
		if err := decodeSetting(v.Get(s.key), s.field(&cfg)); err != nil {
			return Config{}, configError{fmt.Errorf("%s: %w", s.key, err)}
		}
	}
	return cfg, nil
}

// configPath is --config, or MERIDIAN_CONFIG when the flag is not given
// (handy for systemd environment files).
func configPath(flags *pflag.FlagSet) string {
	if flags != nil {
		if f := flags.Lookup("config"); f != nil && f.Value.String() != "" {
			return f.Value.String()
		}
	}
	return os.Getenv(envPrefix + "_CONFIG")
}

// readConfigFile merges the file into v after checking that it names only
// known keys: a typo must not silently fall back to a default.
func readConfigFile(v *viper.Viper, path string, table []setting) error {
	fv := viper.New()
	fv.SetConfigFile(path)
	if err := fv.ReadInConfig(); err != nil {
		return fmt.Errorf("read config file %s: %w", path, err)
	}
	known := make(map[string]bool, len(table))
	sections := map[string]bool{}
	for _, s := range table {
		known[s.key] = true
		parts := strings.Split(s.key, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	keys := fv.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case known[k]:
		case sections[k]:
			// An empty section ("ingest:" with nothing below) is harmless;
			// a value where a section belongs is not.
			if val := fv.Get(k); val != nil {
				return fmt.Errorf("%s: %s: must be a section of keys, got %v", path, k, val)
			}
		default:
			return fmt.Errorf("%s: unknown key %q (see docs/config.md)", path, k)
		}
	}
	// The main viper reads the file too, so the file sits below env and
	// flags in viper's precedence.
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("read config file %s: %w", path, err)
	}
	return nil
}

// decodeSetting stores raw into ptr through mapstructure, with a hook that
// accepts only sensible conversions and says precisely what was wrong.
func decodeSetting(raw any, ptr any) error {
	var hookErr error
	hook := func(from, to reflect.Type, data any) (any, error) {
		out, err := convert(to, data)
		if err != nil && hookErr == nil {
			hookErr = err
		}
		return out, err
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{DecodeHook: hook, Result: ptr})
	if err != nil {
		return fmt.Errorf("build decoder: %w", err)
	}
	if err := dec.Decode(raw); err != nil {
		if hookErr != nil {
			return hookErr
		}
		return err
	}
	return nil
}

var durationType = reflect.TypeFor[time.Duration]()

// convert turns a value from YAML, env (always strings) or a flag into the
// target type, or explains why it cannot.
func convert(to reflect.Type, data any) (any, error) {
	switch {
	case to == durationType:
		switch d := data.(type) {
		case time.Duration:
			return d, nil
		case string:
			v, err := time.ParseDuration(strings.TrimSpace(d))
			if err != nil {
				return nil, fmt.Errorf(`must be a duration such as "20s" or "1h30m", got %q`, d)
			}
			return v, nil
		default:
			if n, ok := asInt(data); ok && n == 0 {
				return time.Duration(0), nil
			}
			return nil, fmt.Errorf(`must be a duration with a unit such as "20s", got %v`, data)
		}
	case to.Kind() == reflect.Int || to.Kind() == reflect.Int32 || to.Kind() == reflect.Int64:
		var n int64
		if s, ok := data.(string); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("must be an integer, got %q", s)
			}
			n = v
		} else if v, ok := asInt(data); ok {
			n = v
		} else {
			return nil, fmt.Errorf("must be an integer, got %v", describe(data))
		}
		if reflect.Zero(to).OverflowInt(n) {
			return nil, fmt.Errorf("must be an integer that fits in %d bits, got %d", to.Bits(), n)
		}
		return reflect.ValueOf(n).Convert(to).Interface(), nil
	case to.Kind() == reflect.Float64:
		switch f := data.(type) {
		case float64:
			return f, nil
		case string:
			v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil {
				return nil, fmt.Errorf("must be a number, got %q", f)
			}
			return v, nil
		}
		if n, ok := asInt(data); ok {
			return float64(n), nil
		}
		return nil, fmt.Errorf("must be a number, got %v", describe(data))
	case to.Kind() == reflect.Bool:
		switch b := data.(type) {
		case bool:
			return b, nil
		case string:
			v, err := strconv.ParseBool(strings.TrimSpace(b))
			if err != nil {
				return nil, fmt.Errorf("must be true or false, got %q", b)
			}
			return v, nil
		}
		return nil, fmt.Errorf("must be true or false, got %v", describe(data))
	case to.Kind() == reflect.String:
		switch s := data.(type) {
		case string:
			return s, nil
		case int, int64, uint64, float64:
			// YAML reads `node: 7` as a number; a name is still meant.
			return fmt.Sprint(s), nil
		}
		return nil, fmt.Errorf("must be a string, got %v", describe(data))
	case to.Kind() == reflect.Slice && to.Elem().Kind() == reflect.String:
		switch l := data.(type) {
		case []string:
			return l, nil
		case string:
			// Env and flags: comma-separated.
			var out []string
			for _, p := range strings.Split(l, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
			return out, nil
		case []any:
			out := make([]string, 0, len(l))
			for _, e := range l {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("must be a list of strings, got element %v", describe(e))
				}
				out = append(out, s)
			}
			return out, nil
		case nil:
			return []string(nil), nil
		}
		return nil, fmt.Errorf("must be a list of strings, got %v", describe(data))
	}
	return data, nil
}

// asInt accepts integer kinds and integral floats (JSON numbers).
func asInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case int32:
		return int64(n), true
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), true
		}
	case uint:
		if uint64(n) <= math.MaxInt64 {
			return int64(n), true
		}
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), true
		}
	}
	return 0, false
}

// describe renders a wrongly typed value for an error message.
func describe(v any) string {
	switch v.(type) {
	case map[string]any, map[any]any:
		return "a section of keys"
	case []any:
		return "a list"
	case string:
		return strconv.Quote(v.(string))
	}
	return fmt.Sprint(v)
}
