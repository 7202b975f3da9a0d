package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Devices is what the bridge needs from the device endpoint of this node
// (ingest.Server fits). Both methods must return quickly without blocking:
// they are called from the bridge's single command worker.
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
// ownership records, commands in, results out.
type Bridge struct {
	cfg      Config
	devs     Devices
	opts     Options
	log      *slog.Logger
	m        *metrics
	t        topics
	node     string
	clientID string
	// incarnation is random per process; claim session ids start with it,
	// so a node can tell its own live claims from those of a previous run.
	incarnation  string
	internalUser string
	internalPass string

	telem    *ring
	events   chan outMsg // results, errors, forwarded commands (bounded)
	inbound  chan inMsg  // control messages from the broker (bounded)
	remoteIn chan inMsg  // other nodes' telemetry (bounded)
	wake     chan struct{}
	pubWake  chan struct{}
	resync   atomic.Bool

	link link

	ran atomic.Bool
	// runCtx is Run's context, set before the broker starts or the client
	// connects: broker callbacks and paho handlers have no context of
	// their own and stop waiting when it ends.
	runCtx context.Context

	// mu guards own and cmdq. Never held while calling Devices, publishing
	// or calling user callbacks.
	mu       sync.Mutex
	own      ownership
	cmdq     commandQueue
	remoteFn func(telemetry.Batch)
}

// link is the bridge's way to its broker: a paho client to an external
// broker, or the embedded broker itself, used in-process.
type link struct {
	connMu    sync.Mutex
	connected bool
	connCh    chan struct{} // closed while connected; replaced when lost
	client    paho.Client   // external broker only
	brokerURL string        // the URL the client dials (resolved in Run)
	// inproc is the embedded broker, published to and subscribed on
	// in-process (no client connection, no loopback TCP); nil with an
	// external broker. subs tells whether any of its network clients could
	// receive telemetry; statuses holds its retained device statuses.
	// subs and statuses are set in New, inproc before the loops start.
	inproc     *mqtt.Server
	subs       *subIndex
	statuses   *statusTable
	brokerAddr atomic.Value // string: the embedded broker's listen address
}

// ownership is this node's view of who holds which device (docs/scaling.md
// "Cluster protocol"), and the status and ownership records it has yet to
// publish. Guarded by Bridge.mu.
type ownership struct {
	held    map[string]*holding  // devices with a live session on this node
	claims  map[string]claim     // last ownership record seen per device
	nodes   map[string]bool      // node name → online, from node status topics
	pending map[string]statusPub // status/ownership to publish; latest wins
	seq     uint64               // last claim number of this incarnation
}

// commandQueue holds commands waiting for offline devices and the HTTP
// requests waiting for results. Guarded by Bridge.mu.
type commandQueue struct {
	deliver map[string]struct{} // devices that came online with queued commands
	queued  map[string][]queuedCmd
	nQueued int
	waiters map[waitKey]chan resultJSON
}

type holding struct {
	claim  string // session id of our claim
	echoed bool   // our claim came back from the broker (see handleSession)
}

type statusPub struct {
	status string // "online", "offline" or "" (none)
	claim  *claim
}

type queuedCmd struct {
	cmd command
	at  time.Time
}

type waitKey struct{ device, id string }

type outMsg struct {
	topic   string
	payload []byte
	retain  bool
	kind    string
}

type inMsg struct {
	kind    inKind
	subject string // device or node
	payload []byte
}

// Queue sizes for the inbound side. The control queue must absorb the burst
// of retained status and ownership records a (re)subscribe delivers: two
// per device, so 32,768 covers a 16k-device fleet arriving faster than the
// worker drains it (it handles each in microseconds).
const (
	inboundSize  = 32_768
	remoteSize   = 4_096
	eventsSize   = 4_096
	pubWindow    = 64 // publishes in flight before the publisher waits for acks
	pendingBatch = 256
)

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
		cfg:          cfg,
		devs:         devs,
		opts:         opts,
		log:          opts.Logger.With("component", "mqtt", "node", node),
		t:            topics{prefix: cfg.TopicPrefix},
		node:         node,
		clientID:     clientID,
		incarnation:  randomHex(6),
		internalUser: "meridian-bridge",
		internalPass: randomHex(32),
		telem:        newRing(cfg.QueueSize),
		events:       make(chan outMsg, eventsSize),
		inbound:      make(chan inMsg, inboundSize),
		remoteIn:     make(chan inMsg, remoteSize),
		wake:         make(chan struct{}, 1),
		pubWake:      make(chan struct{}, 1),
		link:         link{connCh: make(chan struct{})},
		own: ownership{
			held:    make(map[string]*holding),
			claims:  make(map[string]claim),
			nodes:   make(map[string]bool),
			pending: make(map[string]statusPub),
		},
		cmdq: commandQueue{
			deliver: make(map[string]struct{}),
			queued:  make(map[string][]queuedCmd),
			waiters: make(map[waitKey]chan resultJSON),
		},
	}
	if cfg.embedded() {
		b.link.subs = newSubIndex(cfg.TopicPrefix)
		b.link.statuses = newStatusTable(b.t)
	}
	b.m = newMetrics(opts.Registerer, func() float64 { return float64(b.telem.len()) })
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
	b.mu.Lock()
	b.remoteFn = fn
	b.mu.Unlock()
}

// Committed queues a committed batch for publishing. It never blocks: when
// the queue is full the oldest batch is dropped and counted. Wire it to
// ingest's Options.Committed.
func (b *Bridge) Committed(bt telemetry.Batch) {
	if b.link.subs != nil && !b.telemetryWanted() {
		// Embedded broker and nobody who could receive it: the batch is
		// neither queued nor encoded.
		b.m.skipped.Inc()
		return
	}
	if b.telem.push(bt) {
		b.m.dropped.WithLabelValues("queue_full").Inc()
	}
}

// telemetryWanted reports whether a committed batch can reach anyone on
// the embedded broker: a network client's filter could match its topics,
// or per-reading messages are retained (kept for later subscribers).
func (b *Bridge) telemetryWanted() bool {
	layout := b.cfg.Telemetry.Layout
	if layout != LayoutBatch && b.cfg.Telemetry.Retain {
		return true
	}
	s := b.link.subs.snap.Load()
	switch layout {
	case LayoutBatch:
		return s.batch
	case LayoutReading:
		return s.under
	}
	return s.batch || s.under
}

// Presence records a device session opening or closing on this node and
// publishes its status and ownership. It never blocks. Wire it to ingest's
// Options.Presence.
func (b *Bridge) Presence(p telemetry.Presence) {
	if !validDevice(p.Device) {
		return
	}
	b.mu.Lock()
	if p.Online {
		b.own.seq++
		sid := b.incarnation + "." + strconv.FormatUint(b.own.seq, 10)
		b.own.held[p.Device] = &holding{claim: sid}
		b.own.pending[p.Device] = statusPub{status: "online", claim: &claim{Node: b.node, Session: sid, Online: true, At: p.At}}
		if len(b.cmdq.queued[p.Device]) > 0 {
			b.cmdq.deliver[p.Device] = struct{}{}
			signal(b.wake)
		}
	} else {
		h := b.own.held[p.Device]
		delete(b.own.held, p.Device)
		c, known := b.own.claims[p.Device]
		switch {
		case h == nil:
			// Already released: another node took the device over and
			// publishes its status.
		case known && c.Node != b.node && c.Online:
			// A newer claim by another node: its status stands.
		default:
			b.own.pending[p.Device] = statusPub{status: "offline", claim: &claim{Node: b.node, Session: h.claim, Online: false, At: p.At}}
		}
	}
	b.mu.Unlock()
	signal(b.pubWake)
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
	b.emitResult(r.Device, fromResult(r))
}

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
	b.runCtx = runCtx
	var ctok paho.Token
	if b.cfg.embedded() {
		srv, addr, err := b.startBroker()
		if err != nil {
			return err
		}
		defer func() { _ = srv.Close() }()
		b.link.brokerAddr.Store(addr)
		b.log.Info("embedded MQTT broker listening", "addr", addr)
		if err := b.subscribeInProcess(srv); err != nil {
			return err
		}
		b.link.inproc = srv
		b.resync.Store(true)
		b.setConnected(true)
	} else {
		b.link.brokerURL = b.cfg.URL
		b.link.client = paho.NewClient(b.clientOptions(b.cfg.Username, b.cfg.Password))
		ctok = b.link.client.Connect() // ConnectRetry: keeps trying in the background
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.workLoop(runCtx) }()
	go func() { defer wg.Done(); b.remoteLoop(runCtx) }()
	p := &publisher{b: b}
	p.loop(runCtx)
	wg.Wait()

	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.ShutdownGrace)
	defer cancel()
	b.shutdown(gctx, p)
	if b.link.client != nil {
		b.link.client.Disconnect(250)
	}
	b.setConnected(false)
	if ctok != nil {
		// With the broker unreachable, paho's connect loop ends after its
		// current attempt; wait for it (within the grace) so that nothing of
		// ours outlives Run.
		select {
		case <-ctok.Done():
		case <-gctx.Done():
		}
	}
	return nil
}

// clientOptions are the paho settings; docs/mqtt.md explains each choice.
func (b *Bridge) clientOptions(user, pass string) *paho.ClientOptions {
	o := paho.NewClientOptions().
		AddBroker(b.link.brokerURL).
		SetClientID(b.clientID).
		SetUsername(user).
		SetPassword(pass).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetStore(paho.NewMemoryStore()).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(2*time.Second).
		SetMaxReconnectInterval(b.cfg.MaxReconnectInterval).
		SetResumeSubs(false).
		SetKeepAlive(b.cfg.KeepAlive).
		SetPingTimeout(min(b.cfg.KeepAlive, b.cfg.WriteTimeout)).
		SetWriteTimeout(b.cfg.WriteTimeout).
		SetConnectTimeout(b.cfg.WriteTimeout).
		SetMaxResumePubInFlight(pubWindow).
		SetBinaryWill(b.t.node(b.node), []byte("offline"), 1, true).
		SetOnConnectHandler(b.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			b.setConnected(false)
			b.log.Warn("MQTT connection lost; reconnecting", "broker", redactURL(b.link.brokerURL), "err", err)
		})
	return o
}

func (b *Bridge) onConnect(c paho.Client) {
	b.log.Info("MQTT connected", "broker", redactURL(b.link.brokerURL), "client_id", b.clientID)
	b.mu.Lock()
	remote := b.remoteFn != nil && b.cfg.Telemetry.Layout != LayoutReading
	b.mu.Unlock()
	// paho runs this handler on its own goroutine, so waiting here is fine.
	// Subscriptions are made on every connect (CleanSession: the broker
	// forgot them) and retried while the connection stays up.
	for wait := time.Second; ; wait = min(2*wait, b.cfg.MaxReconnectInterval) {
		tok := c.SubscribeMultiple(b.t.subscriptions(remote), b.onMessage)
		err := subscribeErr(tok, b.cfg.WriteTimeout)
		if err == nil {
			break
		}
		b.log.Error("MQTT subscribe failed; retrying", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.runCtx.Done():
			t.Stop()
			return // Run is ending: no point subscribing
		}
		if !c.IsConnectionOpen() {
			return // the next connect subscribes again
		}
	}
	b.resync.Store(true)
	b.setConnected(true)
	signal(b.pubWake)
}

// onMessage is paho's handler for every subscription. It only classifies
// and enqueues without blocking: a blocked handler would stall paho's
// router (and, with OrderMatters, the keep-alive).
func (b *Bridge) onMessage(_ paho.Client, msg paho.Message) {
	b.receive(msg.Topic(), msg.Payload())
}

// receive classifies one message from the broker and enqueues it without
// blocking (full queues drop and count).
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

// subscribeErr waits for a SUBSCRIBE and checks every granted QoS: a
// broker refuses a filter (ACL) with 0x80 rather than an error.
func subscribeErr(tok paho.Token, timeout time.Duration) error {
	if !tok.WaitTimeout(timeout) {
		return errors.New("no SUBACK in time")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for filter, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("broker refused subscription %q", filter)
			}
		}
	}
	return nil
}

func (b *Bridge) setConnected(up bool) {
	b.link.connMu.Lock()
	defer b.link.connMu.Unlock()
	if up == b.link.connected {
		return
	}
	b.link.connected = up
	if up {
		close(b.link.connCh)
		b.m.connected.Set(1)
	} else {
		b.link.connCh = make(chan struct{})
		b.m.connected.Set(0)
	}
}

// connState returns whether the client is connected and a channel closed
// once it is.
func (b *Bridge) connState() (bool, chan struct{}) {
	b.link.connMu.Lock()
	defer b.link.connMu.Unlock()
	return b.link.connected, b.link.connCh
}

// Connected reports whether the bridge currently has a broker connection
// with its subscriptions in place.
func (b *Bridge) Connected() bool {
	up, _ := b.connState()
	return up
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
			b.mu.Lock()
			fn := b.remoteFn
			b.mu.Unlock()
			if fn != nil {
				b.m.remote.Inc()
				fn(rb.Batch)
			}
		}
	}
}

// sendEvent queues a one-off publish; a full queue drops it (counted).
func (b *Bridge) sendEvent(m outMsg) bool {
	select {
	case b.events <- m:
		signal(b.pubWake)
		return true
	default:
		b.m.dropped.WithLabelValues("events_full").Inc()
		return false
	}
}

// shutdown runs after the loops stopped: statuses of held devices go
// offline, the queued telemetry is flushed, the node says offline. All
// within ctx.
func (b *Bridge) shutdown(ctx context.Context, p *publisher) {
	if up, _ := b.connState(); !up {
		b.log.Warn("MQTT not connected at shutdown; device status stays as last published (the Last Will marks the node offline)")
		return
	}
	now := b.opts.Now().UnixMilli()
	b.mu.Lock()
	for dev, h := range b.own.held {
		if c, ok := b.own.claims[dev]; ok && c.Node != b.node && c.Online {
			continue
		}
		b.own.pending[dev] = statusPub{status: "offline", claim: &claim{Node: b.node, Session: h.claim, Online: false, At: now}}
	}
	clear(b.own.held)
	b.mu.Unlock()
	for p.publishPending(ctx) {
	}
	p.drainEvents(ctx)
	for ctx.Err() == nil {
		bt, ok := b.telem.pop()
		if !ok {
			break
		}
		p.publishBatch(ctx, bt)
	}
	p.publish(ctx, outMsg{topic: b.t.node(b.node), payload: []byte("offline"), retain: true, kind: "node"}, 1)
	p.waitAll(ctx)
}
