package bridge

import (
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if DefaultConfig().Disabled() {
		t.Fatal("default config must run the embedded broker")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"qos", func(c *Config) { c.QoS = 3 }, "mqtt.qos: must be 0, 1 or 2, got 3"},
		{"url scheme", func(c *Config) { c.URL = "http://x:1883" }, `mqtt.url: must be tcp://, ssl://, tls://, mqtt://, mqtts://, ws:// or wss:// with a host, or empty for the embedded broker, got "http://x:1883"`},
		{"url password masked", func(c *Config) { c.URL = "http://u:secret@x" }, `mqtt.url: must be tcp://, ssl://, tls://, mqtt://, mqtts://, ws:// or wss:// with a host, or empty for the embedded broker, got "http://u:***@x"`},
		{"listen", func(c *Config) { c.Embedded.Listen = "1884" }, `mqtt.embedded.listen: must be host:port such as "127.0.0.1:1884" or ":1884", got "1884"`},
		{"listen ignored with url", func(c *Config) { c.URL = "tcp://b:1883"; c.Embedded.Listen = "bad" }, ""},
		{"prefix wildcard", func(c *Config) { c.TopicPrefix = "a/+" }, `mqtt.topic_prefix: must be non-empty topic levels without + # or empty levels, not starting with $ or /, got "a/+"`},
		{"prefix empty level", func(c *Config) { c.TopicPrefix = "a//b" }, `mqtt.topic_prefix: must be non-empty topic levels without + # or empty levels, not starting with $ or /, got "a//b"`},
		{"prefix sys", func(c *Config) { c.TopicPrefix = "$SYS" }, `mqtt.topic_prefix: must be non-empty topic levels without + # or empty levels, not starting with $ or /, got "$SYS"`},
		{"prefix nested ok", func(c *Config) { c.TopicPrefix = "site/meridian" }, ""},
		{"node slash", func(c *Config) { c.Node = "a/b" }, `mqtt.node: must be one topic level without / + # and not starting with $, got "a/b"`},
		{"layout", func(c *Config) { c.Telemetry.Layout = "row" }, `mqtt.telemetry.layout: must be batch, reading or both, got "row"`},
		{"format", func(c *Config) { c.Format = "cbor" }, `mqtt.format: must be json or msgpack, got "cbor"`},
		{"queue size", func(c *Config) { c.QueueSize = 0 }, "mqtt.queue_size: must be between 1 and 1000000, got 0"},
		{"per device", func(c *Config) { c.CommandQueue.MaxPerDevice = -1 }, "mqtt.command_queue.max_per_device: must be >= 0 (0 refuses queued commands), got -1"},
		{"total", func(c *Config) { c.CommandQueue.MaxTotal = 3 }, "mqtt.command_queue.max_total: must be >= mqtt.command_queue.max_per_device (16), got 3"},
		{"age", func(c *Config) { c.CommandQueue.MaxAge = time.Millisecond }, "mqtt.command_queue.max_age: must be at least 1s, got 1ms"},
		{"timeout", func(c *Config) { c.CommandTimeout = 0 }, "mqtt.command_timeout: must be between 100ms and 5m, got 0s"},
		{"keepalive", func(c *Config) { c.KeepAlive = 0 }, "mqtt.keep_alive: must be at least 1s, got 0s"},
		{"grace", func(c *Config) { c.ShutdownGrace = 0 }, "mqtt.shutdown_grace: must be > 0, got 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Validate() = %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestDisabled(t *testing.T) {
	c := DefaultConfig()
	c.Embedded.Enabled = false
	if !c.Disabled() {
		t.Fatal("no URL and embedded off must disable the bridge")
	}
	c.URL = "tcp://broker:1883"
	if c.Disabled() || c.embedded() {
		t.Fatal("with a URL the bridge runs without the embedded broker")
	}
	if _, err := New(DefaultConfig(), nil, Options{}); err == nil {
		t.Fatal("New without Devices must fail")
	}
}
