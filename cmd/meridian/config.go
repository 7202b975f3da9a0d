package main

import (
	"fmt"
	"strings"

	"github.com/meridian-iot/meridian/bridge"
	"github.com/meridian-iot/meridian/cmd/internal/front"
	"github.com/meridian-iot/meridian/dashboard"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/storage/backend"
)

// Config is the whole configuration of the meridian binary. Each package owns
// its sub-struct, its defaults and its Validate; this type only composes them.
// Every leaf field has exactly one entry in the settings table (settings.go),
// which maps it to a config key, an env var and a description.
type Config struct {
	Server    ServerConfig
	Ingest    ingest.Config
	Storage   backend.Config
	Devices   devices.Config
	MQTT      bridge.Config
	Dashboard dashboard.Config
}

// ServerConfig is what the process itself needs: the HTTP front door (its
// listen address, trusted proxies, TLS and deadlines: front.Config, whose
// fields read as Server.Listen and so on), where to keep state, and how to
// log.
type ServerConfig struct {
	front.Config
	// DataDir holds the embedded database and other local state.
	DataDir string
	// LogFormat is "text" or "json".
	LogFormat string
	// LogLevel is "debug", "info", "warn" or "error".
	LogLevel string
	Metrics  MetricsConfig
}

// MetricsConfig controls /metrics.
type MetricsConfig struct {
	// Open serves /metrics without operator authentication. Off by default:
	// metrics reveal device counts and traffic, and the port faces devices.
	Open bool
}

// DefaultConfig is the configuration with nothing set: a working server on
// the embedded store.
func DefaultConfig() Config {
	return Config{
		Server: ServerConfig{
			Config:    front.DefaultConfig(),
			DataDir:   "./meridian-data",
			LogFormat: "text",
			LogLevel:  "info",
		},
		Ingest:    ingest.DefaultConfig(),
		Storage:   backend.DefaultConfig(),
		Devices:   devices.DefaultConfig(),
		MQTT:      bridge.DefaultConfig(),
		Dashboard: dashboard.DefaultConfig(),
	}
}

// Validate reports the first invalid value as "key: why, got value".
func (c Config) Validate() error {
	for _, check := range []func() error{
		c.Server.validate,
		c.Ingest.Validate,
		func() error { return firstError(c.Storage.Validate()) },
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
	if err := s.Config.Validate(); err != nil {
		return err
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
	return nil
}

// firstError keeps the first of joined errors: a config error is one line.
func firstError(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		return j.Unwrap()[0]
	}
	return err
}
