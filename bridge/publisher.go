package bridge

import (
	"context"
	"encoding/json"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// publisher is the only goroutine that publishes. It keeps at most
// pubWindow publishes in flight (so paho's in-memory store stays small),
// publishes only while connected (while disconnected, paho would store QoS
// 1 messages without bound), and serves its sources by priority: the node's
// own state after a (re)connect, device status and ownership, one-off
// events (results, forwarded commands), then telemetry.
type publisher struct {
	b        *Bridge
	inflight []paho.Token
	buf      []byte
}

func (p *publisher) loop(ctx context.Context) {
	b := p.b
	for ctx.Err() == nil {
		if !p.waitConnected(ctx) {
			return
		}
		if b.resync.Swap(false) {
			p.resyncState(ctx)
			continue
		}
		if p.publishPending(ctx) {
			continue
		}
		select {
		case ev := <-b.events:
			p.publish(ctx, ev, 1)
			continue
		default:
		}
		if bt, ok := b.telem.pop(); ok {
			p.publishBatch(ctx, bt)
			continue
		}
		p.prune()
		select {
		case <-ctx.Done():
			return
		case <-b.telem.ready:
		case <-b.pubWake:
		case ev := <-b.events:
			p.publish(ctx, ev, 1)
		}
	}
}

// waitConnected blocks until the client is connected or ctx ends.
func (p *publisher) waitConnected(ctx context.Context) bool {
	for {
		up, ch := p.b.connState()
		if up {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
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
	b := p.b
	p.publish(ctx, outMsg{topic: b.t.node(b.node), payload: []byte("online"), retain: true, kind: "node"}, 1)
	b.mu.Lock()
	for dev := range b.own.held {
		if _, ok := b.own.pending[dev]; !ok {
			b.own.pending[dev] = statusPub{status: "online"}
		}
	}
	b.mu.Unlock()
}

// publishPending publishes up to pendingBatch status/ownership updates;
// it reports whether there were any.
func (p *publisher) publishPending(ctx context.Context) bool {
	b := p.b
	type item struct {
		dev string
		sp  statusPub
	}
	batch := make([]item, 0, 16)
	b.mu.Lock()
	for dev, sp := range b.own.pending {
		batch = append(batch, item{dev, sp})
		delete(b.own.pending, dev)
		if len(batch) == pendingBatch {
			break
		}
	}
	b.mu.Unlock()
	for _, it := range batch {
		// Ownership first: other nodes act on it (takeover), and the status
		// topic is what people watch.
		if it.sp.claim != nil && b.link.inproc == nil { // ownership matters only between nodes
			data, _ := json.Marshal(it.sp.claim)
			p.publish(ctx, outMsg{topic: b.t.session(it.dev), payload: data, retain: true, kind: "session"}, 1)
		}
		if it.sp.status == "" {
			continue
		}
		retain := true
		if b.link.statuses != nil {
			// The embedded broker's retained statuses live in the status
			// table (status.go); subscribers get this one live.
			b.link.statuses.set(it.dev, it.sp.status == "online")
			retain = false
		}
		p.publish(ctx, outMsg{topic: b.t.status(it.dev), payload: []byte(it.sp.status), retain: retain, kind: "status"}, 1)
	}
	return len(batch) > 0
}

func (p *publisher) drainEvents(ctx context.Context) {
	for ctx.Err() == nil {
		select {
		case ev := <-p.b.events:
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
	b := p.b
	qos := byte(b.cfg.QoS)
	msgpack := b.cfg.Format == "msgpack"
	if b.cfg.Telemetry.Layout != LayoutReading {
		topic := b.t.telemetry(bt.Device)
		if b.link.subs == nil || b.link.subs.wanted(topic) {
			if msgpack {
				p.buf = appendBatchMsgpack(p.buf[:0], b.node, bt)
			} else {
				p.buf = appendBatchJSON(p.buf[:0], b.node, bt)
			}
			p.publish(ctx, outMsg{topic: topic, payload: append([]byte(nil), p.buf...), kind: "telemetry"}, qos)
		} else {
			b.m.skipped.Inc()
		}
	}
	if b.cfg.Telemetry.Layout == LayoutBatch || len(bt.Readings) == 0 {
		return
	}
	retain := b.cfg.Telemetry.Retain
	var out []byte
	for _, r := range bt.Readings {
		topic := b.t.reading(bt.Device, r.Metric)
		if !retain && b.link.subs != nil && !b.link.subs.wanted(topic) {
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
	if srv := p.b.link.inproc; srv != nil {
		// Synchronous: the broker hands the packet to each subscriber's
		// outbound queue (which drops when full, as for any client).
		if err := srv.Publish(m.topic, m.payload, m.retain, qos); err != nil {
			p.b.m.dropped.WithLabelValues("publish_error").Inc()
			p.b.log.Debug("in-process publish failed", "topic", m.topic, "err", err)
			return true
		}
		p.b.m.published.WithLabelValues(m.kind).Inc()
		return true
	}
	if !p.waitConnected(ctx) {
		p.b.m.dropped.WithLabelValues("shutdown").Inc()
		return false
	}
	tok := p.b.link.client.Publish(m.topic, qos, m.retain, m.payload)
	p.b.m.published.WithLabelValues(m.kind).Inc()
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
				p.b.m.dropped.WithLabelValues("publish_error").Inc()
				p.b.log.Debug("MQTT publish failed", "err", t.Error())
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
