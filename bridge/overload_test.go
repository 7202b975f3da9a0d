package bridge

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// TestCommittedNeverBlocks: with the broker dead (nothing listening) or
// wedged (accepts TCP, never answers CONNECT), Committed returns at once and
// the queue drops its oldest batches, counted.
func TestCommittedNeverBlocks(t *testing.T) {
	blackhole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blackhole.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := blackhole.Accept()
			if err != nil {
				return
			}
			accepted <- c // hold it open, say nothing
		}
	}()
	defer func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	}()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	for name, addr := range map[string]string{"dead": deadAddr, "wedged": blackhole.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.URL = "tcp://" + addr
			cfg.Node = "n1"
			cfg.QueueSize = 100
			cfg.WriteTimeout = time.Second
			cfg.ShutdownGrace = 3 * time.Second
			b := newBridge(t, cfg, newFakeDevices(), nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- b.Run(ctx) }()
			time.Sleep(100 * time.Millisecond) // let it try to connect

			const n = 20_000
			start := time.Now()
			for i := range n {
				b.Committed(telemetry.Batch{Device: "d1", Seq: uint64(i + 1), Readings: []telemetry.Reading{{Time: 1, Metric: "m", Value: 1}}})
				b.Presence(telemetry.Presence{Device: "d1", Online: i%2 == 0})
				b.Result(telemetry.CommandResult{Device: "d1", ID: "c1", OK: true})
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("%d Committed/Presence/Result calls took %v with the broker %s", n, el, name)
			}
			if got := counterValue(b.m.dropped.WithLabelValues("queue_full")); got != n-100 {
				t.Fatalf("queue_full drops = %v, want %d", got, n-100)
			}
			if b.pub.telem.len() != 100 {
				t.Fatalf("queue holds %d, want 100", b.pub.telem.len())
			}
			// The newest batches are the ones kept.
			if bt, _ := b.pub.telem.pop(); bt.Seq != n-99 {
				t.Fatalf("oldest kept seq %d, want %d", bt.Seq, n-99)
			}
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return with the broker unreachable")
			}
		})
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
