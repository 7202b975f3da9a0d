package meridian

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter (docs/protocol.md 7.4):
// before attempt n the wait is uniform in [0, min(Max, Base*2^n)]. Full
// jitter spreads a fleet that lost its server at the same instant over the
// whole window instead of reconnecting in waves. Owned by one goroutine.
type Backoff struct {
	Base, Max time.Duration
	attempt   int
}

// Next returns the wait before the next attempt and counts the attempt.
func (b *Backoff) Next(r *rand.Rand) time.Duration {
	ceil := b.Max
	if b.attempt < 30 {
		if c := b.Base << b.attempt; c > 0 && c < b.Max {
			ceil = c
		}
	}
	b.attempt++
	if ceil <= 0 {
		return 0
	}
	return time.Duration(r.Int64N(int64(ceil) + 1))
}

// Attempt is the number of waits since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Reset starts over; call it once a connection has proven healthy, not on
// a mere upgrade, or a device closed right after connecting would spin.
func (b *Backoff) Reset() { b.attempt = 0 }
