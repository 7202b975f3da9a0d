package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// workLoop is the single goroutine that acts on what arrives from the
// broker (commands, ownership records, statuses, results) and delivers
// queued commands. Keeping it single means commands for a device are
// delivered in the order they arrived.
func (b *Bridge) workLoop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-b.inbound:
			b.handleInbound(m)
		case <-b.wake:
			b.deliverQueued()
		case <-tick.C:
			b.expireQueued()
		}
	}
}

func (b *Bridge) handleInbound(m inMsg) {
	switch m.kind {
	case inCommand:
		b.handleCommand(m.subject, m.payload)
	case inSession:
		b.handleSession(m.subject, m.payload)
	case inStatus:
		b.handleStatus(m.subject, m.payload)
	case inNode:
		b.handleNode(m.subject, m.payload)
	case inKick:
		b.handleKick(m.payload)
	case inResult:
		var r resultJSON
		if json.Unmarshal(m.payload, &r) == nil && r.ID != "" {
			b.completeWaiter(m.subject, r)
		}
	}
}

// handleCommand processes one message from <prefix>/<device>/commands.
// Every node receives it; only the node holding the device delivers it, and
// only the node responsible for the device (see responsible) answers for an
// offline device or a malformed command, so exactly one answer is
// published when the nodes agree on who holds what.
func (b *Bridge) handleCommand(device string, payload []byte) {
	if !validDevice(device) {
		if b.responsible(device) {
			b.m.commands.WithLabelValues("invalid_device").Inc()
			b.emitResult(device, resultJSON{OK: false, Error: "invalid_device", Detail: "not a device id: lowercase letters, digits, _ . - (1-64)"})
		}
		return
	}
	cmd, id, err := parseCommand(payload, true)
	if err != nil {
		if b.responsible(device) {
			b.m.commands.WithLabelValues("malformed").Inc()
			b.emitResult(device, resultJSON{ID: id, OK: false, Error: "malformed", Detail: err.Error()})
		}
		return
	}
	b.dispatch(device, cmd)
}

// dispatch delivers cmd if the device is here, else answers (offline or
// queued) if this node is responsible for it, else leaves it to the node
// that is. It reports whether the command went to a local session.
func (b *Bridge) dispatch(device string, cmd command) bool {
	b.mu.Lock()
	_, here := b.own.held[device]
	b.mu.Unlock()
	if here {
		err := b.devs.SendCommand(device, telemetry.Command{ID: cmd.ID, Name: cmd.Name, Payload: cmd.Payload})
		switch {
		case err == nil:
			b.m.commands.WithLabelValues("delivered").Inc()
			return true
		case b.isOffline(err):
			// Gone a moment ago: answered below like any offline device.
		case b.isBusy(err):
			b.m.commands.WithLabelValues("busy").Inc()
			b.emitResult(device, resultJSON{ID: cmd.ID, OK: false, Error: "busy", Detail: "the device is not reading its commands"})
			return false
		default:
			b.m.commands.WithLabelValues("failed").Inc()
			b.log.Warn("command delivery failed", "device", device, "err", err)
			b.emitResult(device, resultJSON{ID: cmd.ID, OK: false, Error: "failed", Detail: err.Error()})
			return false
		}
	}
	if !b.responsible(device) {
		b.m.commands.WithLabelValues("ignored").Inc()
		return false
	}
	if cmd.Queue {
		if b.enqueue(device, cmd) {
			b.m.commands.WithLabelValues("queued").Inc()
			return false
		}
		b.m.commands.WithLabelValues("queue_full").Inc()
		b.emitResult(device, resultJSON{ID: cmd.ID, OK: false, Error: "queue_full", Detail: "too many commands already wait for this device"})
		return false
	}
	b.m.commands.WithLabelValues("offline").Inc()
	b.emitResult(device, resultJSON{ID: cmd.ID, OK: false, Error: "offline"})
	return false
}

func (b *Bridge) isOffline(err error) bool { return errors.Is(err, telemetry.ErrOffline) }

func (b *Bridge) isBusy(err error) bool { return errors.Is(err, telemetry.ErrCommandQueueFull) }

// responsible reports whether this node answers for a device it may not
// hold: the node holding it; else the last owner named by the device's
// ownership record if that node is online; else the online node whose name
// sorts first. Each node decides from its own view of the retained
// records, so during a change of ownership the views can briefly disagree
// (docs/scaling.md).
func (b *Bridge) responsible(device string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.own.held[device]; ok {
		return true
	}
	if c, ok := b.own.claims[device]; ok && c.Node != "" {
		if c.Node == b.node {
			return true
		}
		if b.own.nodes[c.Node] {
			return false
		}
	}
	return b.firstNodeLocked()
}

// firstNodeLocked: is this node the online node whose name sorts first?
func (b *Bridge) firstNodeLocked() bool {
	for n, up := range b.own.nodes {
		if up && n < b.node {
			return false
		}
	}
	return true
}

// handleSession processes a retained ownership record.
func (b *Bridge) handleSession(device string, payload []byte) {
	if !validDevice(device) {
		return
	}
	if len(payload) == 0 { // record cleared by an operator
		b.mu.Lock()
		delete(b.own.claims, device)
		b.mu.Unlock()
		return
	}
	var c claim
	if err := json.Unmarshal(payload, &c); err != nil || c.Node == "" {
		b.log.Debug("ignoring malformed ownership record", "device", device)
		return
	}
	var kick bool
	var forward []queuedCmd
	b.mu.Lock()
	b.own.claims[device] = c
	h := b.own.held[device]
	switch {
	case c.Node == b.node:
		switch {
		case h != nil && h.claim == c.Session:
			h.echoed = true
		case h == nil && c.Online:
			// Says we hold it but we do not: left over from a crash of this
			// node, or a lost "offline". Correct it.
			b.own.pending[device] = statusPub{status: "offline", claim: &claim{Node: b.node, Session: c.Session, Online: false, At: b.opts.Now().UnixMilli()}}
			signal(b.pubWake)
		}
	case c.Online:
		if h != nil && h.echoed {
			// Another node claimed the device after our claim reached the
			// broker: the device reconnected there. Close our session.
			delete(b.own.held, device)
			kick = true
		}
		// A claim by another node that arrives before our own claim's echo
		// was ordered before ours by the broker: it is stale, keep ours.
		if q := b.cmdq.queued[device]; len(q) > 0 {
			forward = q
			b.cmdq.nQueued -= len(q)
			delete(b.cmdq.queued, device)
		}
		if up, known := b.own.nodes[c.Node]; known && !up && b.firstNodeLocked() {
			b.own.pending[device] = deadNodeRelease(c, b.opts.Now())
			signal(b.pubWake)
		}
	}
	b.mu.Unlock()
	if kick {
		b.m.takeovers.Inc()
		b.log.Info("device taken over by another node", "device", device, "by", c.Node)
		b.devs.TakeOver(device)
	}
	for _, q := range forward {
		b.forward(device, q.cmd)
	}
}

// deadNodeRelease marks a device offline on behalf of a crashed node.
func deadNodeRelease(c claim, now time.Time) statusPub {
	return statusPub{status: "offline", claim: &claim{Node: c.Node, Session: c.Session, Online: false, At: now.UnixMilli()}}
}

// forward republishes a queued command so that the node now holding the
// device delivers it.
func (b *Bridge) forward(device string, cmd command) {
	data, _ := json.Marshal(commandJSON{ID: cmd.ID, Name: cmd.Name, Payload: cmd.JSON, Queue: true})
	if b.sendEvent(outMsg{topic: b.t.commands(device), payload: data, kind: "command"}) {
		b.m.commands.WithLabelValues("forwarded").Inc()
	}
}

// handleStatus heals a race: an "offline" published (by a node that lost
// the device, or on behalf of a dead one) after this node's "online" for a
// device it holds. The status is republished.
func (b *Bridge) handleStatus(device string, payload []byte) {
	if string(payload) != "offline" {
		return
	}
	b.mu.Lock()
	if _, ok := b.own.held[device]; ok {
		if _, queued := b.own.pending[device]; !queued {
			b.own.pending[device] = statusPub{status: "online"}
			signal(b.pubWake)
		}
	}
	b.mu.Unlock()
}

// handleNode tracks which nodes are online. When a node goes offline
// (its Last Will, or a clean shutdown that could not release everything),
// the first online node marks that node's devices offline.
func (b *Bridge) handleNode(node string, payload []byte) {
	up := string(payload) == "online"
	b.mu.Lock()
	defer b.mu.Unlock()
	if node == b.node {
		if !up && b.Connected() {
			// Our own Last Will from an earlier connection: say online again.
			select {
			case b.events <- outMsg{topic: b.t.node(b.node), payload: []byte("online"), retain: true, kind: "node"}:
				signal(b.pubWake)
			default:
			}
		}
		return
	}
	if len(payload) == 0 {
		delete(b.own.nodes, node)
		return
	}
	b.own.nodes[node] = up
	if up || !b.firstNodeLocked() {
		return
	}
	now := b.opts.Now()
	n := 0
	for dev, c := range b.own.claims {
		if c.Node == node && c.Online {
			b.own.pending[dev] = deadNodeRelease(c, now)
			n++
		}
	}
	if n > 0 {
		b.log.Info("node offline: marking its devices offline", "peer", node, "devices", n)
		signal(b.pubWake)
	}
}

// enqueue keeps a command for an offline device, within the per-device and
// total bounds.
func (b *Bridge) enqueue(device string, cmd command) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.cmdq.queued[device]
	if len(q) >= b.cfg.CommandQueue.MaxPerDevice || b.cmdq.nQueued >= b.cfg.CommandQueue.MaxTotal {
		return false
	}
	b.cmdq.queued[device] = append(q, queuedCmd{cmd: cmd, at: b.opts.Now()})
	b.cmdq.nQueued++
	if _, ok := b.own.held[device]; ok { // came online meanwhile
		b.cmdq.deliver[device] = struct{}{}
		signal(b.wake)
	}
	return true
}

// deliverQueued sends the queued commands of devices that came online.
func (b *Bridge) deliverQueued() {
	b.mu.Lock()
	devs := make([]string, 0, len(b.cmdq.deliver))
	for d := range b.cmdq.deliver {
		devs = append(devs, d)
	}
	clear(b.cmdq.deliver)
	b.mu.Unlock()
	for _, dev := range devs {
		b.mu.Lock()
		_, here := b.own.held[dev]
		q := b.cmdq.queued[dev]
		if !here || len(q) == 0 {
			b.mu.Unlock()
			continue
		}
		delete(b.cmdq.queued, dev)
		b.cmdq.nQueued -= len(q)
		b.mu.Unlock()
		for i, qc := range q {
			err := b.devs.SendCommand(dev, telemetry.Command{ID: qc.cmd.ID, Name: qc.cmd.Name, Payload: qc.cmd.Payload})
			switch {
			case err == nil:
				b.m.commands.WithLabelValues("delivered").Inc()
			case b.isOffline(err):
				// Gone again: put the rest back, oldest first.
				b.mu.Lock()
				b.cmdq.queued[dev] = append(q[i:], b.cmdq.queued[dev]...)
				b.cmdq.nQueued += len(q) - i
				b.mu.Unlock()
				return
			case b.isBusy(err):
				b.m.commands.WithLabelValues("busy").Inc()
				b.emitResult(dev, resultJSON{ID: qc.cmd.ID, OK: false, Error: "busy", Detail: "the device is not reading its commands"})
			default:
				b.m.commands.WithLabelValues("failed").Inc()
				b.emitResult(dev, resultJSON{ID: qc.cmd.ID, OK: false, Error: "failed", Detail: err.Error()})
			}
		}
	}
}

// expireQueued answers queued commands older than MaxAge with "expired".
func (b *Bridge) expireQueued() {
	cutoff := b.opts.Now().Add(-b.cfg.CommandQueue.MaxAge)
	type exp struct {
		dev string
		id  string
	}
	var expired []exp
	b.mu.Lock()
	for dev, q := range b.cmdq.queued {
		keep := q[:0]
		for _, qc := range q {
			if qc.at.Before(cutoff) {
				expired = append(expired, exp{dev, qc.cmd.ID})
				continue
			}
			keep = append(keep, qc)
		}
		b.cmdq.nQueued -= len(q) - len(keep)
		if len(keep) == 0 {
			delete(b.cmdq.queued, dev)
		} else {
			b.cmdq.queued[dev] = keep
		}
	}
	b.mu.Unlock()
	for _, e := range expired {
		b.m.commands.WithLabelValues("expired").Inc()
		b.emitResult(e.dev, resultJSON{ID: e.id, OK: false, Error: "expired", Detail: "the device did not come online within mqtt.command_queue.max_age"})
	}
}

// emitResult publishes a result (to the command's result topic, or the
// device's commands/error topic when no id is known) and completes a local
// HTTP waiter.
func (b *Bridge) emitResult(device string, r resultJSON) {
	data, err := json.Marshal(r)
	if err != nil {
		b.m.dropped.WithLabelValues("encode").Inc()
		return
	}
	topic := b.t.commandError(device)
	if r.ID != "" {
		topic = b.t.result(device, r.ID)
		b.completeWaiter(device, r)
	}
	b.sendEvent(outMsg{topic: topic, payload: data, kind: "result"})
}

func (b *Bridge) completeWaiter(device string, r resultJSON) {
	k := waitKey{device, r.ID}
	b.mu.Lock()
	ch := b.cmdq.waiters[k]
	delete(b.cmdq.waiters, k)
	b.mu.Unlock()
	if ch != nil {
		ch <- r // 1-buffered, one sender: the waiter was just removed
	}
}

// kickJSON is the payload of <prefix>/_kick.
type kickJSON struct {
	Node   string `json:"node"`
	Device string `json:"device"`
	Reason string `json:"reason"`
}

// Kick tells the other nodes to close the device's live session (the
// device was disabled or deleted, or its tokens revoked here). The local
// session is closed by the caller; this only carries the order across the
// cluster, so a revoked device cannot keep streaming on another node until
// it happens to reconnect. Non-blocking, like every publish.
func (b *Bridge) Kick(device, reason string) {
	if !validDevice(device) {
		return
	}
	data, _ := json.Marshal(kickJSON{Node: b.node, Device: device, Reason: reason})
	b.sendEvent(outMsg{topic: b.t.kick(), payload: data, kind: "kick"})
}

// handleKick closes a device's session here when another node asks.
func (b *Bridge) handleKick(payload []byte) {
	var k kickJSON
	if json.Unmarshal(payload, &k) != nil || !validDevice(k.Device) || k.Node == b.node {
		return
	}
	reason := k.Reason
	if reason == "" {
		reason = "closed by operator"
	}
	b.devs.Kick(k.Device, truncate(reason, 100))
}
