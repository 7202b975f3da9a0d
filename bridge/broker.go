package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// authTimeout bounds one API key check during an MQTT CONNECT (it may hit
// the database).
const authTimeout = 5 * time.Second

// startBroker starts the embedded broker and returns it with the address
// a client should dial (BrokerAddr).
func (l *link) startBroker() (*mqtt.Server, string, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	// Sessions of clients that asked for a persistent session (clean=false)
	// would otherwise be kept forever, with their queued messages, in this
	// process's memory. One hour covers a client's restart.
	caps.MaximumSessionExpiryInterval = 3600
	srv := mqtt.New(&mqtt.Options{
		Logger:       slog.New(redactPackets{l.log.Handler()}).With("component", "mqtt-broker"),
		Capabilities: caps,
		// The bridge publishes and subscribes in-process through the inline
		// client: no connection of its own, no loopback TCP, no encoding
		// and parsing of MQTT packets on its side.
		InlineClient: true,
	})
	if err := srv.AddHook(&authHook{l: l, access: make(map[*mqtt.Client]Access)}, nil); err != nil {
		return nil, "", fmt.Errorf("embedded broker: add auth hook: %w", err)
	}
	if err := srv.AddHook(l.subs, nil); err != nil {
		return nil, "", fmt.Errorf("embedded broker: add subscription hook: %w", err)
	}
	if err := srv.AddHook(l.statuses, nil); err != nil {
		return nil, "", fmt.Errorf("embedded broker: add status hook: %w", err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "meridian-tcp", Address: l.cfg.Embedded.Listen})
	if err := srv.AddListener(tcp); err != nil {
		return nil, "", fmt.Errorf("embedded broker: listen on %s (mqtt.embedded.listen): %w", l.cfg.Embedded.Listen, err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return nil, "", fmt.Errorf("embedded broker: serve: %w", err)
	}
	return srv, dialAddr(tcp.Address()), nil
}

// subscribeInProcess subscribes the bridge to commands on the embedded
// broker. Only commands: this broker serves this node alone (scaling.md),
// so there are no other nodes' ownership records, statuses, results,
// kicks or telemetry to follow, and no session records are published.
// The handler runs on the publishing client's goroutine and only enqueues.
func (l *link) subscribeInProcess(srv *mqtt.Server) error {
	filter := l.t.prefix + "/+/commands"
	err := srv.Subscribe(filter, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		l.hooks.receive(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return fmt.Errorf("embedded broker: subscribe %s: %w", filter, err)
	}
	return nil
}

// dialAddr turns a listen address into one to connect to: a wildcard host
// becomes loopback.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// authHook is the embedded broker's only authority: operators connect with
// an API key as password (any username); the bridge itself needs no
// credential (inline client). Anonymous connections are refused. What
// each connected client may do is kept per client until it disconnects.
type authHook struct {
	mqtt.HookBase
	l      *link
	mu     sync.Mutex
	access map[*mqtt.Client]Access
}

func (h *authHook) ID() string { return "meridian-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	a := h.authenticate(pk)
	if a == AccessNone {
		h.l.m.authFailed.Inc()
		// The remote address only: never the password.
		h.l.log.Info("mqtt broker: connection refused", "remote", cl.Net.Remote, "client_id", pk.Connect.ClientIdentifier)
		return false
	}
	h.mu.Lock()
	h.access[cl] = a
	h.mu.Unlock()
	return true
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	delete(h.access, cl)
	h.mu.Unlock()
}

// reservedUser is refused on the embedded broker (docs/mqtt.md): it named
// the bridge's own client when that connected over loopback, and a client
// taking it could pass for the bridge in the broker's logs.
const reservedUser = "meridian-bridge"

func (h *authHook) authenticate(pk packets.Packet) Access {
	l := h.l
	user := string(pk.Connect.Username)
	if user == reservedUser {
		return AccessNone
	}
	// The node's client id (mqtt.client_id) is reserved too: it names this
	// node at brokers, and a client using it could pass for the node.
	if pk.Connect.ClientIdentifier == l.clientID {
		return AccessNone
	}
	if !pk.Connect.PasswordFlag || len(pk.Connect.Password) == 0 || l.hooks.authenticate == nil {
		return AccessNone
	}
	ctx, cancel := context.WithTimeout(l.ctx, authTimeout)
	defer cancel()
	switch a := l.hooks.authenticate(ctx, user, string(pk.Connect.Password)); a {
	case AccessRead, AccessCommand:
		return a
	}
	return AccessNone
}

// OnACLCheck: the bridge itself publishes through mochi's inline client,
// which skips this check. Operators may subscribe to anything and publish
// anywhere outside the prefix; inside it, only AccessCommand clients and
// only to <prefix>/<device>/commands. Telemetry,
// status, ownership and results under the prefix come from Meridian nodes
// only, so a key holder cannot forge readings that other nodes would show
// on their dashboards.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	h.mu.Lock()
	a, ok := h.access[cl]
	h.mu.Unlock()
	switch {
	case !ok:
		return false
	case !write:
		return true
	}
	p := h.l.cfg.TopicPrefix
	rest, under := strings.CutPrefix(topic, p+"/")
	if !under {
		return topic != p
	}
	dev, tail, _ := strings.Cut(rest, "/")
	return a == AccessCommand && tail == "commands" && validDevice(dev)
}

// redactPackets drops the whole-packet attributes mochi adds to some log
// lines ("pk", "packet"): a packet can be a CONNECT carrying an API key.
type redactPackets struct{ h slog.Handler }

func (r redactPackets) Enabled(ctx context.Context, l slog.Level) bool { return r.h.Enabled(ctx, l) }

func (r redactPackets) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, rec.Message, rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" {
			out.AddAttrs(a)
		}
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r redactPackets) WithAttrs(as []slog.Attr) slog.Handler {
	keep := as[:0:0]
	for _, a := range as {
		if a.Key != "pk" && a.Key != "packet" {
			keep = append(keep, a)
		}
	}
	return redactPackets{r.h.WithAttrs(keep)}
}

func (r redactPackets) WithGroup(name string) slog.Handler { return redactPackets{r.h.WithGroup(name)} }
