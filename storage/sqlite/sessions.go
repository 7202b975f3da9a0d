package sqlite

import (
	"context"
	"fmt"

	"github.com/meridian-iot/meridian/storage"
)

// RecordSessions writes a group of session records in one transaction (see
// storage.SessionGroup): one commit, so one fsync, for the whole group
// instead of one per handshake. Opens of unknown devices or of ids already
// recorded, and closes of unknown sessions, are skipped, so one stale record
// never fails the group.
func (s *Store) RecordSessions(ctx context.Context, g storage.SessionGroup) error {
	if g.Len() == 0 {
		return nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record %d session records: %w", g.Len(), err)
	}
	defer func() { _ = tx.Rollback() }()

	if len(g.Opened) > 0 {
		// INSERT ... SELECT ... WHERE EXISTS: a device deleted between its
		// handshake and this write is skipped instead of failing the
		// foreign key (and with it every other record of the group).
		ins, err := tx.PrepareContext(ctx, `INSERT INTO device_sessions
			(id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings)
			SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM devices WHERE device = ?)
			ON CONFLICT (id) DO NOTHING`)
		if err != nil {
			return fmt.Errorf("record sessions: prepare insert: %w", err)
		}
		defer ins.Close()
		for _, ss := range g.Opened {
			if _, err := ins.ExecContext(ctx, ss.ID, ss.DeviceID, ss.Node, ss.RemoteAddr, ss.Transport,
				fmtTime(orNow(ss.StartedAt)), fmtTimePtr(ss.EndedAt), ss.CloseReason, ss.Readings, ss.DeviceID); err != nil {
				return fmt.Errorf("record session open %s: %w", ss.ID, err)
			}
		}
	}
	if len(g.Closed) > 0 {
		upd, err := tx.PrepareContext(ctx, `UPDATE device_sessions SET ended_at = ?, close_reason = ?, readings = ? WHERE id = ?`)
		if err != nil {
			return fmt.Errorf("record sessions: prepare close: %w", err)
		}
		defer upd.Close()
		for _, e := range g.Closed {
			if _, err := upd.ExecContext(ctx, fmtTime(e.EndedAt), e.Reason, e.Readings, e.ID); err != nil {
				return fmt.Errorf("record session close %s: %w", e.ID, err)
			}
		}
	}
	seen := g.LastSeen()
	touch, err := tx.PrepareContext(ctx, `UPDATE devices SET last_seen = max(coalesce(last_seen, ''), ?) WHERE device = ?`)
	if err != nil {
		return fmt.Errorf("record sessions: prepare last_seen: %w", err)
	}
	defer touch.Close()
	for dev, at := range seen {
		if _, err := touch.ExecContext(ctx, fmtTime(at), dev); err != nil {
			return fmt.Errorf("record sessions: last_seen of %s: %w", dev, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record %d session records: commit: %w", g.Len(), err)
	}
	return nil
}
