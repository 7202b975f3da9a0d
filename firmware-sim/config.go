package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"time"
)

// Config describes a simulated fleet. Start from DefaultConfig; zero values
// mean what each field says.
type Config struct {
	// URL is the server's base URL (http:// or https://); the WebSocket URL
	// is derived from it (ws:// or wss:// + /v1/device).
	URL string
	// Devices is the fleet size; device i is Prefix + zero-padded i.
	Devices int
	Prefix  string
	// Seed makes signals, chaos and jitter reproducible (per device: Seed
	// mixed with the device id).
	Seed uint64
	// Ramp is how many devices start per second; 0 starts all at once.
	Ramp float64
	// Duration bounds generation; TotalReadings bounds it by count (0: no
	// bound). At least one of them must be set.
	Duration      time.Duration
	TotalReadings int64
	// Drain is how long devices keep connecting and resending after
	// generation stopped, to get their last batches acked.
	Drain time.Duration

	// Profiles names the sensor profiles devices draw from (empty: all).
	// Each device gets MixMin..MixMax distinct profiles.
	Profiles       []string
	MixMin, MixMax int
	// Speed multiplies every profile's sampling rate (1 = real rates; load
	// tests use 10 or 100).
	Speed float64
	// BatchSize overrides the profiles' batch sizes when > 0. A batch is
	// sent when it has this many readings or its oldest reading is
	// FlushEvery old.
	BatchSize  int
	FlushEvery time.Duration
	// HTTPShare is the share (0..1) of devices that use the HTTP fallback.
	HTTPShare float64
	// Ring is how many unacked batches a device keeps; when full it stops
	// sampling (protocol section 7.1). StateDir, when set, keeps each ring in
	// a file so a simulator restart resends what was not acked.
	Ring     int
	StateDir string
	// Verify keeps the ledger (about 40 bytes per reading sent) for Verify.
	Verify bool

	// Backoff for reconnects (full jitter); TryLater is the minimum wait
	// after a 1013 close or HTTP 429, Policy after a 1008 close.
	BackoffBase, BackoffMax time.Duration
	TryLater, Policy        time.Duration
	// WriteTimeout bounds one frame write; DialTimeout one handshake.
	WriteTimeout, DialTimeout time.Duration

	Chaos Chaos

	// ProgressEvery is the interval of the live progress line (0: none).
	ProgressEvery time.Duration

	Logger *slog.Logger
	// HTTPClient serves the HTTP fallback devices (nil: a client with a
	// pool sized for the fleet).
	HTTPClient *http.Client
}

// Chaos switches on failure injection; every field's zero value is off.
// "Every" fields are the mean time between events per device (exponentially
// distributed, so events do not line up across the fleet).
type Chaos struct {
	// DisconnectEvery: drop the TCP connection without a close frame.
	DisconnectEvery time.Duration
	// StallEvery: stop reading the socket (and answering pings) for
	// StallFor, as a device whose main loop hangs.
	StallEvery, StallFor time.Duration
	// ClockSkew: each device's clock is off by up to ±ClockSkew. It must stay
	// below the server's max_future, or readings would be rejected in ways
	// the ledger cannot predict.
	ClockSkew time.Duration
	// InvalidShare of devices put an invalid reading (NaN, Inf, bad metric
	// name) into about one batch in five; the server must reject them alone.
	InvalidShare float64
	// MalformedShare of devices send an undecodable frame every
	// MalformedEvery (expect close 1007 / HTTP 400, then reconnect).
	MalformedShare float64
	MalformedEvery time.Duration
	// RebootEvery: the device reboots, losing its seq counter, its pending
	// readings and (without StateDir) its ring.
	RebootEvery time.Duration
	// NaiveReboot restarts seq at hello.acked+1 after a reboot instead of
	// hello.acked+1+Ring as protocol section 7.2 recommends; the verifier
	// then has to resolve seqs that carry two different batches.
	NaiveReboot bool
}

// DefaultConfig is a small, real-rate fleet with chaos off.
func DefaultConfig() Config {
	return Config{
		URL:      "http://127.0.0.1:8470",
		Devices:  100,
		Prefix:   "sim-",
		Seed:     1,
		Ramp:     200,
		Duration: time.Minute,
		Drain:    30 * time.Second,
		MixMin:   1, MixMax: 3,
		Speed:      1,
		FlushEvery: 5 * time.Second,
		// 64 batches of a few readings: minutes of buffering at real rates,
		// a few KiB per device.
		Ring: 64,
		// Protocol section 7.4 suggests base 1 s, cap 60 s; the cap is lower
		// here so a test recovers quickly after a server restart.
		BackoffBase:   500 * time.Millisecond,
		BackoffMax:    15 * time.Second,
		TryLater:      30 * time.Second,
		Policy:        60 * time.Second,
		WriteTimeout:  10 * time.Second,
		DialTimeout:   10 * time.Second,
		ProgressEvery: time.Second,
		Chaos:         Chaos{StallFor: 5 * time.Second, MalformedEvery: 30 * time.Second},
	}
}

var prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,40}$`)

// Validate reports every invalid field, naming the flag-style key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key string, val any, why string) {
		errs = append(errs, fmt.Errorf("%s: %s, got %v", key, why, val))
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("url", c.URL, "must be an http:// or https:// base URL")
	}
	if c.Devices < 1 || c.Devices > 1_000_000 {
		bad("devices", c.Devices, "must be between 1 and 1000000")
	}
	if !prefixRE.MatchString(c.Prefix) {
		bad("prefix", c.Prefix, "must be 1-41 of [a-z0-9_.-] starting with a letter or digit (device ids are slugs)")
	}
	if c.Ramp < 0 {
		bad("ramp", c.Ramp, "must be >= 0")
	}
	if c.Duration <= 0 && c.TotalReadings <= 0 {
		bad("duration", c.Duration, "duration or total readings must be set")
	}
	if c.Drain < 0 {
		bad("drain", c.Drain, "must be >= 0")
	}
	if _, err := ResolveProfiles(c.Profiles); err != nil {
		bad("profiles", c.Profiles, err.Error())
	}
	if c.MixMin < 1 || c.MixMax < c.MixMin {
		bad("mix", fmt.Sprintf("%d..%d", c.MixMin, c.MixMax), "must be 1 <= min <= max")
	}
	if c.Speed <= 0 || c.Speed > 10_000 {
		bad("speed", c.Speed, "must be in (0, 10000]")
	}
	if c.BatchSize < 0 || c.BatchSize > 100_000 {
		bad("batch-size", c.BatchSize, "must be between 0 and 100000")
	}
	if c.FlushEvery <= 0 {
		bad("flush-every", c.FlushEvery, "must be > 0")
	}
	if c.HTTPShare < 0 || c.HTTPShare > 1 {
		bad("http-share", c.HTTPShare, "must be between 0 and 1")
	}
	if c.Ring < 1 || c.Ring > 100_000 {
		bad("ring", c.Ring, "must be between 1 and 100000")
	}
	if c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase {
		bad("backoff", fmt.Sprintf("%s..%s", c.BackoffBase, c.BackoffMax), "must be 0 < base <= max")
	}
	if c.TryLater < 0 || c.Policy < 0 || c.WriteTimeout <= 0 || c.DialTimeout <= 0 {
		bad("timeouts", fmt.Sprintf("try-later %s policy %s write %s dial %s", c.TryLater, c.Policy, c.WriteTimeout, c.DialTimeout), "must be positive")
	}
	ch := c.Chaos
	if ch.DisconnectEvery < 0 || ch.StallEvery < 0 || ch.RebootEvery < 0 || ch.MalformedEvery < 0 || ch.StallFor < 0 {
		bad("chaos", ch, "intervals must be >= 0")
	}
	if ch.StallEvery > 0 && ch.StallFor <= 0 {
		bad("chaos-stall-for", ch.StallFor, "must be > 0 when stalls are on")
	}
	if ch.MalformedShare > 0 && ch.MalformedEvery <= 0 {
		bad("chaos-malformed-every", ch.MalformedEvery, "must be > 0 when malformed frames are on")
	}
	if ch.ClockSkew < 0 || ch.ClockSkew > 30*time.Minute {
		bad("chaos-skew", ch.ClockSkew, "must be between 0 and 30m (below the server's max_future, 1h by default)")
	}
	if ch.InvalidShare < 0 || ch.InvalidShare > 1 || ch.MalformedShare < 0 || ch.MalformedShare > 1 {
		bad("chaos shares", fmt.Sprintf("invalid %v malformed %v", ch.InvalidShare, ch.MalformedShare), "must be between 0 and 1")
	}
	return errors.Join(errs...)
}

// DeviceID is the id of device i of a fleet with n devices.
func DeviceID(prefix string, i, n int) string {
	w := len(fmt.Sprint(n - 1))
	return fmt.Sprintf("%s%0*d", prefix, max(w, 1), i)
}

// DeviceIDs lists the fleet's device ids.
func (c Config) DeviceIDs() []string {
	ids := make([]string, c.Devices)
	for i := range ids {
		ids[i] = DeviceID(c.Prefix, i, c.Devices)
	}
	return ids
}
