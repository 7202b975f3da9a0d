package devices

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestAllowConnect(t *testing.T) {
	tests := []struct {
		name    string
		perMin  int
		refill  time.Duration // time for one token
		wantCap int
	}{
		{"default 30/min", 0, 2 * time.Second, 30},
		{"6/min", 6, 10 * time.Second, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.ConnectPerMinute = tt.perMin
			s, _, clk, _ := newTestService(cfg)
			for i := range tt.wantCap {
				if !s.AllowConnect("a") {
					t.Fatalf("attempt %d refused", i+1)
				}
			}
			if s.AllowConnect("a") {
				t.Fatal("attempt over the burst allowed")
			}
			if !s.AllowConnect("b") {
				t.Fatal("another device was affected")
			}
			clk.Advance(tt.refill)
			if !s.AllowConnect("a") {
				t.Fatal("no token after refill")
			}
			if s.AllowConnect("a") {
				t.Fatal("two tokens after one refill period")
			}
		})
	}
}

func TestReadingLimiter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ReadingsPerSecond = 100
	s, _, clk, _ := newTestService(cfg)
	lim := s.ReadingLimiter("a")
	if lim.Limit() != 100 || lim.Burst() != 200 {
		t.Fatalf("limit %v burst %d, want 100 and 200", lim.Limit(), lim.Burst())
	}
	if s.ReadingLimiter("a") != lim {
		t.Fatal("same device got a different limiter")
	}
	now := clk.Now()
	if !lim.AllowN(now, 200) || lim.AllowN(now, 1) {
		t.Fatal("burst not 200")
	}
	if !s.ReadingLimiter("b").AllowN(now, 200) {
		t.Fatal("another device was affected")
	}
	if !lim.AllowN(now.Add(time.Second), 100) {
		t.Fatal("no refill after 1s")
	}
}

// The maps stay bounded under churn: idle (full) buckets are swept, and at
// the cap the least recently used entry goes.
func TestLimiterSetBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t.Run("sweep drops refilled entries", func(t *testing.T) {
		ls := newLimiterSet(rate.Limit(1), 1, 1000)
		for i := range 500 {
			ls.allow(fmt.Sprint("d", i), now)
		}
		if ls.len() != 500 {
			t.Fatalf("len %d", ls.len())
		}
		ls.allow("late", now.Add(sweepEvery))
		if ls.len() != 1 {
			t.Fatalf("after sweep len %d, want 1", ls.len())
		}
	})
	t.Run("cap evicts least recently used", func(t *testing.T) {
		ls := newLimiterSet(rate.Limit(0.001), 1, 100)
		for i := range 1000 {
			ls.allow(fmt.Sprint("d", i), now.Add(time.Duration(i)*time.Millisecond))
			if ls.len() > 100 {
				t.Fatalf("len %d > cap", ls.len())
			}
		}
		ls.mu.Lock()
		_, oldest := ls.m["d0"]
		_, newest := ls.m["d999"]
		ls.mu.Unlock()
		if oldest || !newest {
			t.Fatalf("eviction kept d0=%v d999=%v", oldest, newest)
		}
	})
	t.Run("busy entries survive a sweep", func(t *testing.T) {
		ls := newLimiterSet(rate.Limit(0.01), 10, 100)
		for range 10 {
			ls.allow("busy", now)
		}
		ls.allow("x", now.Add(sweepEvery))
		if ls.len() != 2 {
			t.Fatalf("busy entry swept: len %d", ls.len())
		}
		if ls.allow("busy", now.Add(sweepEvery)) {
			t.Fatal("busy entry's history lost")
		}
	})
}

func TestDeleteForgetsLimiters(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	s.AddDevice(t.Context(), "d", "", nil)
	s.AllowConnect("d")
	s.ReadingLimiter("d")
	if err := s.DeleteDevice(t.Context(), "d", false); err != nil {
		t.Fatal(err)
	}
	if s.connect.len() != 0 || s.readings.len() != 0 {
		t.Fatal("limiters kept after delete")
	}
}

func TestAllowReadings(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ReadingsPerSecond = 10 // burst 20
	s, _, clk, _ := newTestService(cfg)
	tests := []struct {
		name    string
		advance time.Duration
		device  string
		n       int
		want    bool
	}{
		{"within burst", 0, "a", 15, true},
		{"over remaining", 0, "a", 6, false},
		{"rest of burst", 0, "a", 5, true},
		{"empty", 0, "a", 1, false},
		{"other device unaffected", 0, "b", 20, true},
		{"refilled one second", time.Second, "a", 10, true},
		{"batch above burst needs a full bucket", 0, "a", 50, false},
		{"full bucket lets a big batch through", 2 * time.Second, "a", 50, true},
		{"and drains it", 0, "a", 1, false},
	}
	for _, tt := range tests {
		clk.Advance(tt.advance)
		if got := s.AllowReadings(tt.device, tt.n); got != tt.want {
			t.Fatalf("%s: AllowReadings(%s, %d) = %v, want %v", tt.name, tt.device, tt.n, got, tt.want)
		}
	}
}
