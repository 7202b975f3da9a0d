package dashboard

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Hub limits and timings. They are not configuration: they bound memory and
// define the slow-client policy documented in docs/dashboard.md.
const (
	// inboxSize bounds batches and presence events waiting for the hub
	// goroutine. At 20,000 readings/s in batches of 50 that is 400 items/s,
	// so 8192 is 20 s of backlog: only a stalled hub fills it, and then
	// Publish drops (counted) instead of slowing ingestion.
	inboxSize = 8192
	// flushEvery is how often windows that were not yet due are looked at
	// again; it adds at most this much to a coalesced update's delay.
	flushEvery = 25 * time.Millisecond
	// slowClientGrace is how long a client's queue may stay full (while its
	// windows keep coalescing) before it is disconnected.
	slowClientGrace = 5 * time.Second
	// downsampledInterval is the per-series update interval of a client whose
	// queue is more than half full.
	downsampledInterval = time.Second
	// maxSubscriptions per client (devices) and maxSeries pending windows per
	// client bound the hub's memory per client.
	maxSubscriptions = 64
	maxSeries        = 4096
	// maxMetricsFilter bounds the metric list of one subscription.
	maxMetricsFilter = 64
)

// Close reasons; they label dashboard_live_disconnects_total and map to
// WebSocket close codes.
const (
	reasonSlow     = "slow_consumer" // queue full for slowClientGrace
	reasonShutdown = "shutdown"
	reasonClient   = "client_closed"
	reasonWrite    = "write_failed"
	reasonProtocol = "protocol_error"
	reasonSession  = "session_ended"
)

// errHubClosed: the hub's Run has returned.
var errHubClosed = errors.New("live hub stopped")

// Update is one series' live update: every reading of the series that
// arrived since the previous update, coalesced. T is the newest reading's
// time and Last its value; T0 is the oldest reading's time; Min/Max/Count
// summarise the window so a spike between two updates still shows.
type Update struct {
	Device string
	Metric string
	T0     int64 // Unix ms
	T      int64 // Unix ms
	Min    float64
	Max    float64
	Last   float64
	Count  int64
}

func (u *Update) add(r telemetry.Reading) {
	if u.Count == 0 {
		u.T0, u.T, u.Min, u.Max, u.Last, u.Count = r.Time, r.Time, r.Value, r.Value, r.Value, 1
		return
	}
	u.Count++
	u.Min = math.Min(u.Min, r.Value)
	u.Max = math.Max(u.Max, r.Value)
	u.T0 = min(u.T0, r.Time)
	if r.Time >= u.T {
		u.T, u.Last = r.Time, r.Value
	}
}

type seriesKey struct{ device, metric string }

type subscription struct {
	metrics map[string]bool // nil: every metric
	// seam: readings older than this (Unix ms) are history's; see
	// docs/dashboard.md "Resume and the seam".
	seam int64
}

// client is one live connection (WebSocket or SSE) as the hub sees it.
// out and done are shared with the transport; everything below "hub
// goroutine only" is touched by Hub.Run alone and needs no lock.
type client struct {
	id   uint64
	out  chan []byte   // encoded messages; the transport's writer drains it
	done chan struct{} // closed when the hub or transport ends the client

	closeOnce sync.Once
	reason    atomic.Value // string: why done was closed

	// hub goroutine only
	subs        map[string]*subscription
	windows     map[seriesKey]*Update
	lastSent    map[seriesKey]time.Time
	fullSince   time.Time
	downsampled bool
}

// close ends the client once; the first reason wins.
func (c *client) close(reason string) bool {
	first := false
	c.closeOnce.Do(func() {
		c.reason.Store(reason)
		close(c.done)
		first = true
	})
	return first
}

func (c *client) closeReason() string {
	r, _ := c.reason.Load().(string)
	return r
}

type hubItem struct {
	batch    telemetry.Batch
	presence telemetry.Presence
	isPres   bool
}

type ctrlKind int

const (
	ctrlAttach ctrlKind = iota
	ctrlDetach
	ctrlSubscribe
	ctrlUnsubscribe
)

type ctrlMsg struct {
	kind    ctrlKind
	c       *client
	device  string
	metrics []string
	reply   chan error
}

// Hub fans committed readings out to live clients. Publish and Presence
// never block; everything else happens on the goroutine running Run, which
// owns the subscription index and every client's coalescing windows.
type Hub struct {
	interval time.Duration
	queue    int
	now      func() time.Time
	log      *slog.Logger
	m        *metrics
	fleet    *fleet

	inbox    chan hubItem
	ctrl     chan ctrlMsg
	stopped  chan struct{}
	nextID   atomic.Uint64
	nclients atomic.Int64
	running  atomic.Bool

	// hub goroutine only
	clients  map[*client]struct{}
	byDevice map[string]map[*client]struct{}
	dirty    map[*client]struct{}
	buf      []byte
}

func newHub(cfg Config, m *metrics, log *slog.Logger, now func() time.Time) *Hub {
	return &Hub{
		interval: time.Second / time.Duration(cfg.MaxUpdatesPerSecond),
		queue:    cfg.ClientQueue,
		now:      now,
		log:      log,
		m:        m,
		fleet:    newFleet(now),
		inbox:    make(chan hubItem, inboxSize),
		ctrl:     make(chan ctrlMsg, 64),
		stopped:  make(chan struct{}),
		clients:  make(map[*client]struct{}),
		byDevice: make(map[string]map[*client]struct{}),
		dirty:    make(map[*client]struct{}),
	}
}

// Publish hands a committed batch to the hub. It never blocks: when the hub
// is behind by inboxSize items the batch is dropped for live viewers (it is
// stored; a reload shows it) and counted.
func (h *Hub) Publish(b telemetry.Batch) {
	select {
	case h.inbox <- hubItem{batch: b}:
	default:
		h.m.publishDropped.WithLabelValues("hub_full").Inc()
	}
}

// Presence hands a device's online/offline change to the hub; never blocks.
func (h *Hub) Presence(p telemetry.Presence) {
	select {
	case h.inbox <- hubItem{presence: p, isPres: true}:
	default:
		h.m.publishDropped.WithLabelValues("hub_full").Inc()
	}
}

// QueueDepth is the number of items waiting for the hub goroutine.
func (h *Hub) QueueDepth() int { return len(h.inbox) }

// Run is the hub goroutine. It returns when ctx ends, after disconnecting
// every client with reason "shutdown".
func (h *Hub) Run(ctx context.Context) error {
	if !h.running.CompareAndSwap(false, true) {
		return errors.New("live hub: Run called twice")
	}
	defer close(h.stopped)
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			for c := range h.clients {
				h.drop(c, reasonShutdown)
			}
			return nil
		case it := <-h.inbox:
			h.handle(it)
			// Take whatever else is already queued before flushing, so a
			// burst becomes one message per client instead of many.
			for i := 0; i < 64; i++ {
				select {
				case it = <-h.inbox:
					h.handle(it)
					continue
				default:
				}
				break
			}
			h.flushDirty(h.now())
		case m := <-h.ctrl:
			m.reply <- h.control(m)
		case <-flush.C:
			h.flushDirty(h.now())
		case <-tick.C:
			h.fleet.tick(h.now())
		}
	}
}

// call sends a control message to the hub goroutine and waits for it.
func (h *Hub) call(ctx context.Context, m ctrlMsg) error {
	m.reply = make(chan error, 1)
	select {
	case h.ctrl <- m:
	case <-h.stopped:
		return errHubClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-m.reply:
		return err
	case <-h.stopped:
		return errHubClosed
	case <-ctx.Done():
		// The hub will still apply it; detach cleans up.
		return ctx.Err()
	}
}

// attach registers a new client whose queue holds cfg.ClientQueue messages.
func (h *Hub) attach(ctx context.Context) (*client, error) {
	c := &client{
		id:       h.nextID.Add(1),
		out:      make(chan []byte, h.queue),
		done:     make(chan struct{}),
		subs:     make(map[string]*subscription),
		windows:  make(map[seriesKey]*Update),
		lastSent: make(map[seriesKey]time.Time),
	}
	if err := h.call(ctx, ctrlMsg{kind: ctrlAttach, c: c}); err != nil {
		return nil, err
	}
	return c, nil
}

// detach ends c (if the hub did not already) and forgets it.
func (h *Hub) detach(c *client, reason string) {
	c.close(reason)
	// Bounded wait: if the hub is gone there is nothing to forget.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.call(ctx, ctrlMsg{kind: ctrlDetach, c: c})
}

// subscribe starts (or replaces) c's subscription to device. The hub queues
// a "subscribed" message carrying the seam before any update of it.
func (h *Hub) subscribe(ctx context.Context, c *client, device string, metrics []string) error {
	return h.call(ctx, ctrlMsg{kind: ctrlSubscribe, c: c, device: device, metrics: metrics})
}

func (h *Hub) unsubscribe(ctx context.Context, c *client, device string) error {
	return h.call(ctx, ctrlMsg{kind: ctrlUnsubscribe, c: c, device: device})
}

// errTooManySubscriptions is sent to a client that asks for more than
// maxSubscriptions devices.
var errTooManySubscriptions = errors.New("too many subscriptions (at most " + strconv.Itoa(maxSubscriptions) + " devices per connection)")

func (h *Hub) control(m ctrlMsg) error {
	c := m.c
	switch m.kind {
	case ctrlAttach:
		h.clients[c] = struct{}{}
		h.nclients.Add(1)
		h.m.clients.Inc()
	case ctrlDetach:
		h.forget(c)
	case ctrlSubscribe:
		if _, ok := h.clients[c]; !ok {
			return errHubClosed
		}
		if _, ok := c.subs[m.device]; !ok && len(c.subs) >= maxSubscriptions {
			return errTooManySubscriptions
		}
		h.clearSeries(c, m.device)
		sub := &subscription{seam: h.now().UnixMilli()}
		if len(m.metrics) > 0 {
			sub.metrics = make(map[string]bool, len(m.metrics))
			for _, mt := range m.metrics {
				sub.metrics[mt] = true
			}
		}
		c.subs[m.device] = sub
		set := h.byDevice[m.device]
		if set == nil {
			set = make(map[*client]struct{})
			h.byDevice[m.device] = set
		}
		set[c] = struct{}{}
		// Queued here, on the hub goroutine, so it precedes every update of
		// this subscription on the wire.
		h.enqueue(c, appendSubscribed(nil, m.device, m.metrics, sub.seam, h.fleet.latest(m.device)))
	case ctrlUnsubscribe:
		h.unsub(c, m.device)
	}
	return nil
}

func (h *Hub) unsub(c *client, device string) {
	if _, ok := c.subs[device]; !ok {
		return
	}
	delete(c.subs, device)
	h.clearSeries(c, device)
	if set := h.byDevice[device]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.byDevice, device)
		}
	}
}

func (h *Hub) clearSeries(c *client, device string) {
	for k := range c.windows {
		if k.device == device {
			delete(c.windows, k)
		}
	}
	for k := range c.lastSent {
		if k.device == device {
			delete(c.lastSent, k)
		}
	}
}

// forget removes c from every index (hub goroutine).
func (h *Hub) forget(c *client) {
	if _, ok := h.clients[c]; !ok {
		return
	}
	for d := range c.subs {
		h.unsub(c, d)
	}
	delete(h.clients, c)
	delete(h.dirty, c)
	h.nclients.Add(-1)
	h.m.clients.Dec()
}

// drop disconnects c from the hub side, counting why.
func (h *Hub) drop(c *client, reason string) {
	if c.close(reason) {
		h.m.disconnects.WithLabelValues(reason).Inc()
	}
	h.forget(c)
}

func (h *Hub) handle(it hubItem) {
	now := h.now()
	if it.isPres {
		h.fleet.presence(it.presence)
		for c := range h.byDevice[it.presence.Device] {
			h.enqueue(c, appendPresence(nil, it.presence))
		}
		return
	}
	b := it.batch
	h.fleet.observe(b, now)
	for c := range h.byDevice[b.Device] {
		sub := c.subs[b.Device]
		for _, r := range b.Readings {
			if r.Time < sub.seam || (sub.metrics != nil && !sub.metrics[r.Metric]) {
				continue
			}
			k := seriesKey{b.Device, r.Metric}
			w := c.windows[k]
			if w == nil {
				if len(c.windows) >= maxSeries {
					h.m.updatesDropped.WithLabelValues("series_limit").Inc()
					continue
				}
				w = &Update{Device: b.Device, Metric: r.Metric}
				c.windows[k] = w
			}
			w.add(r)
			h.dirty[c] = struct{}{}
		}
	}
}

func (h *Hub) flushDirty(now time.Time) {
	for c := range h.dirty {
		h.flush(c, now)
	}
}

// flush sends c every window whose series is due (its slot — last update
// plus one interval — is at most a flush tick away) as one message. A window not yet due stays and
// keeps coalescing. When c's queue is full the windows stay too, which is
// the downsampling; full for slowClientGrace drops c.
func (h *Hub) flush(c *client, now time.Time) {
	interval := h.interval
	if c.downsampled {
		interval = max(interval, downsampledInterval)
	}
	b := h.buf[:0]
	b = append(b, `{"type":"updates","updates":[`...)
	n := 0
	var due []seriesKey
	for k, w := range c.windows {
		// Due one flush tick early at most: a reading that arrives a little
		// before its slot (network jitter) goes out now instead of waiting
		// for the next tick. The slot still advances by a whole interval
		// per update (below), so the rate stays at the cap.
		if last, ok := c.lastSent[k]; ok && now.Sub(last) < interval-flushEvery {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		b = appendUpdate(b, w)
		due = append(due, k)
		n++
	}
	if n == 0 {
		h.buf = b
		return
	}
	b = append(b, "]}"...)
	h.buf = b
	if !h.enqueue(c, b) {
		if c.fullSince.IsZero() {
			c.fullSince = now
		}
		if now.Sub(c.fullSince) >= slowClientGrace {
			h.drop(c, reasonSlow)
		}
		return
	}
	c.fullSince = time.Time{}
	for _, k := range due {
		delete(c.windows, k)
		// The series' slot advances by one interval, not to now: a device
		// sending at exactly the cap would otherwise be pushed back a flush
		// tick at each update until one value merged into the next and was
		// never shown (docs/benchmarks.md, "End-to-end latency"). After a
		// pause the slot restarts from now, so there is no catch-up burst.
		if last, ok := c.lastSent[k]; ok && now.Sub(last) < 2*interval {
			c.lastSent[k] = last.Add(interval)
		} else {
			c.lastSent[k] = now
		}
	}
	if len(c.windows) == 0 {
		delete(h.dirty, c)
	}
	h.m.updates.Add(float64(n))
}

// enqueue copies msg into c's queue without blocking and adjusts c's
// downsampling: on above half full, off again below a quarter.
func (h *Hub) enqueue(c *client, msg []byte) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.out <- append([]byte(nil), msg...):
	default:
		h.markDownsampled(c)
		return false
	}
	switch l := len(c.out); {
	case l*2 >= cap(c.out):
		h.markDownsampled(c)
	case c.downsampled && l*4 < cap(c.out):
		c.downsampled = false
	}
	return true
}

func (h *Hub) markDownsampled(c *client) {
	if !c.downsampled {
		c.downsampled = true
		h.m.downsampled.Inc()
	}
}

// ---- JSON encoding of live messages (docs/dashboard.md "Live protocol") ----

func appendUpdate(b []byte, u *Update) []byte {
	b = append(b, `{"device":`...)
	b = telemetry.AppendJSONString(b, u.Device)
	b = append(b, `,"metric":`...)
	b = telemetry.AppendJSONString(b, u.Metric)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, u.T, 10)
	b = append(b, `,"t0":`...)
	b = strconv.AppendInt(b, u.T0, 10)
	b = append(b, `,"min":`...)
	b = telemetry.AppendJSONFloat(b, u.Min)
	b = append(b, `,"max":`...)
	b = telemetry.AppendJSONFloat(b, u.Max)
	b = append(b, `,"last":`...)
	b = telemetry.AppendJSONFloat(b, u.Last)
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, u.Count, 10)
	return append(b, '}')
}

func appendSubscribed(b []byte, device string, metrics []string, seam int64, latest map[string]Latest) []byte {
	b = append(b, `{"type":"subscribed","device":`...)
	b = telemetry.AppendJSONString(b, device)
	b = append(b, `,"metrics":[`...)
	for i, m := range metrics {
		if i > 0 {
			b = append(b, ',')
		}
		b = telemetry.AppendJSONString(b, m)
	}
	b = append(b, `],"seam":`...)
	b = strconv.AppendInt(b, seam, 10)
	b = append(b, `,"latest":{`...)
	i := 0
	for m, l := range latest {
		if i > 0 {
			b = append(b, ',')
		}
		i++
		b = telemetry.AppendJSONString(b, m)
		b = append(b, `:{"t":`...)
		b = strconv.AppendInt(b, l.T, 10)
		b = append(b, `,"v":`...)
		b = telemetry.AppendJSONFloat(b, l.V)
		b = append(b, '}')
	}
	return append(b, "}}"...)
}

func appendPresence(b []byte, p telemetry.Presence) []byte {
	b = append(b, `{"type":"presence","device":`...)
	b = telemetry.AppendJSONString(b, p.Device)
	b = append(b, `,"online":`...)
	b = strconv.AppendBool(b, p.Online)
	b = append(b, `,"at":`...)
	b = strconv.AppendInt(b, p.At, 10)
	return append(b, '}')
}

func appendError(b []byte, msg string) []byte {
	b = append(b, `{"type":"error","error":`...)
	b = telemetry.AppendJSONString(b, msg)
	return append(b, '}')
}

// clientCount is the number of attached live clients.
func (h *Hub) clientCount() int { return int(h.nclients.Load()) }
