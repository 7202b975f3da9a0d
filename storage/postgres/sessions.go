package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/storage"
)

// RecordSessions writes a group of session records in one transaction (see
// storage.SessionGroup), three statements whatever the group's size. Opens
// of unknown devices or of ids already recorded, and closes of unknown
// sessions, are skipped, so one stale record never fails the group.
//
// The transaction commits with synchronous_commit off: a session record is
// bookkeeping, not an acknowledged reading, so it need not wait for its own
// WAL flush (a crash can lose the last few hundred milliseconds of session
// history, never a reading). Readings' commits are unaffected.
//
// Lock order: device rows are locked in name order first, exactly as Commit
// does, so a session group and a readings commit on the same devices queue
// instead of deadlocking.
func (s *Store) RecordSessions(ctx context.Context, g storage.SessionGroup) error {
	if err := s.ready(); err != nil {
		return err
	}
	if g.Len() == 0 {
		return nil
	}
	seen := g.LastSeen()
	devs := slices.Sorted(maps.Keys(seen))
	at := make([]time.Time, len(devs))
	for i, d := range devs {
		at[i] = seen[d]
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit TO off`); err != nil {
			return fmt.Errorf("relax commit: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM devices WHERE device = ANY($1) ORDER BY device FOR UPDATE`, devs); err != nil {
			return fmt.Errorf("lock devices: %w", err)
		}
		if len(g.Opened) > 0 {
			n := len(g.Opened)
			ids, dev, node, remote, transport, reason := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
			started, ended, readings := make([]time.Time, n), make([]*time.Time, n), make([]int64, n)
			for i, ss := range g.Opened {
				ids[i], dev[i], node[i], remote[i], transport[i], reason[i] = ss.ID, ss.DeviceID, ss.Node, ss.RemoteAddr, ss.Transport, ss.CloseReason
				started[i], ended[i], readings[i] = orNow(ss.StartedAt), ss.EndedAt, ss.Readings
			}
			if _, err := tx.Exec(ctx, `INSERT INTO device_sessions
					(id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings)
				SELECT u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
					$6::timestamptz[], $7::timestamptz[], $8::text[], $9::bigint[])
					AS u(id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings)
				WHERE EXISTS (SELECT 1 FROM devices d WHERE d.device = u.device)
				ON CONFLICT (id) DO NOTHING`,
				ids, dev, node, remote, transport, started, ended, reason, readings); err != nil {
				return fmt.Errorf("insert %d session opens: %w", n, err)
			}
		}
		if len(g.Closed) > 0 {
			n := len(g.Closed)
			ids, ended, reason, readings := make([]string, n), make([]time.Time, n), make([]string, n), make([]int64, n)
			for i, e := range g.Closed {
				ids[i], ended[i], reason[i], readings[i] = e.ID, e.EndedAt, e.Reason, e.Readings
			}
			if _, err := tx.Exec(ctx, `UPDATE device_sessions s
				SET ended_at = u.ended_at, close_reason = u.reason, readings = u.readings
				FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[]) AS u(id, ended_at, reason, readings)
				WHERE s.id = u.id`, ids, ended, reason, readings); err != nil {
				return fmt.Errorf("apply %d session closes: %w", n, err)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE devices d SET last_seen = GREATEST(d.last_seen, u.seen)
			FROM unnest($1::text[], $2::timestamptz[]) AS u(device, seen) WHERE d.device = u.device`, devs, at); err != nil {
			return fmt.Errorf("advance last_seen: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record %d session records: %w", g.Len(), err)
	}
	return nil
}
