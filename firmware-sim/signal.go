package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// day is the period of the daily cycle, in ms.
const day = 24 * 60 * 60 * 1000

// MetricSpec describes how one metric of a profile behaves.
type MetricSpec struct {
	Name string
	// Base is the level around which the signal moves; Jitter spreads it
	// per device (uniform ±Jitter) so a fleet does not report one number.
	Base, Jitter float64
	// Daily is the amplitude of the daily cycle (peak mid-afternoon device
	// time); negative values peak at night (humidity against temperature).
	Daily float64
	// Noise is the standard deviation of white noise per sample.
	Noise float64
	// Walk is the standard deviation of a random-walk step per sample
	// (pressure fronts); DriftPerHour a steady drift (sensor ageing,
	// battery discharge).
	Walk, DriftPerHour float64
	// SpikeProb is the chance per sample of a spike of size Spike.
	SpikeProb, Spike float64
	// Min and Max clamp the value when Max > Min.
	Min, Max float64
	// SwitchProb, when > 0, makes the metric binary (0/1) flipping with this
	// probability per sample (a door contact).
	SwitchProb float64
	// Digits rounds values to this many decimals (sensors have a resolution).
	Digits int
}

// Profile is a kind of sensor: its metrics, how often it samples and how
// many readings it puts in one batch.
type Profile struct {
	Name        string
	Metrics     []MetricSpec
	SampleEvery time.Duration
	BatchSize   int
}

// Profiles are the built-in sensor kinds, by name.
func Profiles() map[string]Profile {
	return map[string]Profile{
		"temperature": {Name: "temperature", SampleEvery: 10 * time.Second, BatchSize: 6, Metrics: []MetricSpec{
			{Name: "temp", Base: 21, Jitter: 3, Daily: 3, Noise: 0.15, DriftPerHour: 0.01, SpikeProb: 0.002, Spike: 12, Min: -40, Max: 125, Digits: 2},
		}},
		"humidity": {Name: "humidity", SampleEvery: 30 * time.Second, BatchSize: 4, Metrics: []MetricSpec{
			{Name: "humidity", Base: 45, Jitter: 10, Daily: -8, Noise: 0.8, SpikeProb: 0.001, Spike: 25, Min: 0, Max: 100, Digits: 1},
		}},
		"pressure": {Name: "pressure", SampleEvery: time.Minute, BatchSize: 5, Metrics: []MetricSpec{
			{Name: "pressure", Base: 1013, Jitter: 8, Daily: 1.2, Noise: 0.1, Walk: 0.08, Min: 900, Max: 1100, Digits: 1},
		}},
		"battery": {Name: "battery", SampleEvery: 5 * time.Minute, BatchSize: 1, Metrics: []MetricSpec{
			{Name: "battery.pct", Base: 90, Jitter: 10, Noise: 0.05, DriftPerHour: -0.05, Min: 0, Max: 100, Digits: 1},
			{Name: "battery.v", Base: 3.9, Jitter: 0.2, Noise: 0.005, DriftPerHour: -0.002, Min: 3.0, Max: 4.2, Digits: 3},
		}},
		"vibration": {Name: "vibration", SampleEvery: time.Second, BatchSize: 50, Metrics: []MetricSpec{
			{Name: "vibration.rms", Base: 2, Jitter: 1, Daily: 1, Noise: 0.4, SpikeProb: 0.01, Spike: 18, Min: 0, Max: 100, Digits: 3},
		}},
		"door": {Name: "door", SampleEvery: 5 * time.Second, BatchSize: 12, Metrics: []MetricSpec{
			{Name: "door.open", SwitchProb: 0.03},
		}},
	}
}

// ProfileNames lists the built-in profiles in a stable order.
func ProfileNames() []string {
	var names []string
	for n := range Profiles() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ResolveProfiles maps names to profiles; empty means all of them.
func ResolveProfiles(names []string) ([]Profile, error) {
	all := Profiles()
	if len(names) == 0 {
		names = ProfileNames()
	}
	out := make([]Profile, 0, len(names))
	for _, n := range names {
		p, ok := all[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("unknown profile %q (have %s)", n, strings.Join(ProfileNames(), ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

// series is one metric of one device: its schedule and its state.
type series struct {
	spec   *MetricSpec
	period int64 // ms between samples
	next   int64 // device-clock ms of the next sample
	lastT  int64 // last t used: t strictly increases per metric
	base   float64
	level  float64 // walk, drift and binary state
	phase  float64 // shifts the daily peak per device (fraction of a day)
}

// Signals generates one device's readings. It is deterministic: the same
// profiles, seed, start and sample times give the same readings. It is owned
// by one goroutine.
type Signals struct {
	rng    *rand.Rand
	series []series
}

// NewSignals builds the generator for a device with the given profiles,
// first sample at start (device-clock ms) and sampling sped up by speed
// (1 = the profiles' real rates).
func NewSignals(profiles []Profile, seed uint64, start int64, speed float64) *Signals {
	if speed <= 0 {
		speed = 1
	}
	s := &Signals{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	for pi := range profiles {
		p := &profiles[pi]
		period := int64(float64(p.SampleEvery.Milliseconds()) / speed)
		if period < 1 {
			period = 1
		}
		for mi := range p.Metrics {
			m := &p.Metrics[mi]
			base := m.Base + (s.rng.Float64()*2-1)*m.Jitter
			// Spread first samples over one period so a fleet started at
			// once does not sample in lock-step.
			first := start + s.rng.Int64N(period)
			s.series = append(s.series, series{spec: m, period: period, next: first, lastT: first - 1,
				base: base, phase: s.rng.Float64() * 0.1})
		}
	}
	return s
}

// NextDue is the device-clock time of the earliest pending sample.
func (s *Signals) NextDue() int64 {
	due := int64(math.MaxInt64)
	for i := range s.series {
		due = min(due, s.series[i].next)
	}
	return due
}

// Sample appends the readings due at device-clock time now to out, at most
// limit of them (0: no limit), and returns out. A device that fell far
// behind (stalled, paused by a full ring) skips missed samples beyond a few
// periods, like a sensor that was not polled.
func (s *Signals) Sample(now int64, out wire.Readings, limit int) wire.Readings {
	for i := range s.series {
		sr := &s.series[i]
		if now-sr.next > 4*sr.period {
			sr.next = now - (now-sr.next)%sr.period
		}
		for sr.next <= now {
			if limit > 0 && len(out) >= limit {
				return out
			}
			t := max(sr.next, sr.lastT+1)
			sr.lastT = t
			sr.next += sr.period
			out = append(out, wire.Reading{T: t, HasT: true, Metric: sr.spec.Name, Value: s.value(sr, t)})
		}
	}
	return out
}

// Invalid returns a reading the server must reject, taking a fresh t of one
// of the device's metrics so (metric, t) stays unique per device even for
// readings that are never stored.
func (s *Signals) Invalid(now int64) wire.Reading {
	sr := &s.series[s.rng.IntN(len(s.series))]
	t := max(now, sr.lastT+1)
	sr.lastT = t
	switch s.rng.IntN(3) {
	case 0:
		return wire.Reading{T: t, HasT: true, Metric: sr.spec.Name, Value: math.NaN()}
	case 1:
		return wire.Reading{T: t, HasT: true, Metric: sr.spec.Name, Value: math.Inf(1)}
	default:
		return wire.Reading{T: t, HasT: true, Metric: sr.spec.Name + " bad!", Value: 1}
	}
}

// Metrics lists the metric names this device reports.
func (s *Signals) Metrics() []string {
	var out []string
	for i := range s.series {
		out = append(out, s.series[i].spec.Name)
	}
	return slices.Compact(out)
}

func (s *Signals) value(sr *series, t int64) float64 {
	m := sr.spec
	if m.SwitchProb > 0 {
		if s.rng.Float64() < m.SwitchProb {
			sr.level = 1 - sr.level
		}
		return sr.level
	}
	hours := float64(sr.period) / 3_600_000
	sr.level += m.DriftPerHour * hours
	if m.Walk > 0 {
		sr.level += s.rng.NormFloat64() * m.Walk
	}
	// Peak at 15:00 (device clock, UTC) shifted per device.
	frac := float64(t%day)/day - 15.0/24 + sr.phase
	v := sr.base + sr.level + m.Daily*math.Cos(2*math.Pi*frac) + s.rng.NormFloat64()*m.Noise
	if m.SpikeProb > 0 && s.rng.Float64() < m.SpikeProb {
		v += m.Spike
	}
	if m.Max > m.Min {
		v = min(max(v, m.Min), m.Max)
	}
	p := math.Pow(10, float64(m.Digits))
	return math.Round(v*p) / p
}

// validReading reports whether the server's per-reading rules (other than
// the time window) accept r: the simulator predicts every rejection so the
// ledger knows exactly which readings must be absent from the store.
func validReading(r *wire.Reading) bool {
	return r.Err == "" && wire.ValidMetric(r.Metric) && !math.IsNaN(r.Value) && !math.IsInf(r.Value, 0)
}
