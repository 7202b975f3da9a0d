package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Devices is what the bridge needs from the device endpoint of this node
// (ingest.Server fits). Its methods must return quickly without blocking:
// they are called from the bridge's single worker goroutine, and
// SendCommand also from Send and the HTTP handler for a device on this
// node.
type Devices interface {
	// SendCommand queues c for the device's live session on this node. It
	// returns an error wrapping telemetry.ErrOffline when the device has no
	// session here, and one wrapping telemetry.ErrCommandQueueFull when the
	// session's queue is full.
	SendCommand(device string, c telemetry.Command) error
	// TakeOver closes the device's live session on this node because another
	// node took the device over (the device sees 1008 session_taken_over).
	TakeOver(device string)
	// Kick closes the device's live session on this node with 1008 and the
	// reason: another node disabled or deleted it or revoked its tokens.
	Kick(device, reason string)
}

// Access is what an embedded-broker client may do.
type Access int

const (
	// AccessNone refuses the connection.
	AccessNone Access = iota
	// AccessRead may subscribe to everything and publish only outside the
	// topic prefix (e.g. an API key with role viewer).
	AccessRead
	// AccessCommand may also publish <prefix>/<device>/commands (role
	// admin).
	AccessCommand
)

// Options are the optional collaborators of a Bridge.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Authenticate checks an MQTT client's credentials on the embedded
	// broker: the password is an operator API key, the username is free.
	// It returns what the key may do (viewer keys: AccessRead, admin keys:
	// AccessCommand). Nil refuses everyone but the bridge itself.
	Authenticate func(ctx context.Context, username, password string) Access
	// DeviceExists lets the HTTP command endpoint answer 404 for an unknown
	// device. Nil: every well-formed id is accepted.
	DeviceExists func(ctx context.Context, device string) (bool, error)
	// Now is the clock; tests may replace it. Defaults to time.Now.
	Now func() time.Time
}

// Bridge connects this node to MQTT: committed telemetry out, presence and
// ownership records, commands in, results out. It composes four parts,
// each with its own state and lock, and exposes their public API:
//
//   - link (link.go, broker.go): the connection to the broker, paho or the
//     embedded broker in-process;
//   - publisher (publisher.go, queue.go): everything published, telemetry
//     ring, records and events, by one goroutine;
//   - cluster (cluster.go): node membership, device ownership and kicks;
//   - router (router.go, http.go): commands, their queue, results, waiters.
//
// Lock order: none to keep, because no two of the parts' locks are ever
// held at once (the package comment says how); a part that needs another
// (the router asks the cluster who holds a device, the publisher takes the
// cluster's records) calls it with its own lock released.
type Bridge struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	m    *metrics
	t    topics
	node string
	devs Devices

	link    *link
	pub     *publisher
	cluster *cluster
	cmds    *router

	// The worker's queues (worker.go): control messages from the broker,
	// and other nodes' telemetry. Both bounded; full queues drop (counted).
	inbound  chan inMsg
	remoteIn chan inMsg
	remoteFn atomic.Pointer[func(telemetry.Batch)]
	ran      atomic.Bool
}

// New builds a Bridge; call Run to connect. devs is this node's device
// endpoint.
func New(cfg Config, devs Devices, opts Options) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Disabled() {
		return nil, errors.New("bridge: disabled by config (mqtt.url empty and mqtt.embedded.enabled false)")
	}
	if devs == nil {
		return nil, errors.New("bridge: Devices is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	node := cfg.Node
	if node == "" {
		h, err := os.Hostname()
		if err != nil || !validLevel(h) {
			return nil, fmt.Errorf("mqtt.node: empty and the host name %q is not usable; set it", h)
		}
		node = h
	}
	clientID := cfg.ClientID
	if clientID == "" {
		clientID = "meridian-" + node
	}
	b := &Bridge{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Logger.With("component", "mqtt", "node", node),
		t:        topics{prefix: cfg.TopicPrefix},
		node:     node,
		devs:     devs,
		inbound:  make(chan inMsg, inboundSize),
		remoteIn: make(chan inMsg, remoteSize),
	}
	telem := newRing(cfg.QueueSize)
	b.m = newMetrics(opts.Registerer, func() float64 { return float64(telem.len()) })
	// The parts call each other through these closures only once New has
	// returned (Presence, Run).
	b.cluster = newCluster(node, opts.Now, b.log, func() { b.pub.notify() })
	b.link = newLink(cfg, node, clientID, b.log, b.m, linkHooks{
		receive:      b.receive,
		wantRemote:   b.wantRemote,
		ready:        func() { b.pub.linkUp() },
		authenticate: opts.Authenticate,
	})
	b.pub = newPublisher(cfg, node, telem, b.link, b.cluster, b.m, b.log)
	b.cmds = newRouter(cfg.CommandQueue, devs, b.cluster, b.pub, b.link, opts.Now, b.m, b.log)
	return b, nil
}

func randomHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(buf)
}

// BrokerAddr is the embedded broker's address once Run has started it
// (useful with mqtt.embedded.listen port 0), else "".
func (b *Bridge) BrokerAddr() string {
	s, _ := b.link.brokerAddr.Load().(string)
	return s
}

// Node is this bridge's node name.
func (b *Bridge) Node() string { return b.node }

// OnRemoteBatch registers fn to receive batches committed by OTHER nodes
// (read from their telemetry messages), e.g. to feed this node's live
// dashboard. Call before Run. fn is called from one goroutine, in arrival
// order; it must not block for long (a full remote queue drops messages).
func (b *Bridge) OnRemoteBatch(fn func(telemetry.Batch)) {
	b.remoteFn.Store(&fn)
}

// wantRemote: subscribe to other nodes' telemetry? Only with a consumer,
// and only batch messages carry the node that committed them.
func (b *Bridge) wantRemote() bool {
	return b.remoteFn.Load() != nil && b.cfg.Telemetry.Layout != LayoutReading
}

// Committed queues a committed batch for publishing. It never blocks: when
// the queue is full the oldest batch is dropped and counted. Wire it to
// ingest's Options.Committed.
func (b *Bridge) Committed(bt telemetry.Batch) { b.pub.committed(bt) }

// Presence records a device session opening or closing on this node and
// publishes its status and ownership. It never blocks. Wire it to ingest's
// Options.Presence.
func (b *Bridge) Presence(p telemetry.Presence) {
	if !validDevice(p.Device) {
		return
	}
	if !p.Online {
		b.cluster.close(p.Device, p.At)
		return
	}
	// The cluster first: the router's hand-over to a device that just came
	// online relies on this order (router.enqueue).
	b.cluster.open(p.Device, p.At)
	b.cmds.online(p.Device)
}

// Result publishes a device's answer to a command (and completes a waiting
// HTTP request). It never blocks. Wire it to ingest's Options.Results.
func (b *Bridge) Result(r telemetry.CommandResult) {
	if !validDevice(r.Device) || checkID(r.ID) != nil {
		// The id becomes a topic level; a device cannot choose where its
		// answer is published.
		b.m.dropped.WithLabelValues("bad_result_id").Inc()
		b.log.Debug("result with unusable id dropped", "device", r.Device)
		return
	}
	b.cmds.emitResult(r.Device, fromResult(r))
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
	b.pub.send(b.cluster.kickMessage(b.t, device, reason))
}

// Connected reports whether the bridge currently has a broker connection
// with its subscriptions in place.
func (b *Bridge) Connected() bool { return b.link.up() }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Run connects to the broker (starting the embedded one first if
// configured) and runs until ctx ends; then it publishes "offline" for the
// devices it holds and for the node, flushes queued telemetry, all within
// Config.ShutdownGrace, and disconnects. Run may be called once.
func (b *Bridge) Run(ctx context.Context) error {
	if b.ran.Swap(true) {
		return errors.New("bridge: Run called twice")
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if err := b.link.start(runCtx); err != nil {
		return err
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.workLoop(runCtx) }()
	go func() { defer wg.Done(); b.remoteLoop(runCtx) }()
	b.pub.loop(runCtx)
	wg.Wait()

	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.ShutdownGrace)
	defer cancel()
	b.shutdown(gctx)
	b.link.stop(gctx)
	return nil
}

// shutdown runs after the loops stopped: statuses of held devices go
// offline, the queued telemetry is flushed, the node says offline. All
// within ctx.
func (b *Bridge) shutdown(ctx context.Context) {
	if !b.link.up() {
		b.log.Warn("MQTT not connected at shutdown; device status stays as last published (the Last Will marks the node offline)")
		return
	}
	b.cluster.releaseAll()
	b.pub.flush(ctx)
}
