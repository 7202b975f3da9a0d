package dashboard

import (
	"context"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// BuildInfo is what the system page says about this server process.
type BuildInfo struct {
	Version string // release version ("dev" for a plain build)
	Commit  string // VCS revision, "" when unknown
	Node    string // this node's name (ingest.node)
}

// StorageInfo is what the system page says about storage.
type StorageInfo struct {
	Backend   string `json:"backend"`              // "sqlite" or "postgres"
	Mode      string `json:"mode"`                 // storage.Mode*, or "pending" before migration
	SizeBytes int64  `json:"size_bytes,omitempty"` // database size on disk; 0 when unknown
}

// sampled are the registry series the system page charts, summed over
// their labels. Counters become per-second rates between two samples; the
// flush histogram becomes the mean commit latency of the interval.
var sampled = []string{
	"meridian_readings_stored_total",
	"meridian_flush_seconds", // histogram: sum and count
	"meridian_device_connections",
	"meridian_device_handshakes_total",
	"meridian_queue_readings",
	"meridian_backpressure_seconds_total",
	"meridian_mqtt_connected",
	"meridian_mqtt_queue_batches",
	"meridian_mqtt_dropped_total",
	"meridian_dashboard_live_clients",
	"meridian_dashboard_live_disconnects_total",
	"meridian_dashboard_publish_dropped_total",
}

// sample is one read of the registry: the summed value of each sampled
// family (NaN when absent), plus the flush histogram's count.
type sample struct {
	t          int64 // Unix ms
	v          [12]float64
	flushCount float64
}

// history is a bounded ring of samples of the server's own Prometheus
// registry: the system page's charts over the last historySpan, without an
// external time-series database. Run's sampler goroutine writes; handlers
// read under the mutex.
type history struct {
	g     prometheus.Gatherer
	every time.Duration

	mu   sync.Mutex
	ring []sample // oldest first once full; at most cap
	next int
	full bool
}

// historySpan is how far back the system page's charts reach.
const historySpan = 15 * time.Minute

func newHistory(g prometheus.Gatherer, every time.Duration) *history {
	n := int(historySpan/every) + 1 // 181 samples at the default 5 s
	return &history{g: g, every: every, ring: make([]sample, n)}
}

// take gathers the registry once and appends a sample.
func (h *history) take(now time.Time) {
	if h.g == nil {
		return
	}
	fams, err := h.g.Gather()
	if err != nil && len(fams) == 0 {
		return // a failed collector still leaves the others; nothing at all is a skipped sample
	}
	s := sample{t: now.UnixMilli()}
	for i := range s.v {
		s.v[i] = math.NaN()
	}
	// Labelled counters have no series until their first increment: no
	// drops yet is 0 drops, not "unknown".
	for _, i := range []int{8, 10, 11} {
		s.v[i] = 0
	}
	byName := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	for i, name := range sampled {
		f := byName[name]
		if f == nil {
			continue
		}
		var sum float64
		for _, m := range f.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += m.Histogram.GetSampleSum()
				s.flushCount += float64(m.Histogram.GetSampleCount())
			}
		}
		s.v[i] = sum
	}
	h.mu.Lock()
	h.ring[h.next] = s
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	h.mu.Unlock()
}

func (h *history) samples() []sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.full {
		return append([]sample(nil), h.ring[:h.next]...)
	}
	return append(append([]sample(nil), h.ring[h.next:]...), h.ring[:h.next]...)
}

// run samples every h.every until ctx ends (started by Dashboard.Run).
func (h *history) run(ctx context.Context, now func() time.Time) {
	if h.g == nil {
		return
	}
	h.take(now())
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.take(now())
		}
	}
}

// systemSeries are the charts' columns, aligned on T (Unix ms). A value is
// null (NaN → nil) where the metric is absent (MQTT disabled) or where a
// rate has no previous sample.
type systemSeries struct {
	T              []int64    `json:"t"`
	ReadingsPerSec []*float64 `json:"readings_per_s"`
	FlushMs        []*float64 `json:"flush_ms"`
	Connections    []*float64 `json:"connections"`
	HandshakesPerS []*float64 `json:"handshakes_per_s"`
	Queue          []*float64 `json:"queue"`
	BackpressurePc []*float64 `json:"backpressure_pct"`
	MQTTQueue      []*float64 `json:"mqtt_queue"`
	MQTTDropsPerS  []*float64 `json:"mqtt_drops_per_s"`
	LiveClients    []*float64 `json:"live_clients"`
	LiveDropsPerS  []*float64 `json:"live_drops_per_s"`
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	v = math.Round(v*1000) / 1000
	return &v
}

// series derives the charts' columns from consecutive samples.
func (h *history) series() (systemSeries, *sample) {
	ss := h.samples()
	out := systemSeries{T: []int64{}}
	cols := []*[]*float64{&out.ReadingsPerSec, &out.FlushMs, &out.Connections, &out.HandshakesPerS, &out.Queue,
		&out.BackpressurePc, &out.MQTTQueue, &out.MQTTDropsPerS, &out.LiveClients, &out.LiveDropsPerS}
	for _, c := range cols {
		*c = []*float64{}
	}
	var last *sample
	for i := range ss {
		s := &ss[i]
		nan := math.NaN()
		rate := func(idx int, scale float64) *float64 { return num(nan) }
		flush := num(nan)
		if i > 0 {
			p := &ss[i-1]
			dt := float64(s.t-p.t) / 1000
			rate = func(idx int, scale float64) *float64 {
				if dt <= 0 {
					return nil
				}
				d := s.v[idx] - p.v[idx]
				if d < 0 { // a counter reset: the process restarted
					return nil
				}
				return num(d / dt * scale)
			}
			if dc := s.flushCount - p.flushCount; dc > 0 {
				flush = num((s.v[1] - p.v[1]) / dc * 1000)
			} else if !math.IsNaN(s.v[1]) {
				zero := 0.0
				flush = &zero // no flush in the interval: nothing waited
			}
		}
		out.T = append(out.T, s.t)
		out.ReadingsPerSec = append(out.ReadingsPerSec, rate(0, 1))
		out.FlushMs = append(out.FlushMs, flush)
		out.Connections = append(out.Connections, num(s.v[2]))
		out.HandshakesPerS = append(out.HandshakesPerS, rate(3, 1))
		out.Queue = append(out.Queue, num(s.v[4]))
		out.BackpressurePc = append(out.BackpressurePc, rate(5, 100))
		out.MQTTQueue = append(out.MQTTQueue, num(s.v[7]))
		out.MQTTDropsPerS = append(out.MQTTDropsPerS, rate(8, 1))
		out.LiveClients = append(out.LiveClients, num(s.v[9]))
		lr := rate(10, 1)
		if pd := rate(11, 1); lr != nil && pd != nil {
			v := *lr + *pd
			lr = &v
		}
		out.LiveDropsPerS = append(out.LiveDropsPerS, lr)
		last = s
	}
	return out, last
}

// storageInfo asks Deps.Storage at most every storageInfoTTL: the size
// query is cheap but the system page polls every 2 s per open tab.
const storageInfoTTL = 30 * time.Second

type storageCache struct {
	mu  sync.Mutex
	at  time.Time
	val StorageInfo
	err string
}

func (d *Dashboard) storageInfo(ctx context.Context) (StorageInfo, string) {
	if d.deps.Storage == nil {
		return StorageInfo{}, ""
	}
	c := &d.storageCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && d.now().Sub(c.at) < storageInfoTTL {
		return c.val, c.err
	}
	v, err := d.deps.Storage(ctx)
	c.val, c.err, c.at = v, "", d.now()
	if err != nil {
		c.err = "storage unreachable: " + err.Error() + " — ingest keeps devices connected but stops reading from them when its queue fills; it retries until storage answers"
	}
	return c.val, c.err
}

// systemView is GET /ui/api/system.
type systemView struct {
	Version      string         `json:"version"`
	Commit       string         `json:"commit,omitempty"`
	Node         string         `json:"node,omitempty"`
	Started      int64          `json:"started"` // Unix ms
	UptimeS      int64          `json:"uptime_s"`
	Storage      StorageInfo    `json:"storage"`
	StorageError string         `json:"storage_error,omitempty"`
	Now          map[string]any `json:"now"`
	MQTT         *mqttView      `json:"mqtt"` // null when this server has no MQTT bridge
	History      systemSeries   `json:"history"`
	HistoryEvery float64        `json:"history_every_s"`
	Server       map[string]any `json:"server"`
	// Kept for scripts written against the first system API.
	IngestRate     float64 `json:"ingest_rate"`
	DevicesTracked int     `json:"devices_tracked"`
	DevicesOnline  int     `json:"devices_online"`
	LiveClients    int     `json:"live_clients"`
	HubQueue       int     `json:"hub_queue"`
	HubQueueCap    int     `json:"hub_queue_cap"`
}

type mqttView struct {
	Connected  bool    `json:"connected"`
	Queue      float64 `json:"queue"`
	DropsTotal float64 `json:"drops_total"`
}

// apiSystem: build, uptime, storage, the latest numbers and the last 15
// minutes of history, plus whatever Deps.Stats reports.
func (d *Dashboard) apiSystem(w http.ResponseWriter, r *http.Request, _ Principal) {
	rate, tracked, online := d.hub.fleet.totals()
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	si, serr := d.storageInfo(ctx)
	hist, last := d.hist.series()
	now := d.now()
	v := systemView{
		Version: d.deps.Build.Version, Commit: d.deps.Build.Commit, Node: d.deps.Build.Node,
		Started: d.started.UnixMilli(), UptimeS: int64(now.Sub(d.started).Seconds()),
		Storage: si, StorageError: serr, History: hist, HistoryEvery: d.cfg.HistoryInterval.Seconds(),
		IngestRate: rate, DevicesTracked: tracked, DevicesOnline: online,
		LiveClients: d.hub.clientCount(), HubQueue: d.hub.QueueDepth(), HubQueueCap: inboxSize,
	}
	v.Now = map[string]any{
		"ingest_rate": rate, "devices_online": online, "devices_tracked": tracked,
		"live_clients": v.LiveClients, "hub_queue": v.HubQueue, "hub_queue_cap": inboxSize,
	}
	if n := len(hist.T); n > 0 {
		for k, col := range map[string][]*float64{
			"readings_per_s": hist.ReadingsPerSec, "flush_ms": hist.FlushMs, "connections": hist.Connections,
			"handshakes_per_s": hist.HandshakesPerS, "queue": hist.Queue, "backpressure_pct": hist.BackpressurePc,
			"live_drops_per_s": hist.LiveDropsPerS,
		} {
			v.Now[k] = col[n-1]
		}
	}
	if last != nil && !math.IsNaN(last.v[6]) {
		m := &mqttView{Connected: last.v[6] > 0}
		if !math.IsNaN(last.v[7]) {
			m.Queue = last.v[7]
		}
		if !math.IsNaN(last.v[8]) {
			m.DropsTotal = last.v[8]
		}
		v.MQTT = m
	}
	if d.deps.Stats != nil {
		v.Server = d.deps.Stats()
	}
	if v.Server == nil {
		v.Server = map[string]any{}
	}
	writeJSON(w, http.StatusOK, v)
}
