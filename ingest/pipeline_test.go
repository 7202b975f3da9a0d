package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

func testPipeline(t *testing.T, store Store, mut func(*Config)) *pipeline {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Linger = 0
	cfg.Writers = 4
	if mut != nil {
		mut(&cfg)
	}
	p := newPipeline(cfg, store, slog.New(slog.DiscardHandler), newMetrics(nil), nil)
	p.start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.drain(ctx)
	})
	return p
}

// TestPipelineOrder: with several writers and many devices submitting
// concurrently, each device's outcomes arrive in submission order and every
// batch is committed exactly once.
func TestPipelineOrder(t *testing.T) {
	store := newMemStore()
	p := testPipeline(t, store, func(c *Config) { c.FlushSize = 7 })
	const devices, perDevice = 20, 200
	var wg sync.WaitGroup
	for d := 0; d < devices; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("dev-%d", d)
			var mu sync.Mutex
			var got []uint64
			var acked sync.WaitGroup
			for seq := uint64(1); seq <= perDevice; seq++ {
				acked.Add(1)
				b := telemetry.Batch{Device: dev, Seq: seq, Readings: []telemetry.Reading{{Time: int64(seq), Metric: "m", Value: 1}}}
				err := p.submit(context.Background(), b, func(o telemetry.Outcome, err error) {
					if err != nil || o.Duplicate {
						t.Errorf("%s seq %d: %v dup=%v", dev, seq, err, o.Duplicate)
					}
					mu.Lock()
					got = append(got, seq)
					mu.Unlock()
					acked.Done()
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
			acked.Wait()
			for i, s := range got {
				if s != uint64(i+1) {
					t.Errorf("%s: outcome %d is seq %d", dev, i, s)
					return
				}
			}
			if n := store.count(dev); n != perDevice {
				t.Errorf("%s: stored %d readings, want %d", dev, n, perDevice)
			}
		}()
	}
	wg.Wait()
}

// TestPipelineBackpressure: a stalled store fills the budget, submit blocks
// (nothing is acked), memory stays bounded by QueueReadings; when the store
// resumes everything is committed exactly once.
func TestPipelineBackpressure(t *testing.T) {
	store := newMemStore()
	store.stall()
	p := testPipeline(t, store, func(c *Config) { c.QueueReadings = 100; c.MaxBatch = 10; c.FlushSize = 10 })
	var acked sync.WaitGroup
	var ackCount sync.Map
	submitted := make(chan uint64, 1000)
	go func() {
		for seq := uint64(1); seq <= 50; seq++ {
			acked.Add(1)
			rs := make([]telemetry.Reading, 10)
			b := telemetry.Batch{Device: "d", Seq: seq, Readings: rs}
			if err := p.submit(context.Background(), b, func(telemetry.Outcome, error) { ackCount.Store(seq, true); acked.Done() }); err != nil {
				t.Error(err)
			}
			submitted <- seq
		}
		close(submitted)
	}()
	time.Sleep(200 * time.Millisecond)
	if n := len(submitted); n > 10 {
		t.Fatalf("submitted %d batches of 10 readings with a budget of 100", n)
	}
	n := 0
	ackCount.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d batches acked while storage stalled", n)
	}
	store.resume()
	acked.Wait()
	if c := store.count("d"); c != 500 {
		t.Fatalf("stored %d readings, want 500", c)
	}
}

// TestPipelineRetry: commits failing then recovering are retried; nothing
// is lost or duplicated.
func TestPipelineRetry(t *testing.T) {
	store := newMemStore()
	store.setFailing(true)
	p := testPipeline(t, store, nil)
	done := make(chan telemetry.Outcome, 1)
	if err := p.submit(context.Background(), telemetry.Batch{Device: "x", Seq: 1, Readings: []telemetry.Reading{{Metric: "m"}}},
		func(o telemetry.Outcome, err error) { done <- o }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("acked while the store was failing")
	case <-time.After(150 * time.Millisecond):
	}
	store.setFailing(false)
	select {
	case o := <-done:
		if o.Duplicate {
			t.Fatal("unexpected duplicate")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not committed after the store recovered")
	}
	if store.count("x") != 1 {
		t.Fatal("want exactly one stored reading")
	}
}

// TestPipelineDrainAbort: a drain whose deadline passes while the store is
// down finishes the items with an error (never acked) and returns.
func TestPipelineDrainAbort(t *testing.T) {
	store := newMemStore()
	store.setFailing(true)
	cfg := DefaultConfig()
	p := newPipeline(cfg, store, slog.New(slog.DiscardHandler), newMetrics(nil), nil)
	p.start()
	got := make(chan error, 1)
	_ = p.submit(context.Background(), telemetry.Batch{Device: "x", Seq: 1}, func(_ telemetry.Outcome, err error) { got <- err })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := p.drain(ctx); err == nil {
		t.Fatal("drain reported success with the store down")
	}
	if err := <-got; err == nil {
		t.Fatal("item finished without error")
	}
	if err := p.submit(context.Background(), telemetry.Batch{Device: "x", Seq: 2}, func(telemetry.Outcome, error) {}); err != errShuttingDown {
		t.Fatalf("submit after drain: %v", err)
	}
}
