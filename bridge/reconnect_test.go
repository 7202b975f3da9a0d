package bridge

import (
	"encoding/json"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// proxy is a TCP relay to the real broker that a test can cut and restore,
// standing in for a broker restart.
type proxy struct {
	t      *testing.T
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, target: target}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
}

// cut closes the listener and every relayed connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// restore listens again on the same address.
func (p *proxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("re-listen %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// TestBrokerOutageResumes: the broker goes away mid-stream; Committed keeps
// returning at once, and when the broker is back the bridge reconnects,
// republishes the state it holds and publishes the batches queued meanwhile.
func TestBrokerOutageResumes(t *testing.T) {
	brokerURL := meridiantest.MQTTURL(t)
	u, _ := url.Parse(brokerURL)
	px := newProxy(t, u.Host)
	prefix := randomPrefix()
	clearRetained(t, brokerURL, retainedTopics(prefix, []string{"d1"}, []string{"n1"})...)
	cfg := externalConfig("tcp://"+px.addr, prefix, "n1")
	cfg.MaxReconnectInterval = time.Second
	cfg.KeepAlive = 2 * time.Second
	devs := newFakeDevices()
	b := startBridge(t, cfg, devs, nil)
	msgs := watch(t, brokerURL, "", "", prefix+"/#")
	connect(b, devs, "d1")
	commit := func(seq uint64) {
		b.Committed(telemetry.Batch{Device: "d1", Seq: seq, Readings: []telemetry.Reading{{Time: int64(seq), Metric: "m", Value: 1}}})
	}
	commit(1)
	next(t, msgs, prefix+"/d1/telemetry")

	px.cut()
	eventually(t, "the bridge to notice the outage", func() bool { return !b.Connected() })
	start := time.Now()
	for seq := uint64(2); seq <= 50; seq++ {
		commit(seq)
	}
	if time.Since(start) > 100*time.Millisecond {
		t.Fatalf("Committed blocked during the outage: %v", time.Since(start))
	}
	// Forget what the watcher saw before the outage.
	for drained := false; !drained; {
		select {
		case <-msgs:
		case <-time.After(100 * time.Millisecond):
			drained = true
		}
	}
	px.restore()
	eventually(t, "the bridge to reconnect", b.Connected)

	seen := map[uint64]bool{}
	deadline := time.After(10 * time.Second)
	gotOnline := false
	for len(seen) < 49 || !gotOnline {
		select {
		case m := <-msgs:
			switch m.topic {
			case prefix + "/d1/telemetry":
				var v struct{ Seq uint64 }
				_ = json.Unmarshal([]byte(m.payload), &v)
				if v.Seq >= 2 {
					seen[v.Seq] = true
				}
			case prefix + "/d1/status":
				gotOnline = gotOnline || m.payload == "online"
			}
		case <-deadline:
			t.Fatalf("after reconnect: %d of 49 queued batches, status republished %v", len(seen), gotOnline)
		}
	}
}
