package bridge

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// node is one Meridian node in a two-node test: a bridge with its own fake
// device endpoint and a record of remote batches.
type node struct {
	b      *Bridge
	devs   *fakeDevices
	remote chan telemetry.Batch
}

func startNode(t *testing.T, url, prefix, name string) *node {
	n := &node{devs: newFakeDevices(), remote: make(chan telemetry.Batch, 16)}
	n.b = newBridge(t, externalConfig(url, prefix, name), n.devs, nil)
	n.b.OnRemoteBatch(func(b telemetry.Batch) { n.remote <- b })
	runBridge(t, n.b)
	return n
}

func (n *node) knows(peer string) bool {
	n.b.cluster.mu.Lock()
	defer n.b.cluster.mu.Unlock()
	return n.b.cluster.nodes[peer]
}

func (n *node) echoed(device string) bool {
	n.b.cluster.mu.Lock()
	defer n.b.cluster.mu.Unlock()
	h := n.b.cluster.held[device]
	return h != nil && h.echoed
}

func (n *node) owner(device string) string {
	n.b.cluster.mu.Lock()
	defer n.b.cluster.mu.Unlock()
	return n.b.cluster.claims[device].Node
}

func noCommand(t *testing.T, n *node, wait time.Duration) {
	t.Helper()
	select {
	case s := <-n.devs.cmds:
		t.Fatalf("node %s delivered %+v, want nothing", n.b.node, s)
	case <-time.After(wait):
	}
}

func gotCommand(t *testing.T, n *node, id string) {
	t.Helper()
	select {
	case s := <-n.devs.cmds:
		if s.cmd.ID != id {
			t.Fatalf("node %s delivered %s, want %s", n.b.node, s.cmd.ID, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("node %s did not deliver %s", n.b.node, id)
	}
}

// countOn counts messages on topic during d.
func countOn(ch chan message, topic string, d time.Duration) []string {
	var got []string
	deadline := time.After(d)
	for {
		select {
		case m := <-ch:
			if m.topic == topic {
				got = append(got, m.payload)
			}
		case <-deadline:
			return got
		}
	}
}

func TestTwoNodes(t *testing.T) {
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d1", "ghost", "q1"}, []string{"na", "nb"})...)
	a := startNode(t, url, prefix, "na")
	b := startNode(t, url, prefix, "nb")
	msgs := watch(t, url, "", "", prefix+"/#")
	eventually(t, "nodes to see each other", func() bool { return a.knows("nb") && b.knows("na") })

	// d1 connects to node A.
	connect(a.b, a.devs, "d1")
	eventually(t, "A's claim to come back and B to learn it", func() bool { return a.echoed("d1") && b.owner("d1") == "na" })

	t.Run("command reaches the holder only", func(t *testing.T) {
		publish(t, url, prefix+"/d1/commands", `{"id":"c1","name":"x"}`)
		gotCommand(t, a, "c1")
		noCommand(t, b, 300*time.Millisecond)
		a.b.Result(telemetry.CommandResult{Device: "d1", ID: "c1", OK: true, Payload: []byte{0xc0}})
		if got := countOn(msgs, prefix+"/d1/commands/c1/result", 500*time.Millisecond); len(got) != 1 || got[0] != `{"id":"c1","ok":true,"payload":null}` {
			t.Fatalf("results %v, want exactly one ok", got)
		}
	})

	t.Run("HTTP on the other node", func(t *testing.T) {
		srv := httptest.NewServer(b.b.CommandHandler())
		defer srv.Close()
		go func() {
			select {
			case s := <-a.devs.cmds:
				a.b.Result(telemetry.CommandResult{Device: s.device, ID: s.cmd.ID, OK: true, Payload: []byte{0x2a}})
			case <-time.After(5 * time.Second):
			}
		}()
		resp, err := http.Post(srv.URL+"/v1/admin/devices/d1/commands", "application/json", strings.NewReader(`{"id":"h1","name":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"id":"h1","ok":true,"payload":42}` {
			t.Fatalf("POST to node b for a device on node a: %d %s", resp.StatusCode, body)
		}
		noCommand(t, b, 100*time.Millisecond)
	})

	t.Run("offline answered exactly once", func(t *testing.T) {
		publish(t, url, prefix+"/ghost/commands", `{"id":"g1","name":"x"}`)
		if got := countOn(msgs, prefix+"/ghost/commands/g1/result", time.Second); len(got) != 1 || got[0] != `{"id":"g1","ok":false,"error":"offline"}` {
			t.Fatalf("results %v, want exactly one offline", got)
		}
		publish(t, url, prefix+"/ghost/commands", `not json`)
		if got := countOn(msgs, prefix+"/ghost/commands/error", time.Second); len(got) != 1 {
			t.Fatalf("malformed answered %d times, want once", len(got))
		}
	})

	t.Run("remote batches", func(t *testing.T) {
		b.b.Committed(telemetry.Batch{Device: "d9", Seq: 4, Readings: []telemetry.Reading{{Time: 1, Metric: "m", Value: 2}}})
		select {
		case got := <-a.remote:
			if got.Device != "d9" || got.Seq != 4 || len(got.Readings) != 1 || got.Readings[0].Value != 2 {
				t.Fatalf("A got %+v", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("A did not receive B's batch")
		}
		select {
		case got := <-b.remote:
			t.Fatalf("B received its own batch %+v", got)
		case <-time.After(300 * time.Millisecond):
		}
	})

	t.Run("takeover", func(t *testing.T) {
		// d1 reconnects to node B: A must close its session.
		connect(b.b, b.devs, "d1")
		select {
		case k := <-a.devs.kicks:
			if k != "d1:session taken over" {
				t.Fatalf("kick %q", k)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("A did not kick d1 after B claimed it")
		}
		// A's session closes (ingest reports it); the status stays online.
		disconnect(a.b, a.devs, "d1")
		eventually(t, "A to learn B owns d1", func() bool { return a.owner("d1") == "nb" && b.echoed("d1") })
		time.Sleep(200 * time.Millisecond)
		late := watch(t, url, "", "", prefix+"/d1/status")
		if m := next(t, late, prefix+"/d1/status"); m.payload != "online" {
			t.Fatalf("status after takeover %q, want online", m.payload)
		}
		select {
		case k := <-b.devs.kicks:
			t.Fatalf("B kicked %q", k)
		default:
		}
		publish(t, url, prefix+"/d1/commands", `{"id":"c2","name":"x"}`)
		gotCommand(t, b, "c2")
		noCommand(t, a, 300*time.Millisecond)
	})

	t.Run("kick crosses nodes", func(t *testing.T) {
		// d1 is on B now; an operator revokes it through A.
		a.b.Kick("d1", "device disabled")
		select {
		case k := <-b.devs.kicks:
			if k != "d1:device disabled" {
				t.Fatalf("kick %q", k)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("B did not close d1 after A's kick")
		}
		select {
		case k := <-a.devs.kicks:
			t.Fatalf("A kicked itself: %q", k)
		case <-time.After(200 * time.Millisecond):
		}
	})

	t.Run("queued command follows the device", func(t *testing.T) {
		// q1 was last on A and is offline: A queues; q1 connects to B.
		connect(a.b, a.devs, "q1")
		eventually(t, "q1 claimed by A", func() bool { return b.owner("q1") == "na" })
		disconnect(a.b, a.devs, "q1")
		eventually(t, "q1 released", func() bool {
			b.b.cluster.mu.Lock()
			defer b.b.cluster.mu.Unlock()
			return !b.b.cluster.claims["q1"].Online
		})
		publish(t, url, prefix+"/q1/commands", `{"id":"qq","name":"x","payload":{"k":1},"queue":true}`)
		eventually(t, "A to queue it", func() bool {
			a.b.cmds.mu.Lock()
			defer a.b.cmds.mu.Unlock()
			return len(a.b.cmds.queued["q1"]) == 1
		})
		noCommand(t, b, 100*time.Millisecond)
		connect(b.b, b.devs, "q1")
		gotCommand(t, b, "qq")
	})
}

// TestCrashedNodeDevicesGoOffline: a node that vanishes (its Last Will says
// offline) leaves "online" records; the first live node marks them offline.
func TestCrashedNodeDevicesGoOffline(t *testing.T) {
	url := meridiantest.MQTTURL(t)
	prefix := randomPrefix()
	clearRetained(t, url, retainedTopics(prefix, []string{"d5", "d6"}, []string{"na", "nz"})...)
	// A node "nz" that holds d5, as its retained records say; and a stale
	// record of our own node "na" from before a crash for d6.
	pub := paho.NewClient(paho.NewClientOptions().SetAutoReconnect(false).AddBroker(url).SetClientID("nz-" + randomHex(4)))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(50)
	rec := func(topic string, v any) {
		data, _ := json.Marshal(v)
		if s, ok := v.(string); ok {
			data = []byte(s)
		}
		pub.Publish(topic, 1, true, data).WaitTimeout(5 * time.Second)
	}
	rec(prefix+"/_nodes/nz/status", "online")
	rec(prefix+"/d5/session", claim{Node: "nz", Session: "x.1", Online: true})
	rec(prefix+"/d5/status", "online")
	rec(prefix+"/d6/session", claim{Node: "na", Session: "old.1", Online: true})
	rec(prefix+"/d6/status", "online")

	msgs := watch(t, url, "", "", prefix+"/+/status")
	a := startNode(t, url, prefix, "na")
	// Our own stale record is corrected at startup.
	nextPayload(t, msgs, prefix+"/d6/status", "offline")
	eventually(t, "A to learn nz holds d5", func() bool { return a.owner("d5") == "nz" && a.knows("nz") })
	// nz dies: its Last Will.
	rec(prefix+"/_nodes/nz/status", "offline")
	nextPayload(t, msgs, prefix+"/d5/status", "offline")
	// And A now answers for d5.
	msgs2 := watch(t, url, "", "", prefix+"/d5/commands/+/result")
	publish(t, url, prefix+"/d5/commands", `{"id":"c1","name":"x"}`)
	if m := next(t, msgs2, prefix+"/d5/commands/c1/result"); m.payload != `{"id":"c1","ok":false,"error":"offline"}` {
		t.Fatalf("result %s", m.payload)
	}
}
