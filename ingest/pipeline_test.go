package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
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
	acked.Add(50) // before the goroutine, so Wait cannot return early
	go func() {
		for seq := uint64(1); seq <= 50; seq++ {
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

// TestPipelineGroupCommit: an idle writer commits a batch at once; batches
// submitted while that commit is in flight all go into the next commit.
func TestPipelineGroupCommit(t *testing.T) {
	noLeaks(t)
	store := newMemStore()
	store.stall()
	p := testPipeline(t, store, func(c *Config) { c.Writers = 1 })
	var acked sync.WaitGroup
	submit := func(seq uint64) {
		acked.Add(1)
		b := telemetry.Batch{Device: fmt.Sprintf("d%d", seq%3), Seq: seq, Readings: []telemetry.Reading{{Metric: "m"}}}
		if err := p.submit(context.Background(), b, func(_ telemetry.Outcome, err error) {
			if err != nil {
				t.Errorf("seq %d: %v", seq, err)
			}
			acked.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	submit(1)
	// Wait until the writer has taken seq 1 and is blocked in Commit.
	deadline := time.Now().Add(5 * time.Second)
	for len(p.shards[0]) != 0 || p.writerHealth[0].attemptStart.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("writer did not start committing")
		}
		time.Sleep(time.Millisecond)
	}
	for seq := uint64(2); seq <= 40; seq++ {
		submit(seq)
	}
	store.resume()
	acked.Wait()
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.commits) != 2 || len(store.commits[0]) != 1 || len(store.commits[1]) != 39 {
		sizes := []int{}
		for _, c := range store.commits {
			sizes = append(sizes, len(c))
		}
		t.Fatalf("commit sizes %v, want [1 39]", sizes)
	}
}

// TestPipelineIsolatesRefusedBatch: when the store refuses one batch's data,
// the flush is split, that batch alone is answered with batch_refused and
// not stored, and every other batch — of other devices and of the same
// device, before and after it — commits and is answered in order.
func TestPipelineIsolatesRefusedBatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  func(telemetry.Batch) bool
		want int // refused batches
	}{
		{"one batch", func(b telemetry.Batch) bool { return b.Device == "dev-7" && b.Seq == 5 }, 1},
		{"two devices", func(b telemetry.Batch) bool { return b.Seq == 3 && (b.Device == "dev-0" || b.Device == "dev-19") }, 2},
		{"a whole device", func(b telemetry.Batch) bool { return b.Device == "dev-4" }, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			store := newMemStore()
			store.refuse = tc.bad
			store.stall() // everything below queues up and meets in few flushes
			p := testPipeline(t, store, func(c *Config) { c.Writers = 2 })
			type answer struct {
				seq uint64
				err error
			}
			const devices, perDevice = 20, 10
			answers := make([][]answer, devices)
			var mu sync.Mutex
			var done sync.WaitGroup
			for seq := uint64(1); seq <= perDevice; seq++ {
				for d := range devices {
					b := telemetry.Batch{Device: fmt.Sprintf("dev-%d", d), Seq: seq, Readings: []telemetry.Reading{{Metric: "m", Value: float64(seq)}}}
					done.Add(1)
					if err := p.submit(context.Background(), b, func(_ telemetry.Outcome, err error) {
						mu.Lock()
						answers[d] = append(answers[d], answer{seq, err})
						mu.Unlock()
						done.Done()
					}); err != nil {
						t.Fatal(err)
					}
				}
			}
			store.resume()
			done.Wait()
			refused := 0
			for d := range devices {
				dev := fmt.Sprintf("dev-%d", d)
				stored := 0
				for i, a := range answers[d] {
					if a.seq != uint64(i+1) {
						t.Fatalf("%s: answer %d is seq %d (out of order)", dev, i, a.seq)
					}
					bad := tc.bad(telemetry.Batch{Device: dev, Seq: a.seq})
					var pe *wire.ProtocolError
					switch {
					case bad && (!errors.As(a.err, &pe) || pe.Code != "batch_refused" || pe.Close != wire.CloseInvalidData):
						t.Errorf("%s seq %d: got %v, want batch_refused", dev, a.seq, a.err)
					case bad:
						refused++
					case a.err != nil:
						t.Errorf("%s seq %d: %v", dev, a.seq, a.err)
					default:
						stored++
					}
				}
				if n := store.count(dev); n != stored {
					t.Errorf("%s: %d readings stored, want %d", dev, n, stored)
				}
			}
			if refused != tc.want {
				t.Errorf("%d batches refused, want %d", refused, tc.want)
			}
			if got := metricValue(t, p.m.batchesRefused); got != float64(tc.want) {
				t.Errorf("meridian_batches_refused_total = %v, want %d", got, tc.want)
			}
			if err := p.health(); err != nil {
				t.Errorf("refused data made the pipeline unhealthy: %v", err)
			}
		})
	}
}

// TestPipelineHealth: commits that keep failing make health report an error
// (and /readyz fail) and count in the metrics; one success clears it.
func TestPipelineHealth(t *testing.T) {
	noLeaks(t)
	store := newMemStore()
	p := testPipeline(t, store, func(c *Config) { c.Writers = 1 })
	if err := p.health(); err != nil {
		t.Fatalf("healthy pipeline: %v", err)
	}
	store.setFailing(true)
	done := make(chan error, 1)
	if err := p.submit(context.Background(), telemetry.Batch{Device: "x", Seq: 1, Readings: []telemetry.Reading{{Metric: "m"}}},
		func(_ telemetry.Outcome, err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.health() == nil {
		if time.Now().After(deadline) {
			t.Fatal("health still fine after 10s of failing commits")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := metricValue(t, p.m.flushFailures.WithLabelValues("unavailable")); n < unhealthyAfterFailures {
		t.Errorf("flush failures (unavailable) = %v, want >= %d", n, unhealthyAfterFailures)
	}
	if n := metricValue(t, p.m.flushFailing.WithLabelValues("0")); n < unhealthyAfterFailures {
		t.Errorf("consecutive failures gauge = %v, want >= %d", n, unhealthyAfterFailures)
	}
	store.setFailing(false)
	if err := <-done; err != nil {
		t.Fatalf("not committed after recovery: %v", err)
	}
	if err := p.health(); err != nil {
		t.Fatalf("still unhealthy after a successful commit: %v", err)
	}
	if n := metricValue(t, p.m.flushFailing.WithLabelValues("0")); n != 0 {
		t.Errorf("consecutive failures gauge = %v after recovery, want 0", n)
	}
}

// metricValue reads a counter's or gauge's current value.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// noLeaks checks, after the test's other cleanups (the pipeline's drain
// among them), that no goroutine started during the test is left running.
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// TestReadyWhileCommitsFail: a store that answers pings but cannot commit
// makes Server.Ready (/readyz) fail after a few attempts, and ready again
// once a commit succeeds.
func TestReadyWhileCommitsFail(t *testing.T) {
	store := newMemStore()
	cfg := DefaultConfig()
	cfg.ShutdownGrace = time.Second
	srv, err := New(cfg, store, tokenAuth{}, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	if err := srv.Ready(context.Background()); err != nil {
		t.Fatalf("not ready at start: %v", err)
	}
	store.mu.Lock()
	store.commitFailing = true
	store.mu.Unlock()
	done := make(chan error, 1)
	if err := srv.pipe.submit(context.Background(), telemetry.Batch{Device: "x", Seq: 1, Readings: []telemetry.Reading{{Metric: "m"}}},
		func(_ telemetry.Outcome, err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.Ready(context.Background()) == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready after 10s of failing commits")
		}
		time.Sleep(10 * time.Millisecond)
	}
	store.mu.Lock()
	store.commitFailing = false
	store.mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := srv.Ready(context.Background()); err != nil {
		t.Fatalf("not ready after the commit succeeded: %v", err)
	}
}

// TestDrainDeadlineWithStoreDown: the store is down, the writer retries, and
// many one-reading batches are queued (more than a flush or two): drain must
// still return at its deadline, not wait for the store to come back.
func TestDrainDeadlineWithStoreDown(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Writers = 1
	cfg.FlushSize = 10
	cfg.MaxBatch = 10
	cfg.QueueReadings = 1000
	store := newMemStore()
	store.commitFailing = true
	p := newPipeline(cfg, store, slog.New(slog.DiscardHandler), newMetrics(nil), nil)
	p.start()
	var submits sync.WaitGroup
	for i := 1; i <= 40; i++ {
		submits.Add(1)
		go func() {
			defer submits.Done()
			_ = p.submit(context.Background(), telemetry.Batch{Device: "d", Seq: uint64(i),
				Readings: []telemetry.Reading{{Metric: "m", Time: 1, Value: 1}}}, func(telemetry.Outcome, error) {})
		}()
	}
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := p.drain(ctx); err == nil {
		t.Fatal("drain with the store down reported success")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("drain took %s past a 300 ms deadline", d)
	}
	submits.Wait() // every submit returned (queued or refused), none is stuck
}

// hangingStore's Commit blocks until its context ends (a partitioned
// network, a lock wait).
type hangingStore struct{ memStore }

func (h *hangingStore) Commit(ctx context.Context, _ []telemetry.Batch) ([]telemetry.Outcome, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestDrainDeadlineCancelsHungCommit: a commit in progress at the drain
// deadline is cancelled, so drain returns at once instead of after the
// commit's own 30 s timeout.
func TestDrainDeadlineCancelsHungCommit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Writers = 1
	store := &hangingStore{memStore: *newMemStore()}
	p := newPipeline(cfg, store, slog.New(slog.DiscardHandler), newMetrics(nil), nil)
	p.start()
	if err := p.submit(context.Background(), telemetry.Batch{Device: "d", Seq: 1,
		Readings: []telemetry.Reading{{Metric: "m", Time: 1, Value: 1}}}, func(telemetry.Outcome, error) {}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the commit is hanging
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = p.drain(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("drain took %s with a hung commit; want about its 200 ms deadline", d)
	}
}
