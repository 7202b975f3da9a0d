package bridge

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Sizes of the publisher's queues and window.
const (
	eventsSize   = 4_096 // results, forwarded commands, kicks waiting to be published
	pubWindow    = 64    // publishes in flight before the publisher waits for acks
	pendingBatch = 256   // status/ownership records taken from the cluster at once
)

// publisher carries everything the node publishes: committed telemetry
// (the ring, fed by Committed), the cluster's status and ownership records,
// and one-off events (results, forwarded commands, kicks). One goroutine,
// loop, publishes. It keeps at most pubWindow publishes in flight (so
// paho's in-memory store stays small), publishes only while the link is
// up (while disconnected, paho would store QoS 1 messages without bound),
// and serves its sources by priority: the node's own state after a
// (re)connect, device status and ownership, one-off events, then
// telemetry.
//
// It has no lock of its own: the ring has its leaf lock, events is a
// channel, resync is atomic, and inflight and buf belong to the publishing
// goroutine.
type publisher struct {
	cfg  Config
	t    topics
	node string
	link *link
	clu  *cluster // source of status and ownership records
	m    *metrics
	log  *slog.Logger

	telem  *ring
	events chan outMsg // bounded: a full queue drops (counted)
	wake   chan struct{}
	resync atomic.Bool // the link came up: republish the node's state

	inflight []paho.Token
	buf      []byte
}

type outMsg struct {
	topic   string
	payload []byte
	retain  bool
	kind    string
}

func newPublisher(cfg Config, node string, telem *ring, l *link, clu *cluster, m *metrics, log *slog.Logger) *publisher {
	return &publisher{
		cfg: cfg, t: l.t, node: node, link: l, clu: clu, m: m, log: log,
		telem:  telem,
		events: make(chan outMsg, eventsSize),
		wake:   make(chan struct{}, 1),
	}
}

// notify wakes the publishing goroutine: records are pending.
func (p *publisher) notify() { signal(p.wake) }

// linkUp is called when the link is up again, before it reports itself
// connected: the node's state is republished first.
func (p *publisher) linkUp() {
	p.resync.Store(true)
	p.notify()
}

// committed queues a committed batch. It never blocks: when the ring is
// full the oldest batch is dropped and counted.
func (p *publisher) committed(bt telemetry.Batch) {
	if p.link.subs != nil && !p.telemetryWanted() {
		// Embedded broker and nobody who could receive it: the batch is
		// neither queued nor encoded.
		p.m.skipped.Inc()
		return
	}
	if p.telem.push(bt) {
		p.m.dropped.WithLabelValues("queue_full").Inc()
	}
}

// telemetryWanted reports whether a committed batch can reach anyone on
// the embedded broker: a network client's filter could match its topics,
// or per-reading messages are retained (kept for later subscribers).
func (p *publisher) telemetryWanted() bool {
	layout := p.cfg.Telemetry.Layout
	if layout != LayoutBatch && p.cfg.Telemetry.Retain {
		return true
	}
	s := p.link.subs.snap.Load()
	switch layout {
	case LayoutBatch:
		return s.batch
	case LayoutReading:
		return s.under
	}
	return s.batch || s.under
}

// send queues a one-off publish; a full queue drops it (counted).
func (p *publisher) send(m outMsg) bool {
	select {
	case p.events <- m:
		p.notify()
		return true
	default:
		p.m.dropped.WithLabelValues("events_full").Inc()
		return false
	}
}

// nodeStatus is this node's retained "online"/"offline" record.
func (p *publisher) nodeStatus(status string) outMsg {
	return outMsg{topic: p.t.node(p.node), payload: []byte(status), retain: true, kind: "node"}
}

func (p *publisher) loop(ctx context.Context) {
	for ctx.Err() == nil {
		if !p.link.waitUp(ctx) {
			return
		}
		if p.resync.Swap(false) {
			p.resyncState(ctx)
			continue
		}
		if p.publishPending(ctx) {
			continue
		}
		select {
		case ev := <-p.events:
			p.publish(ctx, ev, 1)
			continue
		default:
		}
		if bt, ok := p.telem.pop(); ok {
			p.publishBatch(ctx, bt)
			continue
		}
		p.prune()
		select {
		case <-ctx.Done():
			return
		case <-p.telem.ready:
		case <-p.wake:
		case ev := <-p.events:
			p.publish(ctx, ev, 1)
		}
	}
}

// resyncState runs after every (re)connect: it says the node is online and
// republishes the status of every device this node holds, which others may
// have marked offline meanwhile (e.g. after this node's Last Will fired on
// a network blip). Ownership records are not republished: they are
// retained at the broker, and a republished old claim would look newer than
// a takeover that happened during the outage and close the device's new
// session on the other node. Claims made while disconnected are still
// pending and go out as usual.
func (p *publisher) resyncState(ctx context.Context) {
	p.publish(ctx, p.nodeStatus("online"), 1)
	p.clu.resync()
}

// publishPending publishes up to pendingBatch status/ownership records;
// it reports whether there were any.
func (p *publisher) publishPending(ctx context.Context) bool {
	batch := p.clu.takePending(pendingBatch)
	for _, it := range batch {
		// Ownership first: other nodes act on it (takeover), and the status
		// topic is what people watch.
		if it.claim != nil && !p.link.inProcess() { // ownership matters only between nodes
			data, _ := json.Marshal(it.claim)
			p.publish(ctx, outMsg{topic: p.t.session(it.device), payload: data, retain: true, kind: "session"}, 1)
		}
		if it.status == "" {
			continue
		}
		retain := true
		if p.link.statuses != nil {
			// The embedded broker's retained statuses live in the status
			// table (status.go); subscribers get this one live.
			p.link.statuses.set(it.device, it.status == "online")
			retain = false
		}
		p.publish(ctx, outMsg{topic: p.t.status(it.device), payload: []byte(it.status), retain: retain, kind: "status"}, 1)
	}
	return len(batch) > 0
}

// flush runs at shutdown, after the loop stopped: the cluster's last
// records, the queued events and telemetry, then the node's "offline".
// All within ctx.
func (p *publisher) flush(ctx context.Context) {
	for p.publishPending(ctx) {
	}
	p.drainEvents(ctx)
	for ctx.Err() == nil {
		bt, ok := p.telem.pop()
		if !ok {
			break
		}
		p.publishBatch(ctx, bt)
	}
	p.publish(ctx, p.nodeStatus("offline"), 1)
	p.waitAll(ctx)
}

func (p *publisher) drainEvents(ctx context.Context) {
	for ctx.Err() == nil {
		select {
		case ev := <-p.events:
			p.publish(ctx, ev, 1)
		default:
			return
		}
	}
}

// publishBatch publishes one committed batch in the configured layout. A
// batch is encoded once: the batch message is one allocation, and the
// per-reading messages are slices of one buffer per batch (the broker or
// paho keeps the bytes until they are written, so they are never reused).
// On the embedded broker, a message no network client can receive is not
// built at all (unless it is retained).
func (p *publisher) publishBatch(ctx context.Context, bt telemetry.Batch) {
	qos := byte(p.cfg.QoS)
	msgpack := p.cfg.Format == "msgpack"
	subs := p.link.subs
	if p.cfg.Telemetry.Layout != LayoutReading {
		topic := p.t.telemetry(bt.Device)
		if subs == nil || subs.wanted(topic) {
			if msgpack {
				p.buf = appendBatchMsgpack(p.buf[:0], p.node, bt)
			} else {
				p.buf = appendBatchJSON(p.buf[:0], p.node, bt)
			}
			p.publish(ctx, outMsg{topic: topic, payload: append([]byte(nil), p.buf...), kind: "telemetry"}, qos)
		} else {
			p.m.skipped.Inc()
		}
	}
	if p.cfg.Telemetry.Layout == LayoutBatch || len(bt.Readings) == 0 {
		return
	}
	retain := p.cfg.Telemetry.Retain
	var out []byte
	for _, r := range bt.Readings {
		topic := p.t.reading(bt.Device, r.Metric)
		if !retain && subs != nil && !subs.wanted(topic) {
			continue
		}
		if out == nil {
			// One buffer for the batch's reading messages: ~40 bytes each in
			// JSON. If append has to grow it, earlier messages keep the old
			// array; later ones are written past them, never over them.
			out = make([]byte, 0, 48*len(bt.Readings))
		}
		start := len(out)
		if msgpack {
			out = appendReadingMsgpack(out, r)
		} else {
			out = appendReadingJSON(out, r)
		}
		p.publish(ctx, outMsg{topic: topic, payload: out[start:len(out):len(out)], retain: retain, kind: "reading"}, qos)
	}
}

// publish sends one message, waiting only for connection and for the
// in-flight window. It reports false when ctx ended first.
func (p *publisher) publish(ctx context.Context, m outMsg, qos byte) bool {
	if p.link.inProcess() {
		// Synchronous: the broker hands the packet to each subscriber's
		// outbound queue (which drops when full, as for any client).
		if err := p.link.publishInProcess(m, qos); err != nil {
			p.m.dropped.WithLabelValues("publish_error").Inc()
			p.log.Debug("in-process publish failed", "topic", m.topic, "err", err)
			return true
		}
		p.m.published.WithLabelValues(m.kind).Inc()
		return true
	}
	if !p.link.waitUp(ctx) {
		p.m.dropped.WithLabelValues("shutdown").Inc()
		return false
	}
	tok := p.link.publishClient(m, qos)
	p.m.published.WithLabelValues(m.kind).Inc()
	p.inflight = append(p.inflight, tok)
	p.prune()
	for len(p.inflight) >= pubWindow {
		select {
		case <-ctx.Done():
			return false
		case <-p.inflight[0].Done():
			p.prune()
		}
	}
	return true
}

// prune forgets completed publishes from the front of the window, counting
// failures.
func (p *publisher) prune() {
	i := 0
	for ; i < len(p.inflight); i++ {
		t := p.inflight[i]
		select {
		case <-t.Done():
			if t.Error() != nil {
				p.m.dropped.WithLabelValues("publish_error").Inc()
				p.log.Debug("MQTT publish failed", "err", t.Error())
			}
			continue
		default:
		}
		break
	}
	if i > 0 {
		n := copy(p.inflight, p.inflight[i:])
		clear(p.inflight[n:])
		p.inflight = p.inflight[:n]
	}
}

// waitAll waits for every in-flight publish (or ctx).
func (p *publisher) waitAll(ctx context.Context) {
	for _, t := range p.inflight {
		select {
		case <-ctx.Done():
			return
		case <-t.Done():
		}
	}
	p.prune()
}
