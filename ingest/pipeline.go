package ingest

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// item is one batch travelling through the pipeline with the place its
// outcome goes. done is called exactly once, from the writer goroutine, in
// the order the device's batches were submitted; it must not block.
type item struct {
	batch  telemetry.Batch
	weight int64 // readings held against the queue budget (>= 1)
	done   func(telemetry.Outcome, error)
}

// pipeline batches readings from every connection into store commits.
//
// Ordering: a device is pinned to one writer by a hash of its id, and each
// writer handles its queue in FIFO order and commits one flush at a time, so
// a device's batches commit — and their acks are delivered — in the order
// they were submitted, whichever transport they came over.
//
// Backpressure: budget is a semaphore over readings accepted but not yet
// committed. submit blocks while it is exhausted, so the read loop that
// called it stops reading its socket and TCP pushes back on the device.
// Nothing is buffered beyond QueueReadings.
type pipeline struct {
	cfg    Config
	store  Store
	log    *slog.Logger
	m      *metrics
	budget *semaphore.Weighted
	seed   maphash.Seed
	shards []chan *item

	// stopping is closed when the pipeline should drain: writers commit what
	// is queued and return when their queue is empty.
	mu       sync.RWMutex
	draining bool
	stopping chan struct{}
	// abort is closed when the drain deadline passed: writers stop retrying.
	abortOnce sync.Once
	abort     chan struct{}

	inflight sync.WaitGroup // items submitted and not yet done

	// pending counts each device's items submitted and not yet done, so a
	// new session can wait for an old one's batches to commit before it reads
	// the watermark for hello.acked. idle[device] is closed when it drops to 0.
	pendMu  sync.Mutex
	pending map[string]int
	idle    map[string]chan struct{}
	wg      sync.WaitGroup // writer goroutines

	committed func(telemetry.Batch)
}

// errShuttingDown is returned to items that could not be committed before
// the drain deadline; they are never acked, so the device resends them.
var errShuttingDown = errors.New("server shutting down")

func newPipeline(cfg Config, store Store, log *slog.Logger, m *metrics, committed func(telemetry.Batch)) *pipeline {
	p := &pipeline{
		cfg:       cfg,
		store:     store,
		log:       log,
		m:         m,
		budget:    semaphore.NewWeighted(int64(cfg.QueueReadings)),
		seed:      maphash.MakeSeed(),
		shards:    make([]chan *item, cfg.Writers),
		stopping:  make(chan struct{}),
		abort:     make(chan struct{}),
		committed: committed,
		pending:   make(map[string]int),
		idle:      make(map[string]chan struct{}),
	}
	// A shard channel holds at most QueueReadings items (each weighs >= 1
	// against the budget), so a send after a successful acquire never blocks
	// for long; its capacity only needs to cover a flush or two.
	capacity := max(cfg.FlushSize, cfg.MaxBatch) * 2
	for i := range p.shards {
		p.shards[i] = make(chan *item, min(capacity, cfg.QueueReadings))
	}
	return p
}

func (p *pipeline) start() {
	for i := range p.shards {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.writer(p.shards[i])
		}()
	}
}

// submit hands a batch to its device's writer. It blocks while the queue
// budget is exhausted (backpressure) and returns ctx's error if ctx ends
// first, or errShuttingDown once draining began; then nothing was queued and
// done will not be called.
func (p *pipeline) submit(ctx context.Context, b telemetry.Batch, done func(telemetry.Outcome, error)) error {
	w := int64(max(len(b.Readings), 1))
	if err := ctx.Err(); err != nil {
		return err // e.g. the session was closed by a takeover
	}
	select {
	case <-p.stopping:
		return errShuttingDown
	default:
	}
	if !p.budget.TryAcquire(w) {
		start := time.Now()
		p.m.backpressure.Inc()
		err := p.budget.Acquire(ctx, w)
		p.m.backpressureSeconds.Add(time.Since(start).Seconds())
		if err != nil {
			return err
		}
	}
	// The read lock spans the check and the send so drain (which takes the
	// write lock before closing stopping) never strands an item in a queue
	// whose writer has already exited.
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.draining {
		p.budget.Release(w)
		return errShuttingDown
	}
	it := &item{batch: b, weight: w, done: done}
	p.inflight.Add(1)
	p.pendMu.Lock()
	p.pending[b.Device]++
	p.pendMu.Unlock()
	p.m.queueReadings.Add(float64(w))
	shard := p.shards[maphash.String(p.seed, b.Device)%uint64(len(p.shards))]
	shard <- it
	return nil
}

// writer collects items into flushes of up to FlushSize readings or
// FlushInterval of waiting, and commits them one at a time.
func (p *pipeline) writer(q chan *item) {
	var (
		pending  []*item
		readings int
		timer    = time.NewTimer(time.Hour)
	)
	timer.Stop()
	flush := func() {
		if len(pending) > 0 {
			p.flush(pending)
			pending, readings = pending[:0], 0
		}
	}
	for {
		if len(pending) == 0 {
			select {
			case it := <-q:
				pending = append(pending, it)
				readings += len(it.batch.Readings)
				timer.Reset(p.cfg.FlushInterval)
			case <-p.stopping:
				// Drain: whatever is still queued is committed now.
				for {
					select {
					case it := <-q:
						pending = append(pending, it)
						readings += len(it.batch.Readings)
						if readings >= p.cfg.FlushSize {
							flush()
						}
					default:
						flush()
						return
					}
				}
			}
		} else {
			select {
			case it := <-q:
				pending = append(pending, it)
				readings += len(it.batch.Readings)
			case <-timer.C:
				flush()
				continue
			case <-p.stopping:
				timer.Stop()
				flush()
				continue
			}
		}
		if readings >= p.cfg.FlushSize {
			timer.Stop()
			flush()
		}
	}
}

// flush commits the items, retrying with backoff while the store fails:
// Commit is atomic and deduplicates by watermark, so a retry after an
// ambiguous failure (commit applied, reply lost) stores nothing twice — the
// batches then come back as duplicates, which is still a truthful ack.
func (p *pipeline) flush(items []*item) {
	batches := make([]telemetry.Batch, len(items))
	n := 0
	for i, it := range items {
		batches[i] = it.batch
		n += len(it.batch.Readings)
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// After the drain deadline nothing more may commit: an earlier flush
		// of a device may have been abandoned unacked, and committing a later
		// one would move its watermark past readings that were never stored.
		select {
		case <-p.abort:
			p.finish(items, nil, errShuttingDown)
			return
		default:
		}
		start := time.Now()
		// Each attempt gets its own deadline so a hung connection cannot
		// stall the writer forever; 30 s is far above a healthy flush.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		outcomes, err := p.store.Commit(ctx, batches)
		cancel()
		p.m.flushSeconds.Observe(time.Since(start).Seconds())
		if err == nil && len(outcomes) != len(batches) {
			err = errors.New("store returned a wrong number of outcomes")
		}
		if err == nil {
			p.m.batchReadings.Observe(float64(n))
			p.finish(items, outcomes, nil)
			return
		}
		p.m.flushErrors.Inc()
		if attempt == 1 || attempt%20 == 0 {
			p.log.Warn("commit failed; retrying, devices are not acked meanwhile", "batches", len(batches), "readings", n, "attempt", attempt, "err", err)
		}
		select {
		case <-p.abort:
			p.log.Error("giving up on uncommitted batches at shutdown; devices will resend them", "batches", len(batches), "readings", n)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (p *pipeline) finish(items []*item, outcomes []telemetry.Outcome, err error) {
	for i, it := range items {
		var o telemetry.Outcome
		if err == nil {
			o = outcomes[i]
			if o.Duplicate {
				p.m.duplicates.Inc()
			} else {
				p.m.readingsStored.Add(float64(len(it.batch.Readings)))
				if p.committed != nil {
					p.committed(it.batch)
				}
			}
		}
		it.done(o, err)
		p.pendMu.Lock()
		if p.pending[it.batch.Device]--; p.pending[it.batch.Device] == 0 {
			delete(p.pending, it.batch.Device)
			if ch := p.idle[it.batch.Device]; ch != nil {
				close(ch)
				delete(p.idle, it.batch.Device)
			}
		}
		p.pendMu.Unlock()
		p.budget.Release(it.weight)
		p.m.queueReadings.Sub(float64(it.weight))
		p.inflight.Done()
	}
}

// waitIdle returns once the device has no batch in the pipeline, or when
// ctx ends. Called before reading the watermark for hello, so hello.acked
// covers every batch an earlier session of the device got into the pipeline.
func (p *pipeline) waitIdle(ctx context.Context, device string) error {
	p.pendMu.Lock()
	if p.pending[device] == 0 {
		p.pendMu.Unlock()
		return nil
	}
	ch := p.idle[device]
	if ch == nil {
		ch = make(chan struct{})
		p.idle[device] = ch
	}
	p.pendMu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain stops intake, lets writers commit everything queued, and waits for
// that until ctx ends; then it aborts retries and waits for writers to exit.
func (p *pipeline) drain(ctx context.Context) error {
	p.mu.Lock()
	if !p.draining {
		p.draining = true
		close(p.stopping)
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		p.abortOnce.Do(func() { close(p.abort) })
		<-done
		return ctx.Err()
	}
}
