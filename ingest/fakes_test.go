package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// memStore is an in-memory double of Store for unit tests of the pipeline
// and session logic only. Integration tests use the real backends.
type memStore struct {
	mu      sync.Mutex
	wm      map[string]uint64
	rows    map[string][]telemetry.Reading
	commits [][]telemetry.Batch
	failing bool // Commit and Ping fail
	// commitFailing makes Commit alone fail: the database answers pings but
	// cannot commit (e.g. disk full, a lock held by someone else).
	commitFailing bool
	// refuse, when set, makes Commit fail with telemetry.ErrInvalidData
	// if any batch of the call matches: a store refusing one batch's data.
	refuse func(telemetry.Batch) bool
	gate   chan struct{} // when non-nil, Commit waits for a receive... close to release
	// watermarkReads counts Watermark calls (one per handshake, issue 13).
	watermarkReads atomic.Int64
}

func newMemStore() *memStore {
	return &memStore{wm: map[string]uint64{}, rows: map[string][]telemetry.Reading{}}
}

var errDown = errors.New("store down")

func (m *memStore) Commit(ctx context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error) {
	m.mu.Lock()
	gate := m.gate
	m.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failing || m.commitFailing {
		return nil, errDown
	}
	for _, b := range batches {
		if m.refuse != nil && m.refuse(b) {
			return nil, fmt.Errorf("commit: device %s seq %d: %w", b.Device, b.Seq, telemetry.ErrInvalidData)
		}
	}
	out := make([]telemetry.Outcome, len(batches))
	for i, b := range batches {
		if b.Seq <= m.wm[b.Device] {
			out[i].Duplicate = true
			continue
		}
		m.wm[b.Device] = b.Seq
		m.rows[b.Device] = append(m.rows[b.Device], b.Readings...)
	}
	m.commits = append(m.commits, batches)
	return out, nil
}

func (m *memStore) Watermark(_ context.Context, device string) (uint64, error) {
	m.watermarkReads.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failing {
		return 0, errDown
	}
	return m.wm[device], nil
}

func (m *memStore) Ping(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failing {
		return errDown
	}
	return nil
}

func (m *memStore) setFailing(v bool) { m.mu.Lock(); m.failing = v; m.mu.Unlock() }
func (m *memStore) stall()            { m.mu.Lock(); m.gate = make(chan struct{}); m.mu.Unlock() }
func (m *memStore) resume() {
	m.mu.Lock()
	if m.gate != nil {
		close(m.gate)
		m.gate = nil
	}
	m.mu.Unlock()
}

func (m *memStore) count(device string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.rows[device])
}

// tokenAuth maps "tok-<device>" to device; "tok-disabled" is unauthorized.
type tokenAuth struct{}

type unauthorized struct{}

func (unauthorized) Error() string      { return "unauthorized" }
func (unauthorized) Unauthorized() bool { return true }

func (tokenAuth) AuthenticateDevice(_ context.Context, token string) (string, error) {
	var dev string
	if _, err := fmt.Sscanf(token, "tok-%s", &dev); err != nil || dev == "disabled" {
		return "", unauthorized{}
	}
	return dev, nil
}
