package devices

import (
	"fmt"
	"regexp"
	"time"
)

// Config holds the registry settings; cmd maps them to keys under "devices.".
// Start from DefaultConfig. For the rate fields zero means "use the default",
// so a partially filled Config is still safe; TokenGrace zero means rotated-out
// tokens stop working at once.
type Config struct {
	// TokenGrace is how long a device's previous token keeps working after a
	// rotation. 24 h lets a device that is asleep or offline at rotation time
	// wake up, connect with the old token and be given the new one out of band
	// (firmware update, config push) without an operator racing the clock.
	TokenGrace time.Duration

	Provisioning struct {
		// Key is the shared secret a device presents to POST /v1/provision to
		// exchange its id for a token. Empty turns provisioning off (the
		// endpoint answers 404), which is the secure default.
		Key string
		// AllowReprovision lets an already registered id be provisioned again
		// (a reflashed device); its old tokens are revoked and its live session
		// kicked. Off by default: otherwise anyone holding the fleet key could
		// take over any device id.
		AllowReprovision bool
		// RatePerMinute limits provisioning attempts per remote address. 10 a
		// minute is plenty for a device retrying at boot and makes guessing the
		// key over the network hopeless.
		RatePerMinute int
	}

	// AdminKey is an operator key given in config or env. When set it is
	// registered as an admin key at start (see EnsureAdminKey) instead of a
	// generated one being printed. It must look like "mak_" followed by at
	// least 32 characters of [A-Za-z0-9_-], e.g. "mak_$(openssl rand -hex 32)".
	AdminKey string

	// ConnectPerMinute limits connection attempts per device (token bucket,
	// burst the same). 30 a minute allows a device with a flaky link to
	// reconnect every two seconds while stopping a reconnect loop from
	// costing a handshake and a token lookup many times a second.
	ConnectPerMinute int

	// ReadingsPerSecond limits readings per device; the burst is twice that so
	// a device flushing an offline buffer in maximal batches is not cut off at
	// once. 1000/s is far above a sensor's normal rate and well below what one
	// device could take from the shared write path.
	ReadingsPerSecond float64
}

// Defaults; the comments on Config say why.
const (
	defaultTokenGrace        = 24 * time.Hour
	defaultProvisionPerMin   = 10
	defaultConnectPerMinute  = 30
	defaultReadingsPerSecond = 1000
)

// DefaultConfig returns the defaults: provisioning off, no preset admin key.
func DefaultConfig() Config {
	var c Config
	c.TokenGrace = defaultTokenGrace
	c.Provisioning.RatePerMinute = defaultProvisionPerMin
	c.ConnectPerMinute = defaultConnectPerMinute
	c.ReadingsPerSecond = defaultReadingsPerSecond
	return c
}

// withDefaults fills zero rate fields, so NewService never builds a limiter
// that refuses everything.
func (c Config) withDefaults() Config {
	if c.Provisioning.RatePerMinute == 0 {
		c.Provisioning.RatePerMinute = defaultProvisionPerMin
	}
	if c.ConnectPerMinute == 0 {
		c.ConnectPerMinute = defaultConnectPerMinute
	}
	if c.ReadingsPerSecond == 0 {
		c.ReadingsPerSecond = defaultReadingsPerSecond
	}
	return c
}

// minProvisioningKey is the shortest provisioning key accepted: 16 characters
// of a random string are ~80+ bits, beyond online guessing at RatePerMinute.
const minProvisioningKey = 16

var adminKeyRe = regexp.MustCompile(`^mak_[A-Za-z0-9_-]{32,200}$`)

// Validate reports the first invalid value, naming its config key. Secrets
// are never echoed, only their length.
func (c Config) Validate() error {
	type check struct {
		ok  bool
		key string
		val any
		why string
	}
	for _, ch := range []check{
		{c.TokenGrace >= 0, "devices.token_grace", c.TokenGrace, "must be >= 0"},
		{c.Provisioning.Key == "" || len(c.Provisioning.Key) >= minProvisioningKey, "devices.provisioning.key",
			fmt.Sprintf("%d characters", len(c.Provisioning.Key)), fmt.Sprintf("must be empty (provisioning off) or at least %d characters", minProvisioningKey)},
		{c.Provisioning.RatePerMinute >= 0, "devices.provisioning.rate_per_minute", c.Provisioning.RatePerMinute, "must be >= 0 (0 means the default, 10)"},
		{c.AdminKey == "" || adminKeyRe.MatchString(c.AdminKey), "devices.admin_key",
			fmt.Sprintf("%d characters", len(c.AdminKey)), `must be empty or "mak_" followed by 32-200 characters of [A-Za-z0-9_-]`},
		{c.ConnectPerMinute >= 0, "devices.connect_per_minute", c.ConnectPerMinute, "must be >= 0 (0 means the default, 30)"},
		{c.ReadingsPerSecond >= 0, "devices.readings_per_second", c.ReadingsPerSecond, "must be >= 0 (0 means the default, 1000)"},
	} {
		if !ch.ok {
			return fmt.Errorf("%s: %s, got %v", ch.key, ch.why, ch.val)
		}
	}
	return nil
}
