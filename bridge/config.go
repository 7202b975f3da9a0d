package bridge

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/internal/listenaddr"
	"github.com/meridian-iot/meridian/internal/redact"
)

// Config holds the MQTT bridge settings. The zero value is not valid; start
// from DefaultConfig. cmd maps these to config keys under "mqtt.".
type Config struct {
	// URL is the external broker: tcp://host:1883, ssl://host:8883 or
	// ws://host/mqtt. Empty means "use the embedded broker" (Embedded).
	URL string
	// Embedded is the in-process broker used when URL is empty.
	Embedded EmbeddedConfig
	// Node names this server among several sharing one broker. It appears in
	// telemetry payloads, ownership records and the node status topic, so it
	// must be unique per running process. Empty: the host name.
	Node string
	// ClientID is this node's MQTT client id. Empty: "meridian-" + Node.
	// Two clients with one id make the broker disconnect each other.
	ClientID string
	// Username and Password authenticate to an external broker. Password is
	// a secret: never logged. Ignored with the embedded broker, which the
	// bridge uses in-process, without a connection.
	Username string
	Password string
	// TopicPrefix is the first topic level of everything the bridge
	// publishes and subscribes to.
	TopicPrefix string
	// Telemetry chooses how committed batches are published.
	Telemetry TelemetryConfig
	// Format is the telemetry payload encoding: "json" or "msgpack".
	// Commands, results and status stay JSON / plain text.
	Format string
	// QoS for telemetry. 1 (at least once) by default: a subscriber may see
	// a batch twice after a reconnect, never silently lose one the broker
	// accepted. Status, ownership and command results always use QoS 1.
	QoS int
	// QueueSize bounds committed batches waiting to be published. When the
	// broker is slow or down the oldest batch is dropped (and counted), so
	// ingestion and acks never wait for MQTT. 10,000 batches hold about 100 s
	// of a 100-batch/s fleet; at ~1 KiB per batch that is ~10 MiB. The
	// ring itself is allocated up front (48 bytes a slot), hence the
	// 1,000,000 maximum.
	QueueSize int
	// CommandQueue bounds commands that asked to wait for an offline device.
	CommandQueue CommandQueueConfig
	// CommandTimeout is how long POST /v1/admin/devices/{id}/commands waits
	// for the device's result. 10 s covers a device on a slow cellular link
	// answering a quick command; long-running work should answer early.
	CommandTimeout time.Duration
	// KeepAlive is the MQTT keep-alive; the broker drops a silent client
	// after 1.5x this and fires its Last Will. 30 s notices a crashed node
	// within ~45 s without chatty pings.
	KeepAlive time.Duration
	// WriteTimeout bounds one packet write to the broker (paho's
	// WriteTimeout) and the connect attempt, so a wedged TCP connection is
	// noticed instead of stalling the publisher forever.
	WriteTimeout time.Duration
	// MaxReconnectInterval caps the reconnect backoff (paho doubles from 1 s).
	MaxReconnectInterval time.Duration
	// ShutdownGrace bounds the clean disconnect: publishing "offline" for
	// held devices and the node, and flushing queued telemetry.
	ShutdownGrace time.Duration
}

// EmbeddedConfig is the in-process broker (mochi-mqtt).
type EmbeddedConfig struct {
	// Enabled runs the embedded broker when URL is empty. With URL set it
	// is ignored. With URL empty and Enabled false the bridge is off
	// (see Config.Disabled).
	Enabled bool
	// Listen is the embedded broker's TCP address. Default 127.0.0.1:1884:
	// loopback because the listener has no TLS and clients send API keys as
	// passwords, so exposing it is an explicit choice (":1884"); port 1884
	// because 1883 is usually held by a system Mosquitto and a clash would
	// stop serve from starting.
	Listen string
}

// TelemetryConfig is the telemetry topic layout.
type TelemetryConfig struct {
	// Layout is "batch" (one message per batch on <prefix>/<device>/telemetry),
	// "reading" (one message per reading on <prefix>/<device>/<metric>) or
	// "both". Live readings of other nodes (OnRemoteBatch) need batch
	// messages, so "reading" alone turns that off.
	Layout string
	// Retain marks per-reading messages retained, so a new subscriber gets
	// each metric's last value at once. Batch messages are never retained.
	Retain bool
}

// CommandQueueConfig bounds queued commands for offline devices.
type CommandQueueConfig struct {
	// MaxPerDevice is how many commands may wait for one device; one more
	// is refused with error "queue_full". 16 is plenty for configuration
	// pushes and keeps a forgotten device from hoarding memory.
	MaxPerDevice int
	// MaxTotal bounds queued commands across all devices (each holds at
	// most a 32 KiB payload, so 10,000 is at most ~320 MiB and typically a
	// few MiB).
	MaxTotal int
	// MaxAge is how long a queued command waits; then it is answered with
	// error "expired". 1 h covers a reboot or a short outage, not a device
	// that comes back tomorrow to a stale order.
	MaxAge time.Duration
}

// Layouts.
const (
	LayoutBatch   = "batch"
	LayoutReading = "reading"
	LayoutBoth    = "both"
)

// DefaultConfig returns the defaults; the comments on Config say why.
func DefaultConfig() Config {
	return Config{
		Embedded:    EmbeddedConfig{Enabled: true, Listen: "127.0.0.1:1884"},
		TopicPrefix: "meridian",
		Telemetry:   TelemetryConfig{Layout: LayoutBatch},
		Format:      "json",
		QoS:         1,
		QueueSize:   10_000,
		CommandQueue: CommandQueueConfig{
			MaxPerDevice: 16,
			MaxTotal:     10_000,
			MaxAge:       time.Hour,
		},
		CommandTimeout:       10 * time.Second,
		KeepAlive:            30 * time.Second,
		WriteTimeout:         10 * time.Second,
		MaxReconnectInterval: 30 * time.Second,
		ShutdownGrace:        5 * time.Second,
	}
}

// Disabled reports whether the bridge is off: no external broker and the
// embedded one turned off. cmd then does not construct a Bridge.
func (c Config) Disabled() bool { return c.URL == "" && !c.Embedded.Enabled }

// embedded reports whether Run starts the in-process broker.
func (c Config) embedded() bool { return c.URL == "" && c.Embedded.Enabled }

// Validate reports the first invalid value, naming its config key.
func (c Config) Validate() error {
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		if err != nil || u.Host == "" || !validScheme(u.Scheme) {
			return fmt.Errorf("mqtt.url: must be tcp://, ssl://, tls://, mqtt://, mqtts://, ws:// or wss:// with a host, or empty for the embedded broker, got %q", redact.URL(c.URL))
		}
	}
	if c.embedded() {
		if err := listenaddr.Check(c.Embedded.Listen, `"127.0.0.1:1884" or ":1884"`); err != nil {
			return fmt.Errorf("mqtt.embedded.listen: %s, got %q", err, c.Embedded.Listen)
		}
	}
	type check struct {
		ok  bool
		key string
		val any
		why string
	}
	for _, ch := range []check{
		{validLevel(c.Node) || c.Node == "", "mqtt.node", c.Node, "must be one topic level without / + # and not starting with $"},
		{len(c.ClientID) <= 128, "mqtt.client_id", c.ClientID, "must be at most 128 bytes"},
		{validPrefix(c.TopicPrefix), "mqtt.topic_prefix", c.TopicPrefix, "must be non-empty topic levels without + # or empty levels, not starting with $ or /"},
		{c.Telemetry.Layout == LayoutBatch || c.Telemetry.Layout == LayoutReading || c.Telemetry.Layout == LayoutBoth, "mqtt.telemetry.layout", c.Telemetry.Layout, "must be batch, reading or both"},
		{c.Format == "json" || c.Format == "msgpack", "mqtt.format", c.Format, "must be json or msgpack"},
		{c.QoS >= 0 && c.QoS <= 2, "mqtt.qos", c.QoS, "must be 0, 1 or 2"},
		{c.QueueSize >= 1 && c.QueueSize <= 1_000_000, "mqtt.queue_size", c.QueueSize, "must be between 1 and 1000000"},
		{c.CommandQueue.MaxPerDevice >= 0, "mqtt.command_queue.max_per_device", c.CommandQueue.MaxPerDevice, "must be >= 0 (0 refuses queued commands)"},
		{c.CommandQueue.MaxTotal >= c.CommandQueue.MaxPerDevice, "mqtt.command_queue.max_total", c.CommandQueue.MaxTotal, fmt.Sprintf("must be >= mqtt.command_queue.max_per_device (%d)", c.CommandQueue.MaxPerDevice)},
		{c.CommandQueue.MaxAge >= time.Second, "mqtt.command_queue.max_age", c.CommandQueue.MaxAge, "must be at least 1s"},
		{c.CommandTimeout >= 100*time.Millisecond && c.CommandTimeout <= 5*time.Minute, "mqtt.command_timeout", c.CommandTimeout, "must be between 100ms and 5m"},
		{c.KeepAlive >= time.Second, "mqtt.keep_alive", c.KeepAlive, "must be at least 1s"},
		{c.WriteTimeout > 0, "mqtt.write_timeout", c.WriteTimeout, "must be > 0"},
		{c.MaxReconnectInterval >= time.Second, "mqtt.max_reconnect_interval", c.MaxReconnectInterval, "must be at least 1s"},
		{c.ShutdownGrace > 0, "mqtt.shutdown_grace", c.ShutdownGrace, "must be > 0"},
	} {
		if !ch.ok {
			if s, ok := ch.val.(string); ok {
				return fmt.Errorf("%s: %s, got %q", ch.key, ch.why, s)
			}
			return fmt.Errorf("%s: %s, got %v", ch.key, ch.why, ch.val)
		}
	}
	return nil
}

func validScheme(s string) bool {
	switch s {
	case "tcp", "ssl", "tls", "mqtt", "mqtts", "ws", "wss":
		return true
	}
	return false
}

// validLevel: one MQTT topic level that is safe to build topics from.
func validLevel(s string) bool {
	return s != "" && len(s) <= 128 && !strings.ContainsAny(s, "/+#\x00") && s[0] != '$'
}

func validPrefix(p string) bool {
	if p == "" || p[0] == '$' || len(p) > 256 {
		return false
	}
	for _, l := range strings.Split(p, "/") {
		if l == "" || strings.ContainsAny(l, "+#\x00") {
			return false
		}
	}
	return true
}
