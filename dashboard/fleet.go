package dashboard

import (
	"maps"
	"math"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

const (
	// maxFleetDevices bounds the stats map. Only authenticated devices
	// publish, so this is a guard against a misbehaving bridge peer rather
	// than a limit a real fleet meets; beyond it new devices are not tracked.
	maxFleetDevices = 200_000
	// maxLatestMetrics bounds the latest-value map of one device.
	maxLatestMetrics = 128
	// rateTau is the EWMA time constant of readings/s: a rate change shows
	// within a few seconds, a single batch does not make the number jump.
	rateTau = 5 * time.Second
	// onlineWindow: a device for which no presence was ever reported here
	// (HTTP fallback, or connected to another node) counts as online while
	// its last batch is this recent.
	onlineWindow = 2 * time.Minute
)

// Latest is a metric's most recent reading.
type Latest struct {
	T int64   `json:"t"` // Unix ms
	V float64 `json:"v"`
}

// LiveStats is what the hub knows about one device: what the fleet overview
// and the device page show next to the registry record.
type LiveStats struct {
	Online   bool              `json:"online"`
	LastSeen int64             `json:"last_seen,omitempty"` // Unix ms of the last committed batch
	Rate     float64           `json:"rate"`                // readings/s, EWMA
	Latest   map[string]Latest `json:"latest"`
	// Acked is the highest seq committed since this server started (0:
	// none); the registry's acked_seq is read only when a page loads.
	Acked uint64 `json:"acked,omitempty"`
	// SessionReadings counts readings committed since the device's current
	// session came online (reported through Presence): the running count
	// of an open session, whose stored record is written only at close.
	SessionReadings int64 `json:"session_readings"`
	SessionSince    int64 `json:"session_since,omitempty"` // Unix ms the session came online
}

type deviceStats struct {
	presenceKnown bool
	online        bool
	lastSeen      int64
	pending       int64 // readings since the last tick
	rate          float64
	latest        map[string]Latest
	acked         uint64
	sessReadings  int64
	sessSince     int64
}

// fleet holds per-device live stats in memory, bounded by device count.
// The hub goroutine writes; HTTP handlers read under the RWMutex.
type fleet struct {
	now func() time.Time

	mu        sync.RWMutex
	devices   map[string]*deviceStats
	lastTick  time.Time
	pending   int64
	rate      float64 // all devices, readings/s
	untracked int64
}

func newFleet(now func() time.Time) *fleet {
	return &fleet{now: now, devices: make(map[string]*deviceStats), lastTick: now()}
}

func (f *fleet) get(id string) *deviceStats {
	d := f.devices[id]
	if d == nil {
		if len(f.devices) >= maxFleetDevices {
			f.untracked++
			return nil
		}
		d = &deviceStats{latest: make(map[string]Latest)}
		f.devices[id] = d
	}
	return d
}

func (f *fleet) observe(b telemetry.Batch, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending += int64(len(b.Readings))
	d := f.get(b.Device)
	if d == nil {
		return
	}
	d.lastSeen = now.UnixMilli()
	d.pending += int64(len(b.Readings))
	d.sessReadings += int64(len(b.Readings))
	d.acked = max(d.acked, b.Seq)
	for _, r := range b.Readings {
		l, ok := d.latest[r.Metric]
		if !ok && len(d.latest) >= maxLatestMetrics {
			continue
		}
		if !ok || r.Time >= l.T {
			d.latest[r.Metric] = Latest{T: r.Time, V: r.Value}
		}
	}
}

func (f *fleet) presence(p telemetry.Presence) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.get(p.Device)
	if d == nil {
		return
	}
	if p.Online {
		// Every online event is a new session (a takeover sends no offline
		// for the old one): its running count starts here.
		d.sessReadings, d.sessSince = 0, p.At
	}
	d.presenceKnown, d.online = true, p.Online
	if p.Online && p.At > d.lastSeen {
		d.lastSeen = p.At
	}
}

// tick folds the readings counted since the last tick into the EWMAs.
func (f *fleet) tick(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	dt := now.Sub(f.lastTick)
	if dt <= 0 {
		return
	}
	f.lastTick = now
	alpha := 1 - math.Exp(-float64(dt)/float64(rateTau))
	sec := dt.Seconds()
	f.rate += alpha * (float64(f.pending)/sec - f.rate)
	f.pending = 0
	for _, d := range f.devices {
		if d.pending == 0 && d.rate == 0 {
			continue
		}
		d.rate += alpha * (float64(d.pending)/sec - d.rate)
		if d.rate < 0.001 {
			d.rate = 0
		}
		d.pending = 0
	}
}

func (f *fleet) stats(id string) (LiveStats, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	d := f.devices[id]
	if d == nil {
		return LiveStats{Latest: map[string]Latest{}}, false
	}
	return LiveStats{
		Online: d.isOnline(f.now()), LastSeen: d.lastSeen, Rate: round2(d.rate), Latest: maps.Clone(d.latest),
		Acked: d.acked, SessionReadings: d.sessReadings, SessionSince: d.sessSince,
	}, true
}

// isOnline: presence when reported, else a recent batch.
func (d *deviceStats) isOnline(now time.Time) bool {
	if d.presenceKnown {
		return d.online
	}
	return d.lastSeen > 0 && now.Sub(time.UnixMilli(d.lastSeen)) < onlineWindow
}

// brief is the part of a device's stats the fleet list sorts and filters
// on, without copying the latest values.
type brief struct {
	online   bool
	lastSeen int64
	rate     float64
}

// briefs returns the sort/filter fields of every tracked device under one
// read lock, so a fleet page costs one lock for 10,000 devices.
func (f *fleet) briefs() map[string]brief {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := f.now()
	out := make(map[string]brief, len(f.devices))
	for id, d := range f.devices {
		out[id] = brief{online: d.isOnline(now), lastSeen: d.lastSeen, rate: round2(d.rate)}
	}
	return out
}

func (f *fleet) latest(id string) map[string]Latest {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if d := f.devices[id]; d != nil {
		return maps.Clone(d.latest)
	}
	return nil
}

// totals: ingest rate (readings/s) and devices online.
func (f *fleet) totals() (rate float64, tracked, online int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := f.now()
	for _, d := range f.devices {
		if d.isOnline(now) {
			online++
		}
	}
	return round2(f.rate), len(f.devices), online
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
