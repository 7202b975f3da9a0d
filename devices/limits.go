package devices

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// maxLimiters bounds each limiter map. An entry is ~200 bytes, so 2^17
	// entries is ~25 MiB at worst, and it covers a fleet of 100k devices
	// connecting at once. Past it the least recently used entry is dropped;
	// that only forgets a rate history, it never refuses anyone.
	maxLimiters = 1 << 17
	// sweepEvery is how often idle entries are dropped even when the map is
	// not full, so memory follows the active set rather than the churn.
	sweepEvery = time.Minute
)

// limiterSet is a bounded map of token buckets keyed by device id or remote
// address. An entry whose bucket has refilled completely is indistinguishable
// from a new one, so dropping it loses nothing: that is the eviction rule.
type limiterSet struct {
	limit rate.Limit
	burst int
	max   int

	mu        sync.Mutex
	m         map[string]*limEntry
	lastSweep time.Time
}

type limEntry struct {
	lim  *rate.Limiter
	used time.Time
}

func newLimiterSet(limit rate.Limit, burst, max int) *limiterSet {
	if burst < 1 {
		burst = 1
	}
	return &limiterSet{limit: limit, burst: burst, max: max, m: make(map[string]*limEntry)}
}

// get returns key's limiter, creating it (and sweeping) as needed.
func (ls *limiterSet) get(key string, now time.Time) *rate.Limiter {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if e, ok := ls.m[key]; ok {
		e.used = now
		return e.lim
	}
	if len(ls.m) >= ls.max || now.Sub(ls.lastSweep) >= sweepEvery {
		ls.sweep(now)
	}
	if len(ls.m) >= ls.max {
		ls.evictOldest()
	}
	e := &limEntry{lim: rate.NewLimiter(ls.limit, ls.burst), used: now}
	ls.m[key] = e
	return e.lim
}

// allow takes one token from key's bucket.
func (ls *limiterSet) allow(key string, now time.Time) bool {
	return ls.get(key, now).AllowN(now, 1)
}

func (ls *limiterSet) forget(key string) {
	ls.mu.Lock()
	delete(ls.m, key)
	ls.mu.Unlock()
}

func (ls *limiterSet) len() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return len(ls.m)
}

// sweep drops every entry whose bucket is full again. Called with mu held.
func (ls *limiterSet) sweep(now time.Time) {
	ls.lastSweep = now
	for k, e := range ls.m {
		if e.lim.TokensAt(now) >= float64(ls.burst) {
			delete(ls.m, k)
		}
	}
}

// evictOldest drops the least recently used entry. O(n), but only reached
// when more than max keys were active within one refill period.
func (ls *limiterSet) evictOldest() {
	var oldest string
	var at time.Time
	for k, e := range ls.m {
		if oldest == "" || e.used.Before(at) {
			oldest, at = k, e.used
		}
	}
	delete(ls.m, oldest)
}

// AllowConnect reports whether device may make another connection attempt
// now (Config.ConnectPerMinute). Call it before authenticating, keyed by the
// device id the client claims, so a reconnect loop costs no token lookup.
func (s *Service) AllowConnect(device string) bool {
	return s.connect.allow(device, s.now())
}

// ReadingLimiter returns device's readings-per-second token bucket (burst
// 2 x Config.ReadingsPerSecond). The caller takes len(readings) tokens per
// batch (AllowN, or ReserveN to compute the pause). Fetching it once per
// session or once per batch both work: an entry is only evicted when full,
// and a new one is then equivalent.
func (s *Service) ReadingLimiter(device string) *rate.Limiter {
	return s.readings.get(device, s.now())
}

// AllowReadings reports whether device may submit n more readings now and,
// if so, takes n tokens (it satisfies ingest.Limiter together with
// AllowConnect). A batch larger than the burst could never pass a plain
// token bucket and the device would resend it forever, so such a batch is
// let through when the bucket is full and drains it: the device then waits a
// whole refill, overshooting the rate by at most one batch per refill.
func (s *Service) AllowReadings(device string, n int) bool {
	now := s.now()
	lim := s.ReadingLimiter(device)
	if n > lim.Burst() {
		if lim.TokensAt(now) < float64(lim.Burst()) {
			return false
		}
		return lim.AllowN(now, lim.Burst())
	}
	return lim.AllowN(now, n)
}
