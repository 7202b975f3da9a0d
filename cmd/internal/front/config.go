package front

import (
	"fmt"

	"github.com/meridian-iot/meridian/internal/listenaddr"
)

// Config is the front door's part of the server configuration (server.*):
// where it listens, whose X-Forwarded-For it believes, TLS and the HTTP
// deadlines. cmd embeds it in its ServerConfig, so its keys stay
// server.listen, server.trusted_proxies, server.tls.* and server.http.*.
type Config struct {
	// Listen is the HTTP listen address for devices, operators and metrics.
	Listen string
	// TrustedProxies lists the addresses or CIDR prefixes of reverse proxies
	// whose X-Forwarded-For header is believed. Empty trusts nobody, so a
	// client cannot spoof its address by sending the header itself.
	TrustedProxies []string
	// TLS makes the server speak HTTPS/WSS itself.
	TLS TLSConfig
	// HTTP bounds idle, slow and never-finishing clients.
	HTTP HTTPConfig
}

// DefaultListen is port 8470: unassigned by IANA and clear of the services
// this kind of host runs (PostgreSQL 5432, MQTT 1883, MySQL 3306, NATS 4222,
// AMQP 5672, Redis 6379). All interfaces, because the server exists to be
// reached by devices on the LAN; every endpoint except /healthz and /readyz
// authenticates, so binding wide does not expose data.
const DefaultListen = ":8470"

// DefaultConfig listens on DefaultListen, in plain HTTP (TLS is for edge
// hosts without a proxy), trusting no proxy.
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, HTTP: DefaultHTTPConfig()}
}

// Validate reports the first bad value as "key: why, got value".
func (c Config) Validate() error {
	if err := listenaddr.Check(c.Listen, `":8470" or "127.0.0.1:8470"`); err != nil {
		return fmt.Errorf("server.listen: %s, got %q", err, c.Listen)
	}
	if err := c.TLS.Validate(); err != nil {
		return err
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	for _, p := range c.TrustedProxies {
		if _, err := parseProxy(p); err != nil {
			return fmt.Errorf("server.trusted_proxies: must be IP addresses or CIDR prefixes, got %q", p)
		}
	}
	return nil
}
