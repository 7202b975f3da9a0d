package main

import (
	"github.com/spf13/pflag"

	"github.com/meridian-iot/meridian/cmd/internal/conf"
	"github.com/meridian-iot/meridian/internal/redact"
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

// sections documents the top-level sections, in the order docs show them.
var sectionDocs = []conf.Section{
	{Name: "server", Doc: "The process: listen address, state directory, logging, metrics."},
	{Name: "ingest", Doc: "The device endpoint and the batching pipeline (docs/protocol.md). Sizing arithmetic for each default is in ingest/config.go."},
	{Name: "storage", Doc: "Where readings live. Empty `storage.url` selects the embedded SQLite store at `<server.data_dir>/meridian.db`; a postgres URL selects PostgreSQL (TimescaleDB when the extension is installed)."},
	{Name: "devices", Doc: "The device registry and operator access: API keys, device tokens, provisioning, per-device rate limits."},
	{Name: "mqtt", Doc: "The MQTT bridge (docs/mqtt.md): telemetry out, commands in. Empty `mqtt.url` runs an embedded broker on `mqtt.embedded.listen`; API keys are its passwords."},
	{Name: "dashboard", Doc: "The operator web UI and the live feed at /v1/live (docs/dashboard.md)."},
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
		{key: "server.http.idle_timeout", field: func(c *Config) any { return &c.Server.HTTP.IdleTimeout },
			doc: "A keep-alive connection quiet this long between requests is closed."},
		{key: "server.http.header_timeout", field: func(c *Config) any { return &c.Server.HTTP.HeaderTimeout },
			doc: "Longest a client may take to send a request's headers (WebSocket upgrades included)."},
		{key: "server.http.body_timeout", field: func(c *Config) any { return &c.Server.HTTP.BodyTimeout },
			doc: "Longest a client may take to send a request body after its headers (login, provisioning, HTTP batches); the request fails and the connection closes after it."},
		{key: "server.http.max_pending_conns", field: func(c *Config) any { return &c.Server.HTTP.MaxPendingConns },
			doc: "Most connections that have no request in progress (not yet sent headers, or idle between requests); new connections beyond it are closed at once."},
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
			doc: "Most readings one flush (one transaction) takes. Writers commit as soon as they are idle (group commit), so flushes only grow to this size under load."},
		{key: "ingest.linger", field: func(c *Config) any { return &c.Ingest.Linger },
			doc: "Extra wait before each commit for more batches to join it (0 to 10s); 0 commits at once. Trades ack latency for fewer transactions, e.g. on SD cards. Replaces `ingest.flush_interval`."},
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
		{key: "ingest.rate_pause_max", field: func(c *Config) any { return &c.Ingest.RatePauseMax },
			doc: "Longest a device over devices.readings_per_second is paced (its socket left unread) before it is closed with 1013."},
		{key: "ingest.blocking_readers", field: func(c *Config) any { return &c.Ingest.BlockingReaders },
			doc: "Give every device session a reader goroutine instead of the epoll poller (TLS sessions and non-Linux builds always have one)."},
		{key: "ingest.node", field: func(c *Config) any { return &c.Ingest.Node },
			doc: "Name of this server in session records and logs. Empty uses the host name."},

		{key: "storage.url", field: func(c *Config) any { return &c.Storage.URL }, flag: "storage-url", secret: true, mask: redact.URL,
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
		{key: "storage.postgres.query_url", field: func(c *Config) any { return &c.Storage.Postgres.QueryURL }, secret: true, mask: redact.URL,
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

		{key: "mqtt.url", field: func(c *Config) any { return &c.MQTT.URL }, secret: true, mask: redact.URL,
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
		{key: "dashboard.history_interval", field: func(c *Config) any { return &c.Dashboard.HistoryInterval },
			doc: "How often the server samples its own metrics for the system page's 15-minute charts (kept in memory)."},
	}
}

// configError marks an error in the configuration; main exits 2 for it.
type configError = conf.Error

// loader binds the table to viper under the MERIDIAN_ prefix.
var loader = conf.Loader{EnvPrefix: envPrefix}

func envName(key string) string { return loader.EnvName(key) }

// entries binds every key of the table to its field in cfg.
func entries(cfg *Config) []conf.Entry {
	table := settingsTable()
	out := make([]conf.Entry, len(table))
	for i, s := range table {
		out[i] = conf.Entry{Key: s.key, Ptr: s.field(cfg), Doc: s.doc, Flag: s.flag, Secret: s.secret, Mask: s.mask}
	}
	return out
}

// loadConfig layers, lowest first: defaults, the file named by --config,
// MERIDIAN_* env vars, flags. It returns a validated Config or a configError.
func loadConfig(flags *pflag.FlagSet) (Config, error) {
	cfg, err := decodeConfig(flags)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, configError{Err: err}
	}
	return cfg, nil
}

// decodeConfig is loadConfig without Validate.
func decodeConfig(flags *pflag.FlagSet) (Config, error) {
	cfg := DefaultConfig()
	if err := loader.Load(entries(&cfg), flags, loader.Path(flags)); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
