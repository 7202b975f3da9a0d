package devices

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/storage"
)

// SessionWriter is what the session log needs from a store: write a group of
// records in one transaction (both backends' RecordSessions).
type SessionWriter interface {
	RecordSessions(ctx context.Context, g storage.SessionGroup) error
}

// ErrSessionLogClosed: the record arrived after Close; it is not written.
var ErrSessionLogClosed = errors.New("session log closed")

// ErrSessionLogFull: the log stayed full until the caller's context ended
// (the store is down or far behind); the record is not written.
var ErrSessionLogFull = errors.New("session log full")

// SessionLog records device sessions (device_sessions and last_seen) through
// a bounded queue written by one goroutine, a group of records per
// transaction. A session record is bookkeeping, not an acknowledged reading:
// it does not deserve a commit (an fsync on SQLite) of its own, and a
// handshake must not wait for one. Measured before this log: a commit per
// record capped handshakes at ~690/s and, in a reconnect storm, records
// waited on the store until their 5 s timeout and were dropped.
//
// Ordering: records are written in the order they were queued and a group
// is written (retried until it is) before the next is taken, so a session's
// close is never written before its open. A close whose open is still queued
// is folded into the open (one row, written closed).
//
// Overload policy: at most MaxPending records are held (queued or being
// written). A caller that finds the log full waits for room until its
// context ends; only then is the record dropped, counted in
// meridian_session_records_dropped_total{reason="full"} and reported to the
// caller. Folding a close into its queued open takes no room, and last_seen
// is coalesced per device within a group, so a storm of short sessions costs
// one row per session and one last_seen update per device. With a group of
// MaxGroup records committing in tens of milliseconds the log only fills
// when the store is down; it then holds the records (retrying with backoff)
// instead of growing without bound.
//
// Concurrency: Opened and Closed may be called from any goroutine and do not
// wait for the store; Run is the only writer; Close stops intake and drains.
type SessionLog struct {
	w          SessionWriter
	log        *slog.Logger
	maxPending int
	maxGroup   int
	m          sessionLogMetrics
	now        func() time.Time

	mu      sync.Mutex
	pending storage.SessionGroup // queued, not yet taken by the writer
	openAt  map[string]int       // session id → index in pending.Opened
	held    int                  // records queued or being written
	room    chan struct{}        // closed (and replaced) when held drops
	closed  bool                 // Close was called: no more intake
	started bool                 // Run was called
	drain   context.Context      // bounds the final drain; set by Close

	wake chan struct{} // a record was queued (capacity 1)
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the writer has finished draining
	lost int           // records that could not be written by shutdown
}

// SessionLogOptions size a SessionLog; zero values take the defaults.
type SessionLogOptions struct {
	// MaxPending bounds records held (queued or being written). 100,000
	// records of ~200 bytes is ~20 MB: two records (open, close) for every
	// session of a node at its default 50,000 connections, so a whole
	// fleet reconnecting twice while the store is briefly away fits.
	MaxPending int
	// MaxGroup bounds the records of one transaction. 5,000 records are a
	// ~30-100 ms transaction on either backend, short enough not to hold
	// the SQLite writer away from readings commits for long, large enough
	// that a reconnect storm of 20,000 devices is a handful of commits.
	MaxGroup   int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

const (
	defaultSessionPending = 100_000
	defaultSessionGroup   = 5_000
	// sessionWriteTimeout bounds one group's transaction; a store that does
	// not answer in that time is retried like one that failed.
	sessionWriteTimeout = 30 * time.Second
	// sessionDrainTimeout bounds the final drain when Run's context ends
	// without Close (Close brings its own deadline).
	sessionDrainTimeout = 5 * time.Second
	sessionRetryMin     = 100 * time.Millisecond
	sessionRetryMax     = 5 * time.Second
)

// NewSessionLog builds a log writing to w; start Run, then call Close in the
// stop order after the last session has closed and before the store closes.
func NewSessionLog(w SessionWriter, o SessionLogOptions) *SessionLog {
	if o.MaxPending <= 0 {
		o.MaxPending = defaultSessionPending
	}
	if o.MaxGroup <= 0 {
		o.MaxGroup = defaultSessionGroup
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l := &SessionLog{
		w:          w,
		log:        o.Logger,
		maxPending: o.MaxPending,
		maxGroup:   o.MaxGroup,
		now:        time.Now,
		openAt:     make(map[string]int),
		room:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	l.m = newSessionLogMetrics(o.Registerer, l.pendingCount)
	return l
}

// Opened queues the record of a session that opened (and the device's
// last_seen). It returns at once unless the log is full (see the type's
// overload policy).
func (l *SessionLog) Opened(ctx context.Context, s storage.Session) error {
	if s.StartedAt.IsZero() {
		s.StartedAt = l.now()
	}
	return l.enqueue(ctx, "open", nil, func() {
		l.openAt[s.ID] = len(l.pending.Opened)
		l.pending.Opened = append(l.pending.Opened, s)
	})
}

// Closed queues the end of a session (and the device's last_seen). A close
// whose open is still queued is folded into it and never waits.
func (l *SessionLog) Closed(ctx context.Context, e storage.SessionEnd) error {
	if e.EndedAt.IsZero() {
		e.EndedAt = l.now()
	}
	fold := func() bool {
		i, ok := l.openAt[e.ID]
		if ok {
			o := &l.pending.Opened[i]
			o.EndedAt, o.CloseReason, o.Readings = &e.EndedAt, e.Reason, e.Readings
		}
		return ok
	}
	return l.enqueue(ctx, "close", fold, func() { l.pending.Closed = append(l.pending.Closed, e) })
}

// enqueue folds the record into a queued one (fold, may be nil) or, once
// there is room, adds it (add), under the lock.
func (l *SessionLog) enqueue(ctx context.Context, kind string, fold func() bool, add func()) error {
	waited := false
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			l.m.dropped.WithLabelValues("closed").Inc()
			return fmt.Errorf("record session %s: %w", kind, ErrSessionLogClosed)
		}
		if fold != nil && fold() {
			l.mu.Unlock()
			return nil // no new record: the writer has it queued already
		}
		if l.held < l.maxPending {
			add()
			l.held++
			l.mu.Unlock()
			select {
			case l.wake <- struct{}{}:
			default: // the writer is already due to look
			}
			return nil
		}
		room := l.room
		l.mu.Unlock()
		if !waited {
			waited = true
			l.m.waits.Inc()
		}
		select {
		case <-room:
		case <-ctx.Done():
			l.m.dropped.WithLabelValues("full").Inc()
			return fmt.Errorf("record session %s: %w (%d records held): %w", kind, ErrSessionLogFull, l.maxPending, ctx.Err())
		}
	}
}

// take removes up to maxGroup queued records, oldest first.
func (l *SessionLog) take() storage.SessionGroup {
	l.mu.Lock()
	defer l.mu.Unlock()
	var g storage.SessionGroup
	no := min(len(l.pending.Opened), l.maxGroup)
	nc := min(len(l.pending.Closed), l.maxGroup-no)
	if no == 0 && nc == 0 {
		return g
	}
	// Copies, so the queue's arrays can be reused without aliasing a group
	// that is being written.
	g.Opened = append([]storage.Session(nil), l.pending.Opened[:no]...)
	g.Closed = append([]storage.SessionEnd(nil), l.pending.Closed[:nc]...)
	l.pending.Opened = append(l.pending.Opened[:0], l.pending.Opened[no:]...)
	l.pending.Closed = append(l.pending.Closed[:0], l.pending.Closed[nc:]...)
	// Opens taken can no longer absorb their close: it is queued as a
	// close, written in a later group, after this one.
	clear(l.openAt)
	for i, s := range l.pending.Opened {
		l.openAt[s.ID] = i
	}
	return g
}

// written frees the room of n records and wakes callers waiting for it.
func (l *SessionLog) written(n int) {
	l.mu.Lock()
	l.held -= n
	close(l.room)
	l.room = make(chan struct{})
	l.mu.Unlock()
}

func (l *SessionLog) pendingCount() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return float64(l.held)
}

// Run writes queued records until Close is called or ctx ends, then drains
// what is queued (bounded by Close's context, or by a few seconds when ctx
// ended first) and returns. Write failures are logged and retried with
// backoff; the records stay queued.
func (l *SessionLog) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.started || l.closed {
		l.mu.Unlock()
		return nil // Close drained already (Run started late), or Run twice
	}
	l.started = true
	l.mu.Unlock()
	defer close(l.done)

	var g storage.SessionGroup
	backoff := time.Duration(0)
	for {
		if g.Len() == 0 {
			g = l.take()
		}
		if g.Len() == 0 {
			select {
			case <-l.wake:
				continue
			case <-l.stop:
			case <-ctx.Done():
			}
			break
		}
		if err := l.write(ctx, g); err != nil {
			backoff = min(max(2*backoff, sessionRetryMin), sessionRetryMax)
			l.log.Warn("write session records; retrying", "records", g.Len(), "retry_in", backoff, "err", err)
			select {
			case <-time.After(backoff):
				continue
			case <-l.stop:
			case <-ctx.Done():
			}
			break
		}
		backoff = 0
		g = storage.SessionGroup{}
	}

	// Stopping: write what is held (the group in hand first), then return.
	l.mu.Lock()
	l.closed = true
	dctx := l.drain
	l.mu.Unlock()
	if dctx == nil {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), sessionDrainTimeout)
		defer cancel()
	}
	return l.finish(dctx, g)
}

// finish writes g and then everything queued, until dctx ends.
func (l *SessionLog) finish(dctx context.Context, g storage.SessionGroup) error {
	for {
		if g.Len() == 0 {
			if g = l.take(); g.Len() == 0 {
				return nil
			}
		}
		if err := l.write(dctx, g); err != nil {
			if dctx.Err() == nil {
				select {
				case <-time.After(sessionRetryMin):
					continue
				case <-dctx.Done():
				}
			}
			l.mu.Lock()
			l.lost = l.held
			l.mu.Unlock()
			l.m.dropped.WithLabelValues("shutdown").Add(float64(l.lost))
			return fmt.Errorf("session log: %d records not written at shutdown: %w", l.lost, err)
		}
		g = storage.SessionGroup{}
	}
}

func (l *SessionLog) write(ctx context.Context, g storage.SessionGroup) error {
	wctx, cancel := context.WithTimeout(ctx, sessionWriteTimeout)
	defer cancel()
	start := time.Now()
	err := l.w.RecordSessions(wctx, g)
	l.m.flushSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		l.m.flushErrors.Inc()
		return err
	}
	l.m.written.Add(float64(g.Len()))
	l.written(g.Len())
	return nil
}

// Close stops intake (later records fail with ErrSessionLogClosed) and waits
// until Run has written everything held, or ctx ends. Call it after ingest
// has shut down (its sessions' closes are queued) and before the store
// closes. Without a running Run, Close drains on the caller's goroutine.
func (l *SessionLog) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed && !l.started {
		l.mu.Unlock()
		<-l.done
		return l.lostErr()
	}
	first := !l.closed
	l.closed = true
	started := l.started
	if first {
		l.drain = ctx
	}
	l.mu.Unlock()
	if !started {
		if first {
			err := l.finish(ctx, storage.SessionGroup{})
			close(l.done)
			return err
		}
		<-l.done
		return l.lostErr()
	}
	if first {
		close(l.stop)
	}
	select {
	case <-l.done:
		return l.lostErr()
	case <-ctx.Done():
		return fmt.Errorf("session log: drain: %.0f records held: %w", l.pendingCount(), ctx.Err())
	}
}

func (l *SessionLog) lostErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost > 0 {
		return fmt.Errorf("session log: %d records not written at shutdown", l.lost)
	}
	return nil
}

type sessionLogMetrics struct {
	written      prometheus.Counter
	dropped      *prometheus.CounterVec // reason: full, closed, shutdown
	waits        prometheus.Counter
	flushErrors  prometheus.Counter
	flushSeconds prometheus.Histogram
}

func newSessionLogMetrics(reg prometheus.Registerer, held func() float64) sessionLogMetrics {
	m := sessionLogMetrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_session_records_written_total",
			Help: "Device session records (opens, closes) written to the store."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_session_records_dropped_total",
			Help: "Device session records not written, by reason (full: the log stayed full for the caller's timeout; closed: after shutdown began; shutdown: still held when the drain deadline passed)."}, []string{"reason"}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_session_record_waits_total",
			Help: "Times a session record waited for room in a full session log."}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_session_flush_errors_total",
			Help: "Failed session record group writes (each is retried)."}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_session_flush_seconds",
			Help: "Latency of one session record group write.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
	}
	if reg != nil {
		reg.MustRegister(m.written, m.dropped, m.waits, m.flushErrors, m.flushSeconds,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_session_records_pending",
				Help: "Device session records queued or being written."}, held))
	}
	return m
}
