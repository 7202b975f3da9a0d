package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// fakeDevices is a fake of the bridge's own Devices interface.
type fakeDevices struct {
	mu     sync.Mutex
	online map[string]bool
	busy   bool
	cmds   chan sentCommand
	kicks  chan string
}

type sentCommand struct {
	device string
	cmd    telemetry.Command
}

func newFakeDevices() *fakeDevices {
	return &fakeDevices{online: map[string]bool{}, cmds: make(chan sentCommand, 64), kicks: make(chan string, 16)}
}

func (f *fakeDevices) set(device string, up bool) {
	f.mu.Lock()
	f.online[device] = up
	f.mu.Unlock()
}

func (f *fakeDevices) SendCommand(device string, c telemetry.Command) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.online[device] {
		return fmt.Errorf("send to %s: %w", device, telemetry.ErrOffline) // wrapped, as a real target may
	}
	if f.busy {
		return telemetry.ErrCommandQueueFull
	}
	f.cmds <- sentCommand{device, c}
	return nil
}

func (f *fakeDevices) TakeOver(device string) { f.Kick(device, "session taken over") }

func (f *fakeDevices) Kick(device, reason string) {
	f.mu.Lock()
	f.online[device] = false
	f.mu.Unlock()
	f.kicks <- device + ":" + reason
}

// connect links a fake device to the bridge the way ingest does.
func connect(b *Bridge, f *fakeDevices, device string) {
	f.set(device, true)
	b.Presence(telemetry.Presence{Device: device, Online: true, At: time.Now().UnixMilli()})
}

func disconnect(b *Bridge, f *fakeDevices, device string) {
	f.set(device, false)
	b.Presence(telemetry.Presence{Device: device, Online: false, At: time.Now().UnixMilli()})
}

func randomPrefix() string { return "mtest/" + randomHex(6) }

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startBridge runs a bridge until the test ends and waits for its broker
// connection.
func startBridge(t *testing.T, cfg Config, devs Devices, mod func(*Options)) *Bridge {
	t.Helper()
	b, _ := startBridgeStop(t, cfg, devs, mod)
	return b
}

// startStoppable is startBridge with a stop function that cancels Run and
// waits for it.
func startStoppable(t *testing.T, cfg Config, devs Devices) (*Bridge, func()) {
	t.Helper()
	return startBridgeStop(t, cfg, devs, nil)
}

func startBridgeStop(t *testing.T, cfg Config, devs Devices, mod func(*Options)) (*Bridge, func()) {
	t.Helper()
	return runBridge(t, newBridge(t, cfg, devs, mod))
}

func newBridge(t testing.TB, cfg Config, devs Devices, mod func(*Options)) *Bridge {
	t.Helper()
	opts := Options{
		Logger:     testLogger(t),
		Registerer: prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&opts)
	}
	b, err := New(cfg, devs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runBridge runs b until the test ends (or stop is called) and waits for
// its broker connection.
func runBridge(t testing.TB, b *Bridge) (*Bridge, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for !b.Connected() {
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("bridge did not connect within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return b, stop
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func externalConfig(url, prefix, node string) Config {
	c := DefaultConfig()
	c.URL = url
	c.TopicPrefix = prefix
	c.Node = node
	c.ClientID = "meridian-test-" + node + "-" + randomHex(4)
	c.ShutdownGrace = 2 * time.Second
	return c
}

type message struct {
	topic    string
	payload  string
	retained bool
}

// watch subscribes a plain MQTT client to filter and returns what arrives.
func watch(t *testing.T, url, user, pass, filter string) chan message {
	t.Helper()
	ch := make(chan message, 256)
	c := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("watch-" + randomHex(6)).
		SetUsername(user).SetPassword(pass).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		select {
		case ch <- message{m.Topic(), string(m.Payload()), m.Retained()}:
		default:
		}
	})
	if err := subscribeErr(tok, 5*time.Second); err != nil {
		t.Fatalf("watcher subscribe %s: %v", filter, err)
	}
	return ch
}

func publish(t *testing.T, url, topic, payload string) {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("pub-" + randomHex(6)))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// next waits for a message on topic (others are skipped).
func next(t *testing.T, ch chan message, topic string) message {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-ch:
			if m.topic == topic {
				return m
			}
		case <-timeout:
			t.Fatalf("no message on %s within 5s", topic)
		}
	}
}

// nextPayload waits for a message on topic with the given payload.
func nextPayload(t *testing.T, ch chan message, topic, payload string) message {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-ch:
			if m.topic == topic && m.payload == payload {
				return m
			}
		case <-timeout:
			t.Fatalf("no %q on %s within 5s", payload, topic)
		}
	}
}

// clearRetained removes the retained records a test leaves on the shared
// broker.
func clearRetained(t *testing.T, url string, topics ...string) {
	t.Cleanup(func() {
		c := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("clr-" + randomHex(6)))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			return
		}
		defer c.Disconnect(100)
		for _, tp := range topics {
			c.Publish(tp, 1, true, []byte{}).WaitTimeout(time.Second)
		}
	})
}

// retainedTopics lists the retained topics of devices and nodes.
func retainedTopics(prefix string, devices, nodes []string) []string {
	var out []string
	for _, d := range devices {
		out = append(out, prefix+"/"+d+"/status", prefix+"/"+d+"/session")
	}
	for _, n := range nodes {
		out = append(out, prefix+"/_nodes/"+n+"/status")
	}
	return out
}

// collect waits for the first message on each of topics, in any order.
func collect(t *testing.T, ch chan message, topics ...string) map[string]message {
	t.Helper()
	want := map[string]bool{}
	for _, tp := range topics {
		want[tp] = true
	}
	got := map[string]message{}
	timeout := time.After(5 * time.Second)
	for len(got) < len(want) {
		select {
		case m := <-ch:
			if _, seen := got[m.topic]; want[m.topic] && !seen {
				got[m.topic] = m
			}
		case <-timeout:
			t.Fatalf("within 5s got only %v of %v", got, topics)
		}
	}
	return got
}

// newEmbedded builds (does not run) a bridge with its own embedded broker
// on a free port, which lets goodKey in to read.
func newEmbedded(t testing.TB, mod func(*Config)) *Bridge {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Embedded.Listen = "127.0.0.1:0"
	cfg.Node = "n1"
	cfg.ShutdownGrace = 2 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	return newBridge(t, cfg, newFakeDevices(), func(o *Options) {
		o.Authenticate = func(_ context.Context, _, password string) Access {
			if password == goodKey {
				return AccessRead
			}
			return AccessNone
		}
	})
}

// subscribeFunc connects a plain MQTT client to b's embedded broker and
// calls fn with the payload of every message on filter.
func subscribeFunc(t testing.TB, b *Bridge, filter string, fn func([]byte)) {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.BrokerAddr()).SetClientID("sub-" + randomHex(6)).
		SetUsername("ops").SetPassword(goodKey).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { fn(m.Payload()) })
	if err := subscribeErr(tok, 5*time.Second); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}
