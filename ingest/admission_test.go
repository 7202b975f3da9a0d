package ingest

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// admClock is a settable clock for admission tests.
type admClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *admClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *admClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestAdmission has slots slots, a handshake time of took, and a fixed
// clock; maxWait and maxQueue as given (0 keeps the default).
func newTestAdmission(slots int, took, maxWait time.Duration, maxQueue int64) (*admission, *admClock) {
	a := newAdmission(slots)
	clk := &admClock{t: time.Unix(1_800_000_000, 0)}
	a.now = clk.now
	a.took = took
	if maxWait > 0 {
		a.maxWait = maxWait
	}
	if maxQueue > 0 {
		a.maxQueue = maxQueue
	}
	return a, clk
}

func mustAcquire(t *testing.T, a *admission) func() {
	t.Helper()
	release, _, ok := a.tryAcquire(context.Background())
	if !ok {
		t.Fatal("tryAcquire refused with a free slot")
	}
	return release
}

func TestAdmissionSlots(t *testing.T) {
	defer goleak.VerifyNone(t)
	a, _ := newTestAdmission(3, 10*time.Millisecond, 10*time.Millisecond, 0)
	var rel []func()
	for range 3 {
		rel = append(rel, mustAcquire(t, a))
	}
	if _, ra, ok := a.tryAcquire(context.Background()); ok || ra < time.Second {
		t.Fatalf("a 4th handshake with 3 slots: ok=%t retryAfter=%v, want refused after its wait, Retry-After >= 1s", ok, ra)
	}
	rel[0]()
	rel[0]() // a second release must not free another slot
	mustAcquire(t, a)
	if _, _, ok := a.tryAcquire(context.Background()); ok {
		t.Fatal("a double release freed two slots")
	}
}

// A handshake arriving while every slot is busy waits and gets the slot as
// soon as one frees: admitted as fast as handshakes complete.
func TestAdmissionWaiterGetsNextSlot(t *testing.T) {
	defer goleak.VerifyNone(t)
	a, _ := newTestAdmission(1, 10*time.Millisecond, 10*time.Second, 0)
	release := mustAcquire(t, a)
	got := make(chan bool, 1)
	start := time.Now()
	go func() {
		rel, _, ok := a.tryAcquire(context.Background())
		if ok {
			rel()
		}
		got <- ok
	}()
	for a.waiting.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	release()
	if !<-got {
		t.Fatal("the waiter was refused though a slot freed")
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("the waiter took %v, want the freed slot at once, not the end of its wait", waited)
	}
}

func TestAdmissionWaitIsBounded(t *testing.T) {
	defer goleak.VerifyNone(t)
	cases := []struct {
		name     string
		slots    int
		took     time.Duration
		maxQueue int64
		waiters  int // already waiting
		wantWait bool
	}{
		// 1 slot at 100 ms a handshake: 10/s, counted optimistically as
		// 20/s; 2 s of wait covers 40 waiters.
		{"room in the queue and in time", 1, 100 * time.Millisecond, 100, 5, true},
		{"queue full", 1, 100 * time.Millisecond, 3, 3, false},
		{"the slots would not reach it within maxWait", 1, 100 * time.Millisecond, 100, 40, false},
		{"fast handshakes allow a long queue", 4, time.Millisecond, 10_000, 5_000, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, _ := newTestAdmission(c.slots, c.took, 2*time.Second, c.maxQueue)
			a.waiting.Store(int64(c.waiters))
			if got := a.mayWait(); got != c.wantWait {
				t.Fatalf("mayWait = %t, want %t", got, c.wantWait)
			}
			want := int64(c.waiters)
			if c.wantWait {
				want++
			}
			if n := a.waiting.Load(); n != want {
				t.Fatalf("waiting = %d, want %d", n, want)
			}
		})
	}
}

func TestAdmissionClientGoneWhileWaiting(t *testing.T) {
	defer goleak.VerifyNone(t)
	a, _ := newTestAdmission(1, 10*time.Millisecond, time.Minute, 0)
	release := mustAcquire(t, a)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, ra, ok := a.tryAcquire(ctx); ok || ra < time.Second {
		t.Fatalf("tryAcquire with the client gone: ok=%t retryAfter=%v", ok, ra)
	}
	if n := a.waiting.Load(); n != 0 {
		t.Fatalf("waiting = %d after the waiter left", n)
	}
}

// The handshake time is measured, so the admission rate follows the store.
func TestAdmissionMeasuresHandshakeTime(t *testing.T) {
	a, clk := newTestAdmission(8, 20*time.Millisecond, 0, 0)
	for range 1000 {
		release := mustAcquire(t, a)
		clk.advance(4 * time.Millisecond)
		release()
	}
	// 8 slots at ~4 ms: ~2,000 handshakes/s.
	if r := a.rate(); r < 1800 || r > 2200 {
		t.Fatalf("rate = %.0f/s, want ~2000/s", r)
	}
}

// Refused handshakes are told to return spread over the time the node needs
// to serve them all, never more per second than it can admit, and never all
// at once.
func TestAdmissionRetryAfterSpreadsTheStorm(t *testing.T) {
	cases := []struct {
		name    string
		slots   int
		took    time.Duration
		refused int
	}{
		{"2,000/s node, 15,000 refused", 32, 16 * time.Millisecond, 15_000},
		{"500/s node, 3,500 refused", 8, 16 * time.Millisecond, 3_500},
		{"a few refused go back within a second or two", 32, 16 * time.Millisecond, 50},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, _ := newTestAdmission(c.slots, c.took, 0, 0)
			rate := a.rate() * returnOptimism // returns are booked optimistically
			perSecond := map[int64]int{}
			for range c.refused {
				ra := a.refuse()
				if ra < time.Second || ra > retryAfterMax || ra%time.Second != 0 {
					t.Fatalf("Retry-After %v, want whole seconds in [1s, %v]", ra, retryAfterMax)
				}
				perSecond[int64(ra/time.Second)]++
			}
			last, busiest := int64(0), 0
			for s, n := range perSecond {
				last = max(last, s)
				busiest = max(busiest, n)
			}
			need := float64(c.refused) / rate // seconds the node needs for them all
			if float64(last) < need*0.9 || float64(last) > need*1.2+2 {
				t.Fatalf("returns spread over %d s, want about %.1f s (%d refused at %.0f/s)", last, need, c.refused, rate)
			}
			if float64(busiest) > math.Ceil(rate) {
				t.Fatalf("%d devices told to return in the same second, the node admits %.0f/s", busiest, rate)
			}
		})
	}
}

func TestAdmissionRetryAfterIsCapped(t *testing.T) {
	a, _ := newTestAdmission(1, time.Second, 0, 0) // 1 handshake/s
	for range 500 {
		if ra := a.refuse(); ra > retryAfterMax {
			t.Fatalf("Retry-After %v over the cap %v", ra, retryAfterMax)
		}
	}
	if ra := a.refuse(); ra != retryAfterMax {
		t.Fatalf("with 500 devices due at 1/s, Retry-After = %v, want the cap %v", ra, retryAfterMax)
	}
}

// A refused device is told the earliest second with room: after the
// waiters, which are served first, and after the returns already booked
// for the seconds before it; a second with room left by earlier bookings
// is used before later ones.
func TestAdmissionRetryAfterEarliestSecondWithRoom(t *testing.T) {
	// 8 slots at 16 ms: 500/s, booked at 1,000/s.
	cases := []struct {
		name    string
		waiting int64
		booked  map[int64]int64 // seconds from now → returns booked
		want    time.Duration
	}{
		{"nothing ahead", 0, nil, time.Second},
		{"second 1 full", 0, map[int64]int64{1: 1000}, 2 * time.Second},
		{"waiters fill seconds 1 and 2", 2000, nil, 3 * time.Second},
		{"room in second 1 after a full second 2", 0, map[int64]int64{1: 10, 2: 1000}, time.Second},
		{"waiters and returns, room in second 3", 1500, map[int64]int64{1: 400, 2: 150, 3: 100}, 3 * time.Second},
		{"everything full: the cap", 6000, nil, retryAfterMax},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, clk := newTestAdmission(8, 16*time.Millisecond, 0, 0)
			a.waiting.Store(c.waiting)
			now := clk.now().Unix()
			for s, n := range c.booked {
				a.returning.add(now+s, n)
			}
			if got := a.refuse(); got != c.want {
				t.Fatalf("Retry-After %v, want %v", got, c.want)
			}
		})
	}
}

// Returns are booked at the rate handshakes completed at in the last
// second's tenths when that beats slots/took: a storm's first refusals come
// before a whole second of completions has passed.
func TestAdmissionRetryAfterUsesRecentRate(t *testing.T) {
	cases := []struct {
		name   string
		tenths map[int64]int64 // tenths of a second before now's → completions
		want   time.Duration
	}{
		// 8 slots at 16 ms: 500/s, booked at 1,000/s; 3,000 waiters ahead.
		{"nothing completed lately", nil, 4 * time.Second},
		{"1,000 a tenth over the last half second", map[int64]int64{1: 1000, 2: 1000, 3: 1000, 4: 1000, 5: 1000}, time.Second},
		{"completions in the current tenth do not count yet", map[int64]int64{0: 50_000}, 4 * time.Second},
		{"one tenth's burst is averaged over 0.3 s", map[int64]int64{1: 300}, 2 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, clk := newTestAdmission(8, 16*time.Millisecond, 0, 0)
			a.waiting.Store(3000)
			now := tenth(clk.now())
			for k, n := range c.tenths {
				a.done.add(now-k, n)
			}
			if got := a.refuse(); got != c.want {
				t.Fatalf("Retry-After %v, want %v", got, c.want)
			}
		})
	}
}

// Many goroutines at once: never more than cap(slots) hold a slot.
func TestAdmissionConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	a := newAdmission(4)
	a.maxWait = 200 * time.Millisecond
	a.took = 2 * time.Millisecond // measured already: 2,000/s
	var (
		mu       sync.Mutex
		inside   int
		peak     int
		admitted int
		wg       sync.WaitGroup
	)
	for range 200 {
		wg.Go(func() {
			release, _, ok := a.tryAcquire(context.Background())
			if !ok {
				return
			}
			mu.Lock()
			inside++
			peak = max(peak, inside)
			admitted++
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			release()
		})
	}
	wg.Wait()
	if peak > 4 {
		t.Fatalf("%d handshakes held a slot at once, cap 4", peak)
	}
	if admitted < 150 {
		t.Fatalf("only %d of 200 admitted: the wait queue should absorb a short burst", admitted)
	}
}
