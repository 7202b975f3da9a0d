package ingest

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// admission shapes a reconnect storm instead of suffering it. When a node
// restarts, its whole fleet reconnects within a second or two; handshakes
// cost database work, so only MaxHandshakes run at once. Two things decide
// how fast the fleet is back:
//
//   - A handshake that finds every slot busy waits, in arrival order, for
//     the next slot to free instead of being refused at once: slots are
//     handed on as fast as handshakes complete. The wait is bounded by time
//     (maxWait, well inside the client's handshake timeout) and by count
//     (maxQueue), and a handshake joins only if the slots, at the rate they
//     are completing, would reach it within maxWait.
//   - A handshake that cannot wait is refused with a Retry-After: the
//     earliest second by which the node, at its measured handshake rate,
//     will have served the waiters ahead of it, every device already told
//     to come back by then, and this one. The node keeps the schedule of
//     its promises, so no second is promised to more devices than it
//     admits in a second: refused devices return spread evenly at about the
//     rate the node can admit them, instead of all together after a fixed
//     delay (a fixed "Retry-After: 5" turned one storm into a wave every
//     five seconds), and no later than that rate needs.
//
// Overload policy: never more than cap(slots) handshakes run and maxQueue
// wait; everything beyond is refused at once (no work done for it) with a
// Retry-After; nothing queues without bound.
//
// Concurrency: tryAcquire and the release functions it returns are safe for
// concurrent use.
type admission struct {
	slots    chan struct{}
	maxWait  time.Duration
	maxQueue int64
	now      func() time.Time

	waiting atomic.Int64

	mu sync.Mutex
	// took is the moving average of how long a handshake holds its slot;
	// cap(slots)/took is the rate the node admits handshakes at when
	// saturated (which is when it matters), known from the first
	// completions of a storm on, unlike a rate counted over seconds.
	took      time.Duration
	returning secondCounts // refused handshakes, by the second told to return
	done      secondCounts // completed handshakes, by the tenth of a second they completed in
}

const (
	// admissionMaxWait bounds how long a handshake waits for a slot: under
	// the 10 s default ingest.handshake_timeout and the client libraries'
	// 10 s dial timeout with room for the handshake itself, long enough
	// that a restarted node serves the first seconds of a storm in order
	// instead of refusing them.
	admissionMaxWait = 4 * time.Second
	// admissionQueuePerSlot sizes the wait queue: 256 waiters per slot
	// (8,192 with 32 slots) is ~2-4 s of handshakes at 2,000-4,000/s. A
	// waiter is a parked net/http handler, ~16 KiB with its buffers: at
	// most ~130 MiB for the whole queue, paid only during a storm. Each
	// waiter is a refusal avoided, and a refusal costs the node an accept,
	// a parsed request and a 503, and costs the device a whole new
	// connection later: with 64 per slot a 19,000-device storm answered
	// ~15,000 503s and its fleet used a third more CPU (docs/benchmarks.md,
	// "Supervisor restart, a spread fleet, two convoys on the handshake
	// path").
	admissionQueuePerSlot = 256
	// assumedHandshake is the handshake time assumed before one has been
	// measured: 20 ms (several store round trips under load).
	assumedHandshake = 20 * time.Millisecond
	// retryAfterMax caps the Retry-After given. A promise is never
	// revised, and the first refusals of a storm are made while the
	// restarted node is coldest (pools connecting, caches empty), so their
	// rate estimate is the worst of the storm: with a 60 s cap a 19,000-
	// device storm on 2 cores ran at 2,000 handshakes/s for a few seconds
	// and then at tens per second for a minute while refused devices sat
	// out their promises (docs/benchmarks.md, "19,000 devices"); with 15 s,
	// on PostgreSQL (whose pool connects and prepares while the first
	// refusals are booked at ~500/s), the last third of the fleet came back
	// at exactly the booked ~500-1,000/s for ten seconds while the warm
	// node could do 3,000/s; with 6 s, a storm whose first second was slow
	// booked its last 3,700 refusals for second 6 and the node sat idle for
	// 4 s before them (10.0 s in all; 4 s: medians 6.9 s against 8.0 s,
	// docs/benchmarks.md "Token lookups in shared queries, returns at the
	// earliest free second"). 4 s is maxWait: no device is told to stay
	// away longer than one wait in line. A device that returns too early
	// waits in line or is refused again with a fresh, warmer estimate,
	// which costs the node an accept and a 503 and no store work. The
	// price is for fleets far larger than 4 s of handshakes: their
	// overflow is refused again every 4 s (with 6 s, every 6 s) until the
	// node catches up.
	retryAfterMax = 4 * time.Second
	// returnOptimism books refused devices' returns at this multiple of the
	// measured rate. Most refusals happen in a storm's first seconds, when
	// the just-started node measures its worst handshake time (pools
	// connecting, caches cold, the whole fleet arriving at once), and a
	// promise is never revised: booked at that rate, the fleet came back
	// over twice the time the warm node needed (a 19,000-device storm: the
	// node served ~18,700 within 8 s and the rest trickled in until the
	// cap). Erring early costs a device at most one more refusal, which
	// does no store work; erring late leaves the node idle.
	returnOptimism = 2
	// tookWeight is the weight of one handshake in the moving average of
	// handshake time: ~1/64 follows a storm's changing cost within a few
	// hundred handshakes without jumping on one slow one.
	tookWeight = 1.0 / 64
)

// newAdmission admits up to slots handshakes at once (ingest.max_handshakes).
func newAdmission(slots int) *admission {
	return &admission{
		slots:    make(chan struct{}, slots),
		maxWait:  admissionMaxWait,
		maxQueue: int64(slots) * admissionQueuePerSlot,
		took:     assumedHandshake,
		now:      time.Now,
	}
}

// tryAcquire takes a handshake slot, waiting in line for one when that is
// likely to succeed within maxWait. With ok it returns release, to be called
// exactly once when the handshake is over (later calls do nothing). Without
// ok the caller answers 503 with Retry-After: retryAfter (whole seconds, at
// least 1). A ctx that ends while waiting (the client left) refuses too.
func (a *admission) tryAcquire(ctx context.Context) (release func(), retryAfter time.Duration, ok bool) {
	select {
	case a.slots <- struct{}{}:
		return a.releaser(), 0, true
	default:
	}
	if !a.mayWait() {
		return nil, a.refuse(), false
	}
	defer a.waiting.Add(-1)
	t := time.NewTimer(a.maxWait)
	defer t.Stop()
	select {
	case a.slots <- struct{}{}:
		return a.releaser(), 0, true
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, a.refuse(), false
}

// mayWait joins the wait queue (incrementing waiting) if it has room and
// the slots, completing at the measured rate times returnOptimism, would
// reach this handshake within maxWait. Optimistic for the reason returns
// are: the rate measured in a storm's first second is its worst, and a
// waiter the slots do not reach in time is refused then, with a warmer
// estimate, having cost nothing but its wait.
func (a *admission) mayWait() bool {
	n := a.waiting.Add(1)
	if n > a.maxQueue || float64(n)/(a.rate()*returnOptimism) > a.maxWait.Seconds() {
		a.waiting.Add(-1)
		return false
	}
	return true
}

func (a *admission) releaser() func() {
	start := a.now()
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			return
		}
		now := a.now()
		d := now.Sub(start)
		a.mu.Lock()
		a.took += time.Duration(float64(d-a.took) * tookWeight)
		a.done.add(tenth(now), 1)
		a.mu.Unlock()
		<-a.slots
	}
}

// rate is the handshakes per second the node completes with every slot
// busy.
func (a *admission) rate() float64 {
	a.mu.Lock()
	took := max(a.took, time.Microsecond)
	a.mu.Unlock()
	return float64(cap(a.slots)) / took.Seconds()
}

// refuse picks the Retry-After of a refused handshake and books its return.
func (a *admission) refuse() time.Duration {
	r := a.rate()
	now := a.now()
	sec := now.Unix()
	maxSec := int64(retryAfterMax / time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	// slots/took is the rate by Little's law while every slot is busy, but
	// in a storm took also holds the wait for a CPU crowded by the fleet's
	// own connects and the refusals: the rate handshakes really completed
	// at lately is the rate the node has, when that is higher.
	r = max(r, a.recentRate(now)) * returnOptimism
	perSec := int64(math.Ceil(r))
	// The earliest second s by which the node, admitting perSec a second,
	// has room for this device after the waiters (served first) and the
	// returns booked for seconds 1..s. Since every earlier second is full
	// by that measure, second s itself has room: no second gets more than
	// perSec. The schedule is the node's to keep, so a device gets no
	// random spread on top: full jitter over [1 s, the time the whole
	// backlog needs] had told a few devices of every storm's last refusals
	// to stay away up to 6 s more while the node sat idle (a 19,000-device
	// storm on PostgreSQL: 18,993 hellos within 7 s, the last 7 at 9 s,
	// docs/benchmarks.md "Token lookups in shared queries, returns at the
	// earliest free second"). The client's own jitter (docs/protocol.md)
	// spreads each second's returns, which arrive spread anyway, as the
	// refusals were.
	ahead := a.waiting.Load()
	after := maxSec
	for s := int64(1); s <= maxSec; s++ {
		ahead += a.returning.sum(sec+s, sec+s)
		if ahead < perSec*s {
			after = s
			break
		}
	}
	a.returning.add(sec+after, 1)
	return time.Duration(after) * time.Second
}

// recentRate is the highest rate handshakes completed at over the last
// 0.3 to 1 s (whole tenths of a second before now's). A storm's first
// refusals come within its first second of completions: a rate counted over
// the last full second was still zero then, and the refusals were booked
// at the cold slots/took, a third of what the node then did (a
// 19,000-device storm on PostgreSQL: 8,674 hellos in one second, then an
// idle second, then the refused devices). Windows shorter than 0.3 s are
// left out: completions come in bursts as a shared token lookup answers.
// Called with mu held.
func (a *admission) recentRate(now time.Time) float64 {
	t := tenth(now)
	var n int64
	var best float64
	for k := int64(1); k <= 10; k++ {
		n += a.done.sum(t-k, t-k)
		if k >= 3 {
			best = max(best, float64(n)*10/float64(k))
		}
	}
	return best
}

// tenth numbers t's tenth of a second since the Unix epoch.
func tenth(t time.Time) int64 { return t.UnixMilli() / 100 }

// secondCounts counts events by Unix second (or by any other numbered
// interval) over a sliding span of len(sec) of them (past or future); older
// ones are overwritten.
type secondCounts struct {
	sec [128]int64
	n   [128]int64
}

func (c *secondCounts) add(sec, k int64) {
	i := sec % int64(len(c.sec))
	if c.sec[i] != sec {
		c.sec[i], c.n[i] = sec, 0
	}
	c.n[i] += k
}

// sum counts the events of seconds from..to (inclusive).
func (c *secondCounts) sum(from, to int64) int64 {
	var total int64
	for s := from; s <= to; s++ {
		if i := s % int64(len(c.sec)); c.sec[i] == s {
			total += c.n[i]
		}
	}
	return total
}
