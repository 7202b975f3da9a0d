package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Token lookups are the one query of an uncached device handshake, and a
// reconnect storm makes thousands of them at once. One query per lookup
// held a pool connection per handshake slot, and on a small host each
// query's wake-ups of a PostgreSQL backend competed with the fleet and the
// server for the same cores: a goroutine dump of a 19,000-device storm
// found 22 of the 32 handshake slots waiting for a pool connection and 9
// waiting for PostgreSQL to answer. So lookups that arrive while others
// are in flight are coalesced: they queue, and the next free runner sends
// them as one `hash = ANY($1)` query. No timer is involved: a lone lookup
// goes out at once, and batches only form while the database is busy,
// growing with how busy it is (the way group commit does for writes).
const (
	// lookupRunners bounds the batches in flight, and so the pool
	// connections that lookups hold (the pool has storage.postgres.max_conns,
	// 10 by default, shared with the pipeline's writer and session records).
	lookupRunners = 3
	// lookupBatchMax bounds one query's array; a bigger backlog waits for
	// the next runner.
	lookupBatchMax = 256
	// lookupTimeout bounds one batch's query. Callers stop waiting when
	// their own context ends; the batch goes on for the others in it.
	lookupTimeout = 10 * time.Second
)

type tokenLookup struct {
	hash []byte
	res  chan tokenResult // buffered 1: the runner never blocks on a caller that left
}

type tokenResult struct {
	tok storage.DeviceToken
	err error
}

// tokenLookups is the queue of lookups waiting for a runner. It holds one
// entry per caller waiting (or just gone: runners drain it either way), so
// it is bounded by whatever bounds the callers (ingest.max_handshakes for
// handshakes), exactly as the pool's own queue of callers waiting for a
// connection was before.
type tokenLookups struct {
	mu      sync.Mutex
	queue   []*tokenLookup
	running int // runners with a batch in flight
}

// LookupDeviceToken finds a token by hash, expired or not, with its
// device's enabled flag and watermark.
func (s *Store) LookupDeviceToken(ctx context.Context, hash []byte) (storage.DeviceToken, error) {
	if err := s.ready(); err != nil {
		return storage.DeviceToken{}, err
	}
	req := &tokenLookup{hash: hash, res: make(chan tokenResult, 1)}
	l := &s.lookups
	l.mu.Lock()
	l.queue = append(l.queue, req)
	var batch []*tokenLookup
	if l.running < lookupRunners {
		l.running++
		batch = l.takeLocked()
	}
	l.mu.Unlock()
	if batch != nil {
		go s.runLookups(batch)
	}
	select {
	case r := <-req.res:
		if r.err != nil {
			return r.tok, fmt.Errorf("look up token: %w", r.err)
		}
		return r.tok, nil
	case <-ctx.Done():
		return storage.DeviceToken{}, fmt.Errorf("look up token: %w", ctx.Err())
	}
}

// takeLocked removes up to lookupBatchMax lookups from the queue.
func (l *tokenLookups) takeLocked() []*tokenLookup {
	n := min(len(l.queue), lookupBatchMax)
	batch := make([]*tokenLookup, n)
	copy(batch, l.queue)
	rest := copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	return batch
}

// runLookups answers batch, then whatever queued meanwhile, until the queue
// is empty. It runs on its own goroutine so that no caller's handshake
// waits for other devices' batches.
func (s *Store) runLookups(batch []*tokenLookup) {
	l := &s.lookups
	for {
		s.lookupBatch(batch)
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.running--
			l.mu.Unlock()
			return
		}
		batch = l.takeLocked()
		l.mu.Unlock()
	}
}

// lookupBatch answers every lookup in batch with one query.
func (s *Store) lookupBatch(batch []*tokenLookup) {
	hashes := make([][]byte, len(batch))
	for i, r := range batch {
		hashes[i] = r.hash
	}
	ctx, cancel := context.WithTimeout(s.life, lookupTimeout)
	defer cancel()
	found, err := s.queryTokens(ctx, hashes)
	for _, r := range batch {
		switch tok, ok := found[string(r.hash)]; {
		case err != nil:
			r.res <- tokenResult{err: err}
		case !ok:
			r.res <- tokenResult{err: storage.ErrNotFound}
		default:
			r.res <- tokenResult{tok: tok}
		}
	}
}

// queryTokens reads the tokens among hashes, with their devices' enabled
// flag and watermark, keyed by hash.
func (s *Store) queryTokens(ctx context.Context, hashes [][]byte) (map[string]storage.DeviceToken, error) {
	rows, err := s.pool.Query(ctx, `SELECT t.hash, t.device, t.created_at, t.expires_at, d.enabled, d.acked_seq
		FROM device_tokens t JOIN devices d USING (device) WHERE t.hash = ANY($1)`, hashes)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := make(map[string]storage.DeviceToken, len(hashes))
	for rows.Next() {
		var t storage.DeviceToken
		var acked int64
		if err := rows.Scan(&t.Hash, &t.DeviceID, &t.CreatedAt, &t.ExpiresAt, &t.DeviceEnabled, &acked); err != nil {
			return nil, err
		}
		t.DeviceAcked = uint64(acked)
		found[string(t.Hash)] = t
	}
	return found, rows.Err()
}
