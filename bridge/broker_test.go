package bridge

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

const (
	goodKey   = "mak_test_key_0123456789abcdef0123456789"
	viewerKey = "mak_viewer_key_0123456789abcdef01234567"
)

func startEmbedded(t *testing.T) (*Bridge, string, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Embedded.Listen = "127.0.0.1:0"
	cfg.Node = "n1"
	cfg.ShutdownGrace = 2 * time.Second
	b := newBridge(t, cfg, newFakeDevices(), func(o *Options) {
		o.Authenticate = func(_ context.Context, _, password string) Access {
			switch password {
			case goodKey:
				return AccessCommand
			case viewerKey:
				return AccessRead
			}
			return AccessNone
		}
	})
	runBridge(t, b)
	return b, "tcp://" + b.BrokerAddr(), cfg.TopicPrefix
}

func tryConnect(url, clientID, user, pass string, withPass bool) error {
	o := paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID(clientID).SetConnectTimeout(3 * time.Second)
	if user != "" {
		o.SetUsername(user)
	}
	if withPass {
		o.SetPassword(pass)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		return context.DeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(50)
	return nil
}

func TestEmbeddedBrokerAuth(t *testing.T) {
	b, url, _ := startEmbedded(t)
	tests := []struct {
		name, clientID, user, pass string
		withPass                   bool
		ok                         bool
	}{
		{"api key", "c1", "ops", goodKey, true, true},
		{"api key any username", "c2", "node-red", goodKey, true, true},
		{"viewer key", "c2b", "grafana", viewerKey, true, true},
		{"anonymous", "c3", "", "", false, false},
		{"empty password", "c4", "ops", "", true, false},
		{"wrong key", "c5", "ops", "mak_wrong", true, false},
		{"internal user guessed", "c6", reservedUser, goodKey, true, false},
		{"bridge client id with key", b.link.clientID, "ops", goodKey, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tryConnect(url, tt.clientID, tt.user, tt.pass, tt.withPass)
			if tt.ok && err != nil {
				t.Fatalf("connect refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("connect accepted, want refused")
			}
			if !tt.ok && !strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password") {
				t.Fatalf("refused with %v, want an authorization error", err)
			}
		})
	}
	if !b.Connected() {
		t.Fatal("the bridge lost its own connection")
	}
}

func TestEmbeddedBrokerTelemetryAndCommands(t *testing.T) {
	b, url, prefix := startEmbedded(t)
	msgs := watch(t, url, "ops", goodKey, prefix+"/#")
	b.Committed(telemetry.Batch{Device: "d1", Seq: 1, Readings: []telemetry.Reading{{Time: 7, Metric: "temp", Value: 1}}})
	m := next(t, msgs, prefix+"/d1/telemetry")
	if m.payload != `{"device":"d1","seq":1,"node":"n1","readings":[{"t":7,"metric":"temp","value":1}]}` {
		t.Fatalf("telemetry %s", m.payload)
	}

	// An operator may publish commands...
	op := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("op").SetUsername("ops").SetPassword(goodKey))
	if tok := op.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer op.Disconnect(50)
	op.Publish(prefix+"/d1/commands", 1, false, `{"id":"c1","name":"x"}`).WaitTimeout(5 * time.Second)
	if m := next(t, msgs, prefix+"/d1/commands/c1/result"); m.payload != `{"id":"c1","ok":false,"error":"offline"}` {
		t.Fatalf("result %s", m.payload)
	}
	// ...and anything outside the prefix...
	other := watch(t, url, "ops", goodKey, "elsewhere/#")
	op.Publish("elsewhere/x", 1, false, `free`).WaitTimeout(5 * time.Second)
	next(t, other, "elsewhere/x")
	// ...but not forge telemetry or status under the prefix (QoS 0 is
	// dropped; at QoS 1 the broker disconnects a 3.1.1 client).
	op.Publish(prefix+"/d1/telemetry", 0, false, `{"device":"d1","seq":2,"node":"evil","readings":[]}`).WaitTimeout(5 * time.Second)
	op.Publish(prefix+"/d1/status", 0, true, `online`).WaitTimeout(5 * time.Second)
	op.Publish(prefix+"/d1/session", 1, true, `{"node":"evil","online":true}`).WaitTimeout(5 * time.Second)
	eventually(t, "the broker to disconnect a client publishing a forged record at QoS 1", func() bool { return !op.IsConnectionOpen() })

	// A viewer key may read but not command.
	viewer := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("viewer").SetUsername("v").SetPassword(viewerKey))
	if tok := viewer.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer viewer.Disconnect(50)
	viewer.Publish(prefix+"/d1/commands", 0, false, `{"id":"v1","name":"x"}`).WaitTimeout(5 * time.Second)
	timeout := time.After(300 * time.Millisecond)
	for {
		select {
		case m := <-msgs:
			if m.topic == prefix+"/d1/telemetry" || m.topic == prefix+"/d1/status" || m.topic == prefix+"/d1/commands/v1/result" {
				t.Fatalf("forged message delivered: %+v", m)
			}
		case <-timeout:
			return
		}
	}
}

func TestEmbeddedBrokerPortInUse(t *testing.T) {
	_, url, _ := startEmbedded(t)
	cfg := DefaultConfig()
	cfg.Embedded.Listen = strings.TrimPrefix(url, "tcp://")
	cfg.Node = "n2"
	b := newBridge(t, cfg, newFakeDevices(), nil)
	err := b.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "mqtt.embedded.listen") {
		t.Fatalf("Run on a used port = %v, want an error naming mqtt.embedded.listen", err)
	}
}

func TestRedactPackets(t *testing.T) {
	var buf strings.Builder
	log := slog.New(redactPackets{slog.NewTextHandler(&buf, nil)})
	log.With("packet", "secret1").Warn("x", "pk", "secret2", "client", "c1")
	if strings.Contains(buf.String(), "secret") || !strings.Contains(buf.String(), "client=c1") {
		t.Fatalf("log line %q", buf.String())
	}
}
