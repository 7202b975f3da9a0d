package bridge

import (
	"testing"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

func TestRingDropsOldest(t *testing.T) {
	q := newRing(3)
	drops := 0
	for i := 1; i <= 5; i++ {
		if q.push(telemetry.Batch{Seq: uint64(i)}) {
			drops++
		}
	}
	if drops != 2 || q.len() != 3 {
		t.Fatalf("drops=%d len=%d", drops, q.len())
	}
	for _, want := range []uint64{3, 4, 5} {
		b, ok := q.pop()
		if !ok || b.Seq != want {
			t.Fatalf("pop = %d %v, want %d", b.Seq, ok, want)
		}
	}
	if _, ok := q.pop(); ok {
		t.Fatal("pop on empty ring")
	}
}
