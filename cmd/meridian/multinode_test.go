package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gobwas/ws"
	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestMultiNode runs two real `meridian serve` processes on loopback that
// share one PostgreSQL database and the machine's real MQTT broker
// (docs/scaling.md), and checks what makes them one service: commands reach
// whichever node holds the device (over HTTP and MQTT, answered once),
// committed batches reach MQTT and the other node's dashboard, a device that
// moves to the other node takes its session over, and both stop cleanly on
// SIGTERM.
func TestMultiNode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGTERM")
	}
	t.Parallel()
	brokerURL := meridiantest.MQTTURL(t)
	dbURL := testPGURL(t)
	bin := meridiantest.Bin(t)

	suffix := randHex(t, 6)
	prefix := "mntest-" + suffix
	adminKey := "mak_" + randHex(t, 32)
	rec := newMQTTRecorder(t, brokerURL, prefix)

	// Both at once, as a deployment would: migrations and admin-key
	// registration race on the shared database.
	env := func(node string) []string {
		return []string{
			"MERIDIAN_STORAGE_URL=" + dbURL,
			"MERIDIAN_SERVER_LISTEN=127.0.0.1:0",
			"MERIDIAN_SERVER_DATA_DIR=" + filepath.Join(t.TempDir(), "data"),
			"MERIDIAN_SERVER_LOG_LEVEL=debug",
			"MERIDIAN_MQTT_URL=" + brokerURL,
			"MERIDIAN_MQTT_NODE=" + node,
			// Unique per run: two runs on one broker must not share client ids.
			"MERIDIAN_MQTT_CLIENT_ID=meridian-" + node + "-" + suffix,
			"MERIDIAN_MQTT_TOPIC_PREFIX=" + prefix,
			"MERIDIAN_DEVICES_ADMIN_KEY=" + adminKey,
			"MERIDIAN_DASHBOARD_ENABLED=true",
			"MERIDIAN_INGEST_SHUTDOWN_GRACE=5s",
		}
	}
	a := startNode(t, bin, "node-a", env("node-a"))
	b := startNode(t, bin, "node-b", env("node-b"))
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	a.waitReady(t, hc, adminKey)
	b.waitReady(t, hc, adminKey)

	// A device, registered on node A.
	status, body := mnRequest(t, hc, "POST", a.base+"/v1/admin/devices", adminKey, `{"id":"d1"}`)
	var added struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &added); status != http.StatusCreated || err != nil || added.Token == "" {
		t.Fatalf("add device on node A: %d %s (%v)", status, body, err)
	}

	devA, hello := dialDevice(t, a, added.Token)
	if hello.Device != "d1" || hello.Acked != 0 {
		t.Fatalf("hello on node A: %+v", hello)
	}
	// Both nodes learn the owner from this retained record; wait until the
	// broker has passed it on, plus a moment for the nodes to apply it
	// (the model is eventually consistent, docs/scaling.md "Limits").
	rec.wait(t, prefix+"/d1/session", 10*time.Second, func(p []byte) bool { return sessionIs(p, "node-a", true) })
	time.Sleep(300 * time.Millisecond)

	t.Run("http command via the other node", func(t *testing.T) {
		type answer struct {
			status int
			body   []byte
		}
		done := make(chan answer, 1)
		go func() {
			st, bd, err := mnDo(hc, "POST", b.base+"/v1/admin/devices/d1/commands", adminKey, `{"name":"ping","payload":{"x":1}}`, nil)
			if err != nil {
				bd = []byte(err.Error())
			}
			done <- answer{st, bd}
		}()
		cmd := devA.expectCommand(t, 10*time.Second)
		if cmd.Name != "ping" {
			t.Errorf("device got command %+v", cmd)
		}
		devA.send(t, &wire.Result{Type: wire.TypeResult, ID: cmd.ID, OK: true, Payload: cmd.Payload})
		select {
		case ans := <-done:
			var res struct {
				ID      string          `json:"id"`
				OK      bool            `json:"ok"`
				Payload json.RawMessage `json:"payload"`
			}
			if err := json.Unmarshal(ans.body, &res); ans.status != http.StatusOK || err != nil || !res.OK || res.ID != cmd.ID || !jsonEqual(res.Payload, `{"x":1}`) {
				t.Errorf("node B answered %d %s (%v); want 200 ok with the echoed payload and id %q", ans.status, ans.body, err, cmd.ID)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("node B's HTTP command did not return")
		}
	})

	t.Run("mqtt command answered once", func(t *testing.T) {
		id := "m-" + randHex(t, 4)
		rec.publish(t, prefix+"/d1/commands", fmt.Sprintf(`{"id":%q,"name":"ping","payload":{"x":2}}`, id))
		cmd := devA.expectCommand(t, 10*time.Second)
		if cmd.ID != id || cmd.Name != "ping" {
			t.Fatalf("device got %+v, want id %q", cmd, id)
		}
		devA.send(t, &wire.Result{Type: wire.TypeResult, ID: cmd.ID, OK: true, Payload: cmd.Payload})
		topic := prefix + "/d1/commands/" + id + "/result"
		p := rec.wait(t, topic, 10*time.Second, nil)
		var res struct {
			ID      string          `json:"id"`
			OK      bool            `json:"ok"`
			Payload json.RawMessage `json:"payload"`
			Error   string          `json:"error"`
		}
		if err := json.Unmarshal(p, &res); err != nil || res.ID != id || !res.OK || !jsonEqual(res.Payload, `{"x":2}`) {
			t.Errorf("result %s (%v)", p, err)
		}
		// A second answer (e.g. node B saying "offline") would follow
		// within broker latency.
		time.Sleep(time.Second)
		if n := rec.count(topic); n != 1 {
			t.Errorf("%d results on %s, want exactly 1:\n%s", n, topic, rec.dump(topic))
		}
	})

	t.Run("telemetry on mqtt", func(t *testing.T) {
		ts := time.Now().UnixMilli()
		devA.send(t, mnBatch(1, ts, 21.5))
		if ack := devA.expectAck(t); ack.Seq != 1 || ack.Accepted != 1 || ack.Duplicate {
			t.Fatalf("ack %+v", ack)
		}
		p := rec.wait(t, prefix+"/d1/telemetry", 10*time.Second, func(p []byte) bool { return telemetrySeq(p) == 1 })
		var msg struct {
			Device   string `json:"device"`
			Seq      uint64 `json:"seq"`
			Node     string `json:"node"`
			Readings []struct {
				T      int64   `json:"t"`
				Metric string  `json:"metric"`
				Value  float64 `json:"value"`
			} `json:"readings"`
		}
		if err := json.Unmarshal(p, &msg); err != nil || msg.Device != "d1" || msg.Node != "node-a" || len(msg.Readings) != 1 ||
			msg.Readings[0].T != ts || msg.Readings[0].Metric != "temp" || msg.Readings[0].Value != 21.5 {
			t.Errorf("telemetry message %s (%v)", p, err)
		}
	})

	t.Run("dashboard on the other node sees live readings", func(t *testing.T) {
		live := dialLive(t, b, adminKey)
		live.expectJSON(t, "hello", nil)
		live.sendText(t, `{"type":"subscribe","device":"d1"}`)
		live.expectJSON(t, "subscribed", nil)
		// Readings stamped now are after the subscription's seam.
		ts := time.Now().UnixMilli() + 1
		devA.send(t, mnBatch(2, ts, 23.25))
		if ack := devA.expectAck(t); ack.Seq != 2 || ack.Accepted != 1 {
			t.Fatalf("ack %+v", ack)
		}
		live.expectJSON(t, "updates", func(m map[string]any) bool {
			ups, _ := m["updates"].([]any)
			for _, u := range ups {
				u, _ := u.(map[string]any)
				if u["device"] == "d1" && u["metric"] == "temp" && u["last"] == 23.25 {
					return true
				}
			}
			return false
		})
	})

	t.Run("takeover across nodes", func(t *testing.T) {
		devB, hello := dialDevice(t, b, added.Token)
		if hello.Acked != 2 {
			t.Errorf("hello.acked on node B = %d, want 2 (the last acked seq)", hello.Acked)
		}
		devA.expectClose(t, 5*time.Second, wire.ClosePolicy, "session_taken_over")
		rec.wait(t, prefix+"/d1/session", 10*time.Second, func(p []byte) bool { return sessionIs(p, "node-b", true) })
		// The new owner keeps working.
		devB.send(t, mnBatch(3, time.Now().UnixMilli(), 24))
		if ack := devB.expectAck(t); ack.Seq != 3 || ack.Accepted != 1 {
			t.Errorf("ack on node B %+v", ack)
		}
		rec.wait(t, prefix+"/d1/telemetry", 10*time.Second, func(p []byte) bool { return telemetrySeq(p) == 3 })
	})

	t.Run("revoke on one node closes the session on the other", func(t *testing.T) {
		devB, _ := dialDevice(t, b, added.Token)
		// Let the ownership settle on node B before revoking through A.
		rec.wait(t, prefix+"/d1/session", 10*time.Second, func(p []byte) bool { return sessionIs(p, "node-b", true) })
		st, bd, err := mnDo(hc, "POST", a.base+"/v1/admin/devices/d1/revoke-tokens", adminKey, ``, nil)
		if err != nil || st >= 300 {
			t.Fatalf("revoke on node A: %d %s %v", st, bd, err)
		}
		devB.expectClose(t, 5*time.Second, wire.ClosePolicy, "policy")
	})

	// Stop both with SIGTERM: exit 0 within the grace (ingest 5 s, then the
	// bridge's 5 s), announcing themselves offline on the way out.
	a.signal(t, syscall.SIGTERM)
	b.signal(t, syscall.SIGTERM)
	for _, n := range []*mnNode{a, b} {
		if err := n.waitExit(15 * time.Second); err != nil {
			t.Errorf("%s after SIGTERM: %v", n.name, err)
		}
	}
	for _, node := range []string{"node-a", "node-b"} {
		rec.wait(t, prefix+"/_nodes/"+node+"/status", 5*time.Second, func(p []byte) bool { return string(p) == "offline" })
	}
}

func randHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// mnNode is one running `meridian serve` process.
type mnNode struct {
	*meridiantest.Server
	name string
	base string // http://127.0.0.1:port
	host string // 127.0.0.1:port
}

// startNode starts the binary with a clean MERIDIAN_* environment plus env,
// and returns once it listens. The process is stopped at cleanup if the test
// has not stopped it; its log is printed if the test failed.
func startNode(t testing.TB, bin, name string, env []string) *mnNode {
	t.Helper()
	s := meridiantest.NewServer(t, meridiantest.Options{Bin: bin, Env: env})
	s.Launch(t)
	return &mnNode{Server: s, name: name, base: s.URL(), host: s.Addr()}
}

// waitReady waits until the node's storage is ready, the configured admin
// key authenticates and the bridge is connected with its subscriptions.
func (n *mnNode) waitReady(t testing.TB, hc *http.Client, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		st, body, err := mnDo(hc, "GET", n.base+"/readyz", "", "", nil)
		if err == nil && st == http.StatusOK {
			st, body, err = mnDo(hc, "GET", n.base+"/metrics", key, "", nil)
			if err == nil && st == http.StatusOK && bytes.Contains(body, []byte("\nmeridian_mqtt_connected 1")) {
				return
			}
		}
		last = fmt.Sprintf("%d %.200s %v", st, body, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready (storage, admin key, mqtt) within 30s; last: %s", n.name, last)
}

func (n *mnNode) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := n.Signal(sig); err != nil {
		t.Errorf("signal %s: %v", n.name, err)
	}
}

// waitExit returns nil when the process exited with status 0 within d.
func (n *mnNode) waitExit(d time.Duration) error { return n.Wait(d) }

// mnDo sends one HTTP request; it never calls t (used from goroutines).
func mnDo(hc *http.Client, method, u, key, body string, hdr http.Header) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func mnRequest(t testing.TB, hc *http.Client, method, u, key, body string) (int, []byte) {
	t.Helper()
	st, b, err := mnDo(hc, method, u, key, body, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return st, b
}

func mnBatch(seq uint64, ts int64, v float64) *wire.Batch {
	return &wire.Batch{Type: wire.TypeBatch, Seq: seq, Readings: wire.Readings{{T: ts, HasT: true, Metric: "temp", Value: v}}}
}

func jsonEqual(got json.RawMessage, want string) bool {
	var g, w any
	if json.Unmarshal(got, &g) != nil || json.Unmarshal([]byte(want), &w) != nil {
		return false
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	return bytes.Equal(gb, wb)
}

func sessionIs(p []byte, node string, online bool) bool {
	var r struct {
		Node   string `json:"node"`
		Online bool   `json:"online"`
	}
	return json.Unmarshal(p, &r) == nil && r.Node == node && r.Online == online
}

func telemetrySeq(p []byte) uint64 {
	var m struct {
		Seq uint64 `json:"seq"`
	}
	_ = json.Unmarshal(p, &m)
	return m.Seq
}

// wsConn is a minimal WebSocket client for both the device endpoint and
// /v1/live. Only the test goroutine uses it.
type wsConn struct {
	conn net.Conn
	br   *bufio.Reader
}

func wsDial(t *testing.T, u string, hdr http.Header) *wsConn {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second, Header: ws.HandshakeHeaderHTTP(hdr)}
	conn, br, _, err := d.Dial(context.Background(), u)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &wsConn{conn: conn, br: br}
}

func (c *wsConn) write(t *testing.T, op ws.OpCode, p []byte) {
	t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewFrame(op, true, p))); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// next returns the next data frame, answering pings; a close frame comes
// back as op ws.OpClose with its payload (code + reason).
func (c *wsConn) next(t *testing.T, timeout time.Duration) (ws.OpCode, []byte) {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := ws.ReadFrame(c.br)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if f.Header.Masked {
			ws.Cipher(f.Payload, f.Header.Mask, 0)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			c.write(t, ws.OpPong, f.Payload)
		case ws.OpPong:
		default:
			return f.Header.OpCode, f.Payload
		}
	}
}

// mnDevice is a device connected to one node.
type mnDevice struct{ *wsConn }

func dialDevice(t *testing.T, n *mnNode, token string) (*mnDevice, wire.Hello) {
	t.Helper()
	d := &mnDevice{wsDial(t, "ws://"+n.host+"/v1/device", http.Header{"Authorization": {"Bearer " + token}})}
	typ, data := d.frame(t, 10*time.Second)
	var h wire.Hello
	if _, err := h.UnmarshalMsg(data); typ != wire.TypeHello || err != nil {
		t.Fatalf("first frame from %s: %q (%v), want hello", n.name, typ, err)
	}
	return d, h
}

func (d *mnDevice) send(t *testing.T, m msgp.Marshaler) {
	t.Helper()
	b, err := m.MarshalMsg(nil)
	if err != nil {
		t.Fatal(err)
	}
	d.write(t, ws.OpBinary, b)
}

// frame returns the next frame's type ("close" for a close frame).
func (d *mnDevice) frame(t *testing.T, timeout time.Duration) (string, []byte) {
	t.Helper()
	op, p := d.next(t, timeout)
	if op == ws.OpClose {
		return "close", p
	}
	typ, err := wire.TypeOf(p)
	if err != nil {
		t.Fatalf("undecodable frame %x: %v", p, err)
	}
	return typ, p
}

func (d *mnDevice) expectCommand(t *testing.T, timeout time.Duration) wire.Command {
	t.Helper()
	typ, p := d.frame(t, timeout)
	var c wire.Command
	if _, err := c.UnmarshalMsg(p); typ != wire.TypeCommand || err != nil {
		t.Fatalf("got %q frame (%v), want command", typ, err)
	}
	return c
}

func (d *mnDevice) expectAck(t *testing.T) wire.Ack {
	t.Helper()
	typ, p := d.frame(t, 10*time.Second)
	var a wire.Ack
	if _, err := a.UnmarshalMsg(p); typ != wire.TypeAck || err != nil {
		t.Fatalf("got %q frame (%v), want ack", typ, err)
	}
	return a
}

// expectClose reads until the close frame: its code must be code, and an
// error frame with errCode must come before it.
func (d *mnDevice) expectClose(t *testing.T, timeout time.Duration, code int, errCode string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	sawErr := ""
	for {
		typ, p := d.frame(t, time.Until(deadline))
		switch typ {
		case wire.TypeError:
			var e wire.Error
			_, _ = e.UnmarshalMsg(p)
			sawErr = e.Code
		case "close":
			if len(p) < 2 {
				t.Fatal("close frame without a code")
			}
			if got := int(binary.BigEndian.Uint16(p)); got != code || sawErr != errCode {
				// Errorf: the connection is closed either way, so the
				// caller's later checks still mean something.
				t.Errorf("closed with %d %q after error frame %q; want %d after %q", got, p[2:], sawErr, code, errCode)
			}
			return
		}
	}
}

// mnLive is a /v1/live client.
type mnLive struct{ *wsConn }

func dialLive(t *testing.T, n *mnNode, key string) *mnLive {
	t.Helper()
	return &mnLive{wsDial(t, "ws://"+n.host+"/v1/live", http.Header{
		"Authorization": {"Bearer " + key},
		"Origin":        {"http://" + n.host},
	})}
}

func (l *mnLive) sendText(t *testing.T, s string) {
	t.Helper()
	l.write(t, ws.OpText, []byte(s))
}

// expectJSON reads messages until one of type typ satisfies ok (nil: any),
// for at most 10 s.
func (l *mnLive) expectJSON(t *testing.T, typ string, ok func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		op, p := l.next(t, time.Until(deadline))
		if op == ws.OpClose {
			t.Fatalf("live closed (%q) waiting for %q; saw %s", p, typ, seen)
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatalf("live sent non-JSON %q: %v", p, err)
		}
		if m["type"] == "error" {
			t.Fatalf("live error: %s", p)
		}
		if m["type"] == typ && (ok == nil || ok(m)) {
			return
		}
		seen = append(seen, string(p))
	}
	t.Fatalf("no %q live message within 10s; saw %s", typ, seen)
}

// mqttRecorder is a client of the real broker that records every message
// under the test's prefix.
type mqttRecorder struct {
	c      paho.Client
	mu     sync.Mutex
	msgs   []mqttMsg
	notify chan struct{}
}

type mqttMsg struct {
	topic   string
	payload []byte
}

func newMQTTRecorder(t *testing.T, brokerURL, prefix string) *mqttRecorder {
	t.Helper()
	r := &mqttRecorder{notify: make(chan struct{}, 1)}
	opts := paho.NewClientOptions().AddBroker(brokerURL).
		SetClientID("mntest-rec-" + randHex(t, 6)).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second)
	r.c = paho.NewClient(opts)
	if tok := r.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect test MQTT client: %v", tok.Error())
	}
	t.Cleanup(func() {
		// Leave no retained state behind on the shared broker.
		r.mu.Lock()
		topics := map[string]bool{}
		for _, m := range r.msgs {
			if strings.HasSuffix(m.topic, "/status") || strings.HasSuffix(m.topic, "/session") {
				topics[m.topic] = true
			}
		}
		r.mu.Unlock()
		for tp := range topics {
			r.c.Publish(tp, 1, true, []byte{}).WaitTimeout(2 * time.Second)
		}
		r.c.Disconnect(250)
	})
	tok := r.c.Subscribe(prefix+"/#", 1, func(_ paho.Client, m paho.Message) {
		r.mu.Lock()
		r.msgs = append(r.msgs, mqttMsg{m.Topic(), append([]byte(nil), m.Payload()...)})
		r.mu.Unlock()
		select {
		case r.notify <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s/#: %v", prefix, tok.Error())
	}
	return r
}

func (r *mqttRecorder) publish(t *testing.T, topic, payload string) {
	t.Helper()
	if tok := r.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// wait returns the first message on topic satisfying ok (nil: any).
func (r *mqttRecorder) wait(t *testing.T, topic string, d time.Duration, ok func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(d)
	for {
		r.mu.Lock()
		for _, m := range r.msgs {
			if m.topic == topic && (ok == nil || ok(m.payload)) {
				r.mu.Unlock()
				return m.payload
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no matching message on %s within %v; on it:\n%s", topic, d, r.dump(topic))
			return nil
		}
	}
}

func (r *mqttRecorder) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m.topic == topic {
			n++
		}
	}
	return n
}

func (r *mqttRecorder) dump(topic string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, m := range r.msgs {
		if m.topic == topic {
			fmt.Fprintf(&b, "  %s\n", m.payload)
		}
	}
	return b.String()
}
