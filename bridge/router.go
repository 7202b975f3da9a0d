package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// router routes commands: it delivers them to a device on this node,
// answers for devices it is responsible for (offline, queued, malformed),
// keeps the queue of commands waiting for offline devices and hands it to
// the node a device reconnected to, expires it, publishes results, and
// completes the HTTP and Send callers waiting for a result.
//
// mu guards the queue and the waiters and is held only inside these
// methods, which call nothing outside the router while holding it: the
// cluster, the publisher and Devices are called after unlocking.
type router struct {
	cfg  CommandQueueConfig
	devs Devices
	clu  *cluster   // who holds a device, who answers for it
	pub  *publisher // results and forwarded commands go out as events
	link *link      // whether the broker is reachable (await)
	t    topics
	now  func() time.Time
	m    *metrics
	log  *slog.Logger
	// wake tells the worker that devices in deliver came online.
	wake chan struct{}

	mu      sync.Mutex
	deliver map[string]struct{} // devices that came online with queued commands
	queued  map[string][]queuedCmd
	nQueued int
	waiters map[waitKey]chan resultJSON
}

type queuedCmd struct {
	cmd command
	at  time.Time
}

type waitKey struct{ device, id string }

func newRouter(cfg CommandQueueConfig, devs Devices, clu *cluster, pub *publisher, l *link, now func() time.Time, m *metrics, log *slog.Logger) *router {
	return &router{
		cfg: cfg, devs: devs, clu: clu, pub: pub, link: l, t: l.t, now: now, m: m, log: log,
		wake:    make(chan struct{}, 1),
		deliver: make(map[string]struct{}),
		queued:  make(map[string][]queuedCmd),
		waiters: make(map[waitKey]chan resultJSON),
	}
}

// onCommand processes one message from <prefix>/<device>/commands.
// Every node receives it; only the node holding the device delivers it, and
// only the node responsible for the device (cluster.responsible) answers
// for an offline device or a malformed command, so exactly one answer is
// published when the nodes agree on who holds what.
func (r *router) onCommand(device string, payload []byte) {
	if !validDevice(device) {
		if r.clu.responsible(device) {
			r.answer(device, "", "invalid_device", "not a device id: lowercase letters, digits, _ . - (1-64)")
		}
		return
	}
	cmd, id, err := parseCommand(payload, true)
	if err != nil {
		if r.clu.responsible(device) {
			r.answer(device, id, "malformed", err.Error())
		}
		return
	}
	r.dispatch(device, cmd)
}

// dispatch delivers cmd if the device is here, else answers (offline or
// queued) if this node is responsible for it, else leaves it to the node
// that is.
func (r *router) dispatch(device string, cmd command) {
	if r.clu.holds(device) && !r.send(device, cmd) {
		return // delivered or answered
	}
	// Not here, or gone a moment ago: answered like any offline device.
	switch {
	case !r.clu.responsible(device):
		r.m.commands.WithLabelValues("ignored").Inc()
	case !cmd.Queue:
		r.answer(device, cmd.ID, "offline", "")
	case r.enqueue(device, cmd):
		r.m.commands.WithLabelValues("queued").Inc()
	default:
		r.answer(device, cmd.ID, "queue_full", "too many commands already wait for this device")
	}
}

// send gives cmd to the device's session on this node and answers a
// failure other than "offline"; it reports whether the device was offline
// (the caller decides what that means).
func (r *router) send(device string, cmd command) (offline bool) {
	err := r.devs.SendCommand(device, telemetry.Command{ID: cmd.ID, Name: cmd.Name, Payload: cmd.Payload})
	switch {
	case err == nil:
		r.m.commands.WithLabelValues("delivered").Inc()
	case errors.Is(err, telemetry.ErrOffline):
		return true
	case errors.Is(err, telemetry.ErrCommandQueueFull):
		r.answer(device, cmd.ID, "busy", "the device is not reading its commands")
	default:
		r.log.Warn("command delivery failed", "device", device, "err", err)
		r.answer(device, cmd.ID, "failed", err.Error())
	}
	return false
}

// answer counts an outcome and publishes it as the command's result; the
// outcome is also the result's error code.
func (r *router) answer(device, id, outcome, detail string) {
	r.m.commands.WithLabelValues(outcome).Inc()
	r.emitResult(device, resultJSON{ID: id, OK: false, Error: outcome, Detail: detail})
}

// enqueue keeps a command for an offline device, within the per-device and
// total bounds.
func (r *router) enqueue(device string, cmd command) bool {
	r.mu.Lock()
	q := r.queued[device]
	if len(q) >= r.cfg.MaxPerDevice || r.nQueued >= r.cfg.MaxTotal {
		r.mu.Unlock()
		return false
	}
	r.queued[device] = append(q, queuedCmd{cmd: cmd, at: r.now()})
	r.nQueued++
	r.mu.Unlock()
	// The device may have come online meanwhile. Presence records the
	// session (cluster.open) before looking at the queue (online), and this
	// queues before asking the cluster, so one of the two sees the other.
	if r.clu.holds(device) {
		r.online(device)
	}
	return true
}

// online is told that a device's session opened on this node (after the
// cluster recorded it): its queued commands, if any, are delivered by the
// worker.
func (r *router) online(device string) {
	r.mu.Lock()
	has := len(r.queued[device]) > 0
	if has {
		r.deliver[device] = struct{}{}
	}
	r.mu.Unlock()
	if has {
		signal(r.wake)
	}
}

// take removes and returns the device's queued commands.
func (r *router) take(device string) []queuedCmd {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queued[device]
	delete(r.queued, device)
	r.nQueued -= len(q)
	return q
}

// putBack returns commands that could not be delivered to the front of the
// device's queue, oldest first.
func (r *router) putBack(device string, q []queuedCmd) {
	r.mu.Lock()
	r.queued[device] = append(q, r.queued[device]...)
	r.nQueued += len(q)
	r.mu.Unlock()
}

// deliverQueued sends the queued commands of devices that came online.
func (r *router) deliverQueued() {
	r.mu.Lock()
	devs := make([]string, 0, len(r.deliver))
	for d := range r.deliver {
		devs = append(devs, d)
	}
	clear(r.deliver)
	r.mu.Unlock()
	for _, dev := range devs {
		if !r.clu.holds(dev) {
			continue // gone again: the queue waits for its next session
		}
		q := r.take(dev)
		for i, qc := range q {
			if r.send(dev, qc.cmd) {
				// Gone again: put the rest back for its next session.
				r.putBack(dev, q[i:])
				break
			}
		}
	}
}

// handOff republishes the device's queued commands because another node
// holds it now; that node delivers them (docs/scaling.md "Queued-command
// hand-off").
func (r *router) handOff(device string) {
	for _, q := range r.take(device) {
		r.forward(device, q.cmd)
	}
}

// forward republishes a queued command so that the node now holding the
// device delivers it.
func (r *router) forward(device string, cmd command) {
	data, _ := json.Marshal(commandJSON{ID: cmd.ID, Name: cmd.Name, Payload: cmd.JSON, Queue: true})
	if r.pub.send(outMsg{topic: r.t.commands(device), payload: data, kind: "command"}) {
		r.m.commands.WithLabelValues("forwarded").Inc()
	}
}

// expire answers queued commands older than MaxAge with "expired".
func (r *router) expire() {
	cutoff := r.now().Add(-r.cfg.MaxAge)
	var expired []waitKey
	r.mu.Lock()
	for dev, q := range r.queued {
		keep := q[:0]
		for _, qc := range q {
			if qc.at.Before(cutoff) {
				expired = append(expired, waitKey{dev, qc.cmd.ID})
				continue
			}
			keep = append(keep, qc)
		}
		r.nQueued -= len(q) - len(keep)
		if len(keep) == 0 {
			delete(r.queued, dev)
		} else {
			r.queued[dev] = keep
		}
	}
	r.mu.Unlock()
	for _, e := range expired {
		r.answer(e.device, e.id, "expired", "the device did not come online within mqtt.command_queue.max_age")
	}
}

// emitResult publishes a result (to the command's result topic, or the
// device's commands/error topic when no id is known) and completes a local
// waiter.
func (r *router) emitResult(device string, res resultJSON) {
	data, err := json.Marshal(res)
	if err != nil {
		r.m.dropped.WithLabelValues("encode").Inc()
		return
	}
	topic := r.t.commandError(device)
	if res.ID != "" {
		topic = r.t.result(device, res.ID)
		r.completeWaiter(device, res)
	}
	r.pub.send(outMsg{topic: topic, payload: data, kind: "result"})
}

// onResult completes a local waiter with a result another node published
// (<prefix>/<device>/commands/<id>/result).
func (r *router) onResult(device string, payload []byte) {
	var res resultJSON
	if json.Unmarshal(payload, &res) == nil && res.ID != "" {
		r.completeWaiter(device, res)
	}
}

func (r *router) completeWaiter(device string, res resultJSON) {
	k := waitKey{device, res.ID}
	r.mu.Lock()
	ch := r.waiters[k]
	delete(r.waiters, k)
	r.mu.Unlock()
	if ch != nil {
		ch <- res // 1-buffered, one sender: the waiter was just removed
	}
}

// await registers a waiter for the command's result, delivers it, and waits
// up to wait. got is false when no result came in time.
func (r *router) await(ctx context.Context, device string, cmd command, wait time.Duration) (res resultJSON, got bool, err error) {
	k := waitKey{device, cmd.ID}
	ch := make(chan resultJSON, 1)
	r.mu.Lock()
	if _, dup := r.waiters[k]; dup {
		r.mu.Unlock()
		return res, false, ErrDuplicateID
	}
	r.waiters[k] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.waiters[k] == ch {
			delete(r.waiters, k)
		}
		r.mu.Unlock()
	}()

	switch {
	case r.clu.holds(device):
		r.dispatch(device, cmd)
	case r.link.up():
		// Through the broker, so that whichever node holds the device
		// delivers it (this one included, if the device connects meanwhile).
		payload, _ := json.Marshal(commandJSON{ID: cmd.ID, Name: cmd.Name, Payload: cmd.JSON, Queue: cmd.Queue})
		if !r.pub.send(outMsg{topic: r.t.commands(device), payload: payload, kind: "command"}) {
			return res, false, ErrOverloaded
		}
	case r.clu.responsible(device):
		// No broker, but no other node could answer either.
		r.dispatch(device, cmd)
	default:
		return res, false, ErrBrokerUnavailable
	}

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case res := <-ch:
		return res, true, nil
	case <-timer.C:
		return res, false, nil
	case <-ctx.Done():
		return res, false, ctx.Err()
	}
}
