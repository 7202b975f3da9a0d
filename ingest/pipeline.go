package ingest

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
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
// Group commit: a writer that is idle commits what it has at once; while a
// commit is in flight, new batches wait in its queue and go into the next
// commit together, up to FlushSize readings. Flushes therefore stay small
// (low ack latency) at low rates and grow towards FlushSize under load by
// themselves, the way PostgreSQL's WAL writer and Kafka's producer batch.
// Linger > 0 adds a fixed wait before each commit for more batches to join
// (Linger = 100ms is the fixed-interval flush of earlier versions).
//
// Ordering: a device is pinned to one writer by a hash of its id, and each
// writer handles its queue in FIFO order and commits one flush at a time, so
// a device's batches commit — and their acks are delivered — in the order
// they were submitted, whichever transport they came over.
//
// Failures: a commit that fails because the store is unavailable is retried
// with backoff (nothing is acked meanwhile; health reports it after a few
// attempts). A commit the store refuses because of the data itself
// (telemetry.ErrInvalidData) is split in halves that are committed in order,
// down to the batches that fail alone: those are answered with a
// batch_refused error (docs/protocol.md) and never stored; every other batch
// commits and is acked. One device's bad data thus never stops another's acks.
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
	// abortCtx ends with abort: commit attempts run under it, so a commit
	// hung at the drain deadline is cancelled instead of holding Shutdown
	// for its own 30 s timeout.
	abortCtx    context.Context
	abortCommit context.CancelFunc

	inflight sync.WaitGroup // items submitted and not yet done

	// writerHealth holds each writer's failure streak, read by health() for
	// /readyz from other goroutines.
	writerHealth []writerHealth

	// pending counts each device's items submitted and not yet done, so a
	// new session can wait for an old one's batches to commit before it reads
	// the watermark for hello.acked. idle[device] is closed when it drops to 0.
	pendMu  sync.Mutex
	pending map[string]int
	idle    map[string]chan struct{}
	// gens counts submissions per bucket of devices (by hash of the id),
	// under pendMu, so a handshake can tell that a device had nothing
	// submitted since it read the watermark and reuse that read for hello
	// (idleMark). A fixed array, not a map per device: it never grows, and
	// two devices sharing a bucket only cost an extra watermark read.
	gens [genBuckets]uint64
	// touched[bucket] is the value of seq at the bucket's last submission
	// or completion, under pendMu, for a watermark read made before the
	// handshake knows which device it is for (quietSince).
	touched [genBuckets]uint64
	seq     uint64
	wg      sync.WaitGroup // writer goroutines

	committed func(telemetry.Batch)
}

// errShuttingDown is returned to items that could not be committed before
// the drain deadline; they are never acked, so the device resends them.
// A batch the store refused gets a *wire.ProtocolError instead (refuse).
var errShuttingDown = errors.New("server shutting down")

func newPipeline(cfg Config, store Store, log *slog.Logger, m *metrics, committed func(telemetry.Batch)) *pipeline {
	p := &pipeline{
		cfg:          cfg,
		store:        store,
		log:          log,
		m:            m,
		budget:       semaphore.NewWeighted(int64(cfg.QueueReadings)),
		seed:         maphash.MakeSeed(),
		shards:       make([]chan *item, cfg.Writers),
		writerHealth: make([]writerHealth, cfg.Writers),
		stopping:     make(chan struct{}),
		abort:        make(chan struct{}),
		committed:    committed,
		pending:      make(map[string]int),
		idle:         make(map[string]chan struct{}),
	}
	// Every queued item holds at least one reading of the budget, so all
	// shards together never hold more than QueueReadings items: with that
	// capacity a send after a successful acquire never blocks (a blocked
	// send would hold p.mu's read lock and ignore the session's context,
	// and drain could not take the write lock). 200,000 slots are 1.6 MB
	// of pointers per writer.
	for i := range p.shards {
		p.shards[i] = make(chan *item, cfg.QueueReadings)
	}
	p.abortCtx, p.abortCommit = context.WithCancel(context.Background())
	return p
}

func (p *pipeline) start() {
	for i := range p.shards {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.writer(i)
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
	h := maphash.String(p.seed, b.Device)
	p.inflight.Add(1)
	p.pendMu.Lock()
	p.pending[b.Device]++
	p.gens[h%genBuckets]++
	p.seq++
	p.touched[h%genBuckets] = p.seq
	p.pendMu.Unlock()
	p.m.queueReadings.Add(float64(w))
	shard := p.shards[h%uint64(len(p.shards))]
	shard <- it
	return nil
}

// writer commits its queue's items in flushes, one flush at a time: it waits
// for a first item, takes whatever else is already queued (up to FlushSize
// readings), lingers if configured, and commits. At drain it commits what is
// queued and returns.
func (p *pipeline) writer(shard int) {
	q := p.shards[shard]
	var (
		pending []*item
		timer   = time.NewTimer(time.Hour)
	)
	timer.Stop()
	for {
		pending = pending[:0]
		select {
		case it := <-q:
			pending = append(pending, it)
		case <-p.stopping:
			// Drain: whatever is still queued is committed now.
			for {
				pending, _ = p.gather(q, pending[:0], 0)
				if len(pending) == 0 {
					return
				}
				p.commit(shard, pending)
			}
		}
		// Batches that queued up while the previous commit was in flight
		// join this one: that is the whole of group commit.
		var readings int
		pending, readings = p.gather(q, pending, len(pending[0].batch.Readings))
		if p.cfg.Linger > 0 && readings < p.cfg.FlushSize {
			timer.Reset(p.cfg.Linger)
		linger:
			for readings < p.cfg.FlushSize {
				select {
				case it := <-q:
					pending = append(pending, it)
					readings += len(it.batch.Readings)
				case <-timer.C:
					break linger
				case <-p.stopping:
					break linger
				}
			}
			timer.Stop()
		}
		p.commit(shard, pending)
	}
}

// gather appends the items already waiting in q, without blocking, until
// the flush holds FlushSize readings (the last item may pass it: batches are
// never split across flushes).
func (p *pipeline) gather(q chan *item, pending []*item, readings int) ([]*item, int) {
	for readings < p.cfg.FlushSize {
		select {
		case it := <-q:
			pending = append(pending, it)
			readings += len(it.batch.Readings)
		default:
			return pending, readings
		}
	}
	return pending, readings
}

// When the readiness check reports a stuck writer: after this many
// consecutive failed attempts (with the backoff below, ~0.75 s of retrying:
// one blip does not flip readiness, a store that stays down does), or when a
// writer has been failing, or one attempt has been running, this long.
const (
	unhealthyAfterFailures = 5
	unhealthyAfter         = 10 * time.Second
)

// writerHealth is one writer's failure streak. Only that writer stores;
// health() loads from any goroutine.
type writerHealth struct {
	failures     atomic.Int64 // consecutive failed attempts; 0 after a success
	failingSince atomic.Int64 // Unix ns of the streak's first failure; 0 when healthy
	attemptStart atomic.Int64 // Unix ns the running attempt started; 0 when none
}

// health returns an error while a writer's flushes keep failing (see the
// constants above). Data errors do not count: their batches are isolated
// and answered, so they stop no one.
func (p *pipeline) health() error {
	now := time.Now().UnixNano()
	for i := range p.writerHealth {
		h := &p.writerHealth[i]
		n, since, attempt := h.failures.Load(), h.failingSince.Load(), h.attemptStart.Load()
		switch {
		case n >= unhealthyAfterFailures:
			return fmt.Errorf("ingest writer %d: %d consecutive commits failed", i, n)
		case since != 0 && now-since >= int64(unhealthyAfter):
			return fmt.Errorf("ingest writer %d: commits failing for %s", i, time.Duration(now-since).Round(time.Second))
		case attempt != 0 && now-attempt >= int64(unhealthyAfter):
			return fmt.Errorf("ingest writer %d: a commit has been running for %s", i, time.Duration(now-attempt).Round(time.Second))
		}
	}
	return nil
}

// commit commits the items, retrying with backoff while the store is
// unavailable: Commit is atomic and deduplicates by watermark, so a retry
// after an ambiguous failure (commit applied, reply lost) stores nothing
// twice — the batches then come back as duplicates, which is still a
// truthful ack. When the store refuses the data (telemetry.ErrInvalidData)
// it bisects instead: the halves are committed in order (so per-device order
// holds), recursively, until the batch at fault is alone and refused.
func (p *pipeline) commit(shard int, items []*item) {
	h := &p.writerHealth[shard]
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
		h.attemptStart.Store(start.UnixNano())
		// Each attempt gets its own deadline so a hung connection cannot
		// stall the writer forever; 30 s is far above a healthy flush.
		ctx, cancel := context.WithTimeout(p.abortCtx, 30*time.Second)
		outcomes, err := p.store.Commit(ctx, batches)
		cancel()
		h.attemptStart.Store(0)
		p.m.flushSeconds.Observe(time.Since(start).Seconds())
		if err == nil && len(outcomes) != len(batches) {
			err = fmt.Errorf("store returned %d outcomes for %d batches", len(outcomes), len(batches))
		}
		if err == nil {
			h.failures.Store(0)
			h.failingSince.Store(0)
			p.m.flushFailing.WithLabelValues(strconv.Itoa(shard)).Set(0)
			p.m.batchReadings.Observe(float64(n))
			p.finish(items, outcomes, nil)
			return
		}
		if errors.Is(err, telemetry.ErrInvalidData) {
			p.m.flushFailures.WithLabelValues("data").Inc()
			if len(items) == 1 {
				p.refuse(items[0], err)
				return
			}
			p.log.Debug("store refused a flush's data; splitting it", "batches", len(items), "readings", n, "err", err)
			mid := len(items) / 2
			p.commit(shard, items[:mid])
			p.commit(shard, items[mid:])
			return
		}
		reason := "unavailable"
		if errors.Is(err, context.DeadlineExceeded) {
			reason = "timeout"
		}
		p.m.flushFailures.WithLabelValues(reason).Inc()
		failures := h.failures.Add(1)
		h.failingSince.CompareAndSwap(0, start.UnixNano())
		p.m.flushFailing.WithLabelValues(strconv.Itoa(shard)).Set(float64(failures))
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

// refuse answers a batch the store refused on its own: not stored, not
// acked, and its device is told why (batch_refused, docs/protocol.md).
func (p *pipeline) refuse(it *item, err error) {
	p.m.batchesRefused.Inc()
	p.log.Warn("store refused a batch; its device is told, the rest of the flush committed",
		"device", it.batch.Device, "seq", it.batch.Seq, "readings", len(it.batch.Readings), "err", err)
	p.finish([]*item{it}, nil, &wire.ProtocolError{
		Close:   wire.CloseInvalidData,
		Code:    "batch_refused",
		Message: fmt.Sprintf("batch seq %d refused by storage and not stored; do not resend it unchanged", it.batch.Seq),
	})
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
		h := maphash.String(p.seed, it.batch.Device)
		p.pendMu.Lock()
		p.seq++
		p.touched[h%genBuckets] = p.seq
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

// genBuckets sizes pipeline.gens: 4,096 counters (32 KiB). A bucket shared
// with a device that submits meanwhile only costs a second watermark read.
const genBuckets = 4096

// idleMark records that a device had nothing in the pipeline, and its
// bucket's submission count, at one instant (ok false: it had something).
type idleMark struct {
	gen uint64
	ok  bool
}

// markIdle takes an idleMark for device. Take it before reading the
// watermark: if stillIdle later holds, every batch of the device ever
// submitted had finished (committed or failed) before that read, so the
// value read is exactly what waitIdle followed by a fresh read would give.
func (p *pipeline) markIdle(device string) idleMark {
	h := maphash.String(p.seed, device)
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	return idleMark{gen: p.gens[h%genBuckets], ok: p.pending[device] == 0}
}

// markAll returns a point in the pipeline's history to pass to quietSince.
// A handshake takes it before the query that finds out which device the
// token belongs to and reads the device's watermark with it
// (AckedAuthenticator).
func (p *pipeline) markAll() uint64 {
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	return p.seq
}

// quietSince reports whether device has nothing in the pipeline and no
// batch of its bucket was submitted or finished after since (markAll):
// then none of its batches was in flight at any time since, so a watermark
// read after since saw every batch of the device ever submitted finished.
// (A batch in flight at since and finished later touches the bucket; one
// still in flight is pending.)
func (p *pipeline) quietSince(device string, since uint64) bool {
	h := maphash.String(p.seed, device)
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	return p.pending[device] == 0 && p.touched[h%genBuckets] <= since
}

// stillIdle reports whether m was taken while device was idle and nothing
// was submitted for it (or for a device sharing its bucket) since.
func (p *pipeline) stillIdle(device string, m idleMark) bool {
	if !m.ok {
		return false
	}
	h := maphash.String(p.seed, device)
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	return p.pending[device] == 0 && p.gens[h%genBuckets] == m.gen
}

// drain stops intake, lets writers commit everything queued, and waits for
// that until ctx ends; then it aborts retries and waits for writers to exit.
func (p *pipeline) drain(ctx context.Context) error {
	// The deadline aborts even while this waits for the lock below.
	stop := context.AfterFunc(ctx, p.abortNow)
	defer stop()
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
		p.abortNow()
		<-done
		return ctx.Err()
	}
}

// abortNow stops every writer's retries and cancels a commit in progress:
// after the drain deadline nothing more may commit.
func (p *pipeline) abortNow() {
	p.abortOnce.Do(func() {
		close(p.abort)
		p.abortCommit()
	})
}
