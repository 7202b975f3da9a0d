package bridge

import (
	"context"
	"time"
)

// Queue sizes for the inbound side. The control queue must absorb the burst
// of retained status and ownership records a (re)subscribe delivers: two
// per device, so 32,768 covers a 16k-device fleet arriving faster than the
// worker drains it (it handles each in microseconds).
const (
	inboundSize = 32_768
	remoteSize  = 4_096
)

// expireEvery is how often queued commands are checked against
// mqtt.command_queue.max_age (at least 1 s): a command expires at most this
// much late.
const expireEvery = time.Second

type inMsg struct {
	kind    inKind
	subject string // device or node
	payload []byte
}

// receive classifies one message from the broker and enqueues it without
// blocking (full queues drop and count). The link calls it from paho's
// handler or the embedded broker's inline subscription.
func (b *Bridge) receive(topic string, payload []byte) {
	kind, subject := b.t.classify(topic)
	m := inMsg{kind: kind, subject: subject, payload: payload}
	switch kind {
	case inUnknown:
		return
	case inTelemetry:
		select {
		case b.remoteIn <- m:
		default:
			b.m.dropped.WithLabelValues("remote_full").Inc()
		}
	default:
		select {
		case b.inbound <- m:
		default:
			b.m.dropped.WithLabelValues("inbound_full").Inc()
		}
	}
}

// workLoop is the single goroutine that acts on what arrives from the
// broker (commands, ownership records, statuses, results, kicks) and
// delivers queued commands. Keeping it single means commands for a device
// are delivered in the order they arrived, and records are applied in the
// broker's order.
func (b *Bridge) workLoop(ctx context.Context) {
	tick := time.NewTicker(expireEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-b.inbound:
			b.handleInbound(m)
		case <-b.cmds.wake:
			b.cmds.deliverQueued()
		case <-tick.C:
			b.cmds.expire()
		}
	}
}

// handleInbound hands a message to the part it is for, and carries out
// what the cluster decides, since the cluster itself calls nothing.
func (b *Bridge) handleInbound(m inMsg) {
	switch m.kind {
	case inCommand:
		b.cmds.onCommand(m.subject, m.payload)
	case inResult:
		b.cmds.onResult(m.subject, m.payload)
	case inSession:
		b.onSession(m.subject, m.payload)
	case inStatus:
		b.cluster.onStatus(m.subject, m.payload)
	case inNode:
		if b.cluster.onNode(m.subject, m.payload) && b.link.up() {
			// Our own Last Will from an earlier connection: say online again.
			b.pub.send(b.pub.nodeStatus("online"))
		}
	case inKick:
		if dev, reason, ok := b.cluster.parseKick(m.payload); ok {
			b.devs.Kick(dev, reason)
		}
	}
}

// onSession applies an ownership record: a takeover closes the local
// session, and commands queued here follow the device to its new node.
func (b *Bridge) onSession(device string, payload []byte) {
	ev, err := b.cluster.onSession(device, payload)
	if err != nil {
		b.log.Debug("ignoring ownership record", "device", device, "err", err)
		return
	}
	if ev.takenOver {
		b.m.takeovers.Inc()
		b.log.Info("device taken over by another node", "device", device, "by", ev.by)
		b.devs.TakeOver(device)
	}
	if ev.elsewhere {
		b.cmds.handOff(device)
	}
}

// remoteLoop hands other nodes' batches to the OnRemoteBatch callback.
func (b *Bridge) remoteLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-b.remoteIn:
			rb, err := decodeBatch(m.payload)
			if err != nil {
				b.m.dropped.WithLabelValues("remote_decode").Inc()
				continue
			}
			// Only batches a Meridian node stamped, from another node, and
			// about the device the topic names.
			if rb.Node == "" || rb.Node == b.node || rb.Batch.Device != m.subject {
				continue
			}
			if fn := b.remoteFn.Load(); fn != nil {
				b.m.remote.Inc()
				(*fn)(rb.Batch)
			}
		}
	}
}
