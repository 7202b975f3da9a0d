package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/meridian-iot/meridian/internal/redact"
)

// Timing of the connection to an external broker that is not configurable.
const (
	// connectRetryInterval is paho's pause between attempts of the first
	// connect (ConnectRetry). Later reconnects back off up to
	// mqtt.max_reconnect_interval; the first attempts stay brisk because a
	// node that just started usually raced a broker that is starting too.
	connectRetryInterval = 2 * time.Second
	// subscribeRetryFirst is the first pause before resubscribing after a
	// refused or unanswered SUBSCRIBE; it doubles up to
	// mqtt.max_reconnect_interval. A refusal (ACL) needs an operator, so
	// there is no point retrying faster than this.
	subscribeRetryFirst = time.Second
	// disconnectQuiesce is how long paho's Disconnect waits for work in
	// progress: the publisher has already waited for its in-flight
	// publishes (within mqtt.shutdown_grace), so this only covers the
	// DISCONNECT packet itself.
	disconnectQuiesce = 250 * time.Millisecond
)

// linkHooks are what the link calls into. They are set in New and called
// without any of the link's locks held.
type linkHooks struct {
	// receive gets every message from the broker, on paho's router
	// goroutine or the publishing client's goroutine (embedded broker): it
	// must not block.
	receive func(topic string, payload []byte)
	// wantRemote reports, at each connect, whether to subscribe to other
	// nodes' telemetry.
	wantRemote func() bool
	// ready runs once the subscriptions are in place, just before the link
	// reports itself connected: the publisher resynchronises the node's
	// state.
	ready func()
	// authenticate checks an operator's key on the embedded broker
	// (Options.Authenticate; nil refuses everyone).
	authenticate func(ctx context.Context, username, password string) Access
}

// link is the bridge's way to its broker: a paho client to an external
// broker, or the embedded broker itself, used in-process (broker.go). It
// owns the connection state (connected, and a channel closed while
// connected) under connMu, which is a leaf lock: nothing is called while it
// is held.
type link struct {
	cfg      Config
	t        topics
	node     string
	clientID string
	log      *slog.Logger
	m        *metrics
	hooks    linkHooks

	// subs tells whether any of the embedded broker's network clients could
	// receive telemetry; statuses holds its retained device statuses. Both
	// nil with an external broker; set in New.
	subs     *subIndex
	statuses *statusTable

	// Set by start, before any loop runs, and not changed after.
	// ctx is Run's context: broker callbacks and paho handlers have no
	// context of their own and stop waiting when it ends.
	ctx        context.Context
	client     paho.Client  // external broker only
	inproc     *mqtt.Server // the embedded broker; nil with an external one
	ctok       paho.Token   // the first connect, external broker only
	brokerAddr atomic.Value // string: the embedded broker's listen address

	connMu    sync.Mutex
	connected bool
	connCh    chan struct{} // closed while connected; replaced when lost
}

func newLink(cfg Config, node, clientID string, log *slog.Logger, m *metrics, hooks linkHooks) *link {
	l := &link{
		cfg:      cfg,
		t:        topics{prefix: cfg.TopicPrefix},
		node:     node,
		clientID: clientID,
		log:      log,
		m:        m,
		hooks:    hooks,
		connCh:   make(chan struct{}),
	}
	if cfg.embedded() {
		l.subs = newSubIndex(cfg.TopicPrefix)
		l.statuses = newStatusTable(l.t)
	}
	return l
}

// start starts the embedded broker (and is connected at once) or starts
// connecting to the external broker (paho keeps trying in the background).
// ctx is Run's context.
func (l *link) start(ctx context.Context) error {
	l.ctx = ctx
	if !l.cfg.embedded() {
		l.client = paho.NewClient(l.clientOptions(l.cfg.Username, l.cfg.Password))
		l.ctok = l.client.Connect() // ConnectRetry: keeps trying in the background
		return nil
	}
	srv, addr, err := l.startBroker()
	if err != nil {
		return err
	}
	l.brokerAddr.Store(addr)
	l.log.Info("embedded MQTT broker listening", "addr", addr)
	if err := l.subscribeInProcess(srv); err != nil {
		return errors.Join(err, srv.Close())
	}
	l.inproc = srv
	l.hooks.ready()
	l.setConnected(true)
	return nil
}

// stop disconnects (or closes the embedded broker) after the publisher has
// flushed. ctx bounds the wait for paho's connect loop.
func (l *link) stop(ctx context.Context) {
	if l.client != nil {
		l.client.Disconnect(uint(disconnectQuiesce.Milliseconds()))
	}
	l.setConnected(false)
	if l.ctok != nil {
		// With the broker unreachable, paho's connect loop ends after its
		// current attempt; wait for it (within the grace) so that nothing of
		// ours outlives Run.
		select {
		case <-l.ctok.Done():
		case <-ctx.Done():
		}
	}
	if l.inproc != nil {
		_ = l.inproc.Close()
	}
}

// inProcess reports whether publishing goes to the embedded broker
// in-process (set by start).
func (l *link) inProcess() bool { return l.inproc != nil }

// publishInProcess hands a message to the embedded broker, which queues it
// for each subscriber (dropping when a subscriber's queue is full, as for
// any client).
func (l *link) publishInProcess(m outMsg, qos byte) error {
	return l.inproc.Publish(m.topic, m.payload, m.retain, qos)
}

// publishClient hands a message to paho; the token completes at PUBACK.
func (l *link) publishClient(m outMsg, qos byte) paho.Token {
	return l.client.Publish(m.topic, qos, m.retain, m.payload)
}

// clientOptions are the paho settings; docs/mqtt.md explains each choice.
func (l *link) clientOptions(user, pass string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker(l.cfg.URL).
		SetClientID(l.clientID).
		SetUsername(user).
		SetPassword(pass).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetStore(paho.NewMemoryStore()).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(connectRetryInterval).
		SetMaxReconnectInterval(l.cfg.MaxReconnectInterval).
		SetResumeSubs(false).
		SetKeepAlive(l.cfg.KeepAlive).
		SetPingTimeout(min(l.cfg.KeepAlive, l.cfg.WriteTimeout)).
		SetWriteTimeout(l.cfg.WriteTimeout).
		SetConnectTimeout(l.cfg.WriteTimeout).
		SetMaxResumePubInFlight(pubWindow).
		SetBinaryWill(l.t.node(l.node), []byte("offline"), 1, true).
		SetOnConnectHandler(l.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			l.setConnected(false)
			l.log.Warn("MQTT connection lost; reconnecting", "broker", redact.URL(l.cfg.URL), "err", err)
		})
}

func (l *link) onConnect(c paho.Client) {
	l.log.Info("MQTT connected", "broker", redact.URL(l.cfg.URL), "client_id", l.clientID)
	remote := l.hooks.wantRemote()
	// paho runs this handler on its own goroutine, so waiting here is fine.
	// Subscriptions are made on every connect (CleanSession: the broker
	// forgot them) and retried while the connection stays up.
	for wait := subscribeRetryFirst; ; wait = min(2*wait, l.cfg.MaxReconnectInterval) {
		tok := c.SubscribeMultiple(l.t.subscriptions(remote), l.onMessage)
		err := subscribeErr(tok, l.cfg.WriteTimeout)
		if err == nil {
			break
		}
		l.log.Error("MQTT subscribe failed; retrying", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-l.ctx.Done():
			t.Stop()
			return // Run is ending: no point subscribing
		}
		if !c.IsConnectionOpen() {
			return // the next connect subscribes again
		}
	}
	l.hooks.ready()
	l.setConnected(true)
}

// onMessage is paho's handler for every subscription. It only hands the
// message on (receive enqueues without blocking): a blocked handler would
// stall paho's router (and, with OrderMatters, the keep-alive).
func (l *link) onMessage(_ paho.Client, msg paho.Message) {
	l.hooks.receive(msg.Topic(), msg.Payload())
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

func (l *link) setConnected(up bool) {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	if up == l.connected {
		return
	}
	l.connected = up
	if up {
		close(l.connCh)
		l.m.connected.Set(1)
	} else {
		l.connCh = make(chan struct{})
		l.m.connected.Set(0)
	}
}

// state returns whether the link is connected and a channel closed once
// it is.
func (l *link) state() (bool, chan struct{}) {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	return l.connected, l.connCh
}

// up reports whether the link is connected with its subscriptions in
// place.
func (l *link) up() bool {
	up, _ := l.state()
	return up
}

// waitUp blocks until the link is connected or ctx ends.
func (l *link) waitUp(ctx context.Context) bool {
	for {
		up, ch := l.state()
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
