package bridge

import (
	"sync"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// ring is the bounded publish queue for committed batches. Push never
// blocks: when full it overwrites the oldest batch and reports the drop, so
// a slow or absent broker costs MQTT subscribers old data, never ingestion
// its acks. One mutex, held for a few instructions.
type ring struct {
	mu    sync.Mutex
	buf   []telemetry.Batch
	head  int // index of the oldest element
	n     int
	ready chan struct{} // 1-buffered wake-up for the single consumer
}

func newRing(size int) *ring {
	return &ring{buf: make([]telemetry.Batch, size), ready: make(chan struct{}, 1)}
}

// push appends b, dropping the oldest batch when full; it reports whether
// something was dropped.
func (q *ring) push(b telemetry.Batch) (dropped bool) {
	q.mu.Lock()
	if q.n == len(q.buf) {
		q.buf[q.head] = telemetry.Batch{}
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		dropped = true
	}
	q.buf[(q.head+q.n)%len(q.buf)] = b
	q.n++
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pop removes the oldest batch.
func (q *ring) pop() (telemetry.Batch, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return telemetry.Batch{}, false
	}
	b := q.buf[q.head]
	q.buf[q.head] = telemetry.Batch{} // let the readings be collected
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return b, true
}

func (q *ring) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
