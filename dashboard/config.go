package dashboard

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the dashboard's section of the server configuration
// (`dashboard.*`). A zero Config is not valid; start from DefaultConfig.
type Config struct {
	// Enabled mounts the pages and /v1/live. When false cmd does not build
	// the dashboard at all (devices and the APIs are unaffected).
	Enabled bool
	// AllowedOrigins lists extra browser origins ("https://ops.example.com")
	// allowed to open /v1/live and to post the login and command forms.
	// Empty means same host only: the Origin's host must equal the request's
	// Host, which is what a page served by this server sends.
	AllowedOrigins []string
	// SessionTTL is how long a login lasts without being renewed; every
	// request renews it. Sessions are in memory: a restart logs everyone out.
	SessionTTL time.Duration
	// MaxUpdatesPerSecond caps live updates per series per client. Readings
	// arriving faster are coalesced into one update that keeps the window's
	// min, max, last and count, so a spike between two updates still shows.
	MaxUpdatesPerSecond int
	// ClientQueue is the number of encoded live messages that may wait for
	// one client's socket. Past half of it the client is downsampled; full
	// for slowClientGrace it is disconnected.
	ClientQueue int
	// HistoryInterval is how often the server's own metrics are sampled
	// for the system page's 15-minute charts (a bounded in-memory ring of
	// 15m/HistoryInterval samples).
	HistoryInterval time.Duration
}

// DefaultConfig is the configuration `meridian serve` starts from.
func DefaultConfig() Config {
	return Config{
		Enabled: true,
		// 12 h covers a working shift; an idle tab is logged out overnight.
		SessionTTL: 12 * time.Hour,
		// 10/s per series is smoother than the eye needs on a chart 1000 px
		// wide showing 15 min (one pixel ≈ 1 s), and bounds a client watching
		// one device with 20 metrics at 200 updates/s whatever the device
		// sends.
		MaxUpdatesPerSecond: 10,
		// One message carries every series due at a flush (the hub flushes
		// at most every 25 ms), so 256 messages is ≥ 6 s of backlog at full
		// rate: plenty for a tab that was briefly busy, small enough
		// (a few hundred KiB) to bound memory per client.
		ClientQueue: 256,
		// 5 s: 180 points over 15 minutes, enough for a chart a few hundred
		// pixels wide; one Gather of the registry costs well under a
		// millisecond of CPU every 5 s.
		HistoryInterval: 5 * time.Second,
	}
}

// Limits of the accepted values; beyond them a setting is almost certainly a
// typo (ms for s) and would hurt the server.
const (
	maxUpdatesPerSecond = 1000
	maxClientQueue      = 1 << 16
)

// Validate checks every field and reports all problems at once, each naming
// its key and the bad value.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("dashboard.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.SessionTTL < time.Minute {
		bad("session_ttl", "must be >= 1m, got %s", c.SessionTTL)
	}
	if c.SessionTTL > 30*24*time.Hour {
		bad("session_ttl", "must be <= 720h, got %s", c.SessionTTL)
	}
	if c.MaxUpdatesPerSecond < 1 || c.MaxUpdatesPerSecond > maxUpdatesPerSecond {
		bad("max_updates_per_second", "must be between 1 and %d, got %d", maxUpdatesPerSecond, c.MaxUpdatesPerSecond)
	}
	if c.ClientQueue < 1 || c.ClientQueue > maxClientQueue {
		if c.ClientQueue < 1 {
			bad("client_queue", "must be >= 1, got %d", c.ClientQueue)
		} else {
			bad("client_queue", "must be <= %d, got %d", maxClientQueue, c.ClientQueue)
		}
	}
	if c.HistoryInterval < 100*time.Millisecond || c.HistoryInterval > time.Minute {
		bad("history_interval", "must be between 100ms and 1m, got %s", c.HistoryInterval)
	}
	for i, o := range c.AllowedOrigins {
		if _, err := parseOrigin(o); err != nil {
			bad(fmt.Sprintf("allowed_origins[%d]", i), "%v, got %q", err, o)
		}
	}
	return errors.Join(errs...)
}

// parseOrigin normalises an origin "scheme://host[:port]" for comparison.
func parseOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("must be an origin like https://ops.example.com")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", errors.New("must be an origin like https://ops.example.com (scheme and host, no path)")
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}
