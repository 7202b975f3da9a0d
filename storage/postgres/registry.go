package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-iot/meridian/storage"
)

// SQLSTATEs the registry maps to sentinel errors.
const (
	sqlUniqueViolation     = "23505"
	sqlForeignKeyViolation = "23503"
)

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// CreateDevice adds a device; storage.ErrExists if the id is taken.
func (s *Store) CreateDevice(ctx context.Context, d storage.Device) error {
	if err := s.ready(); err != nil {
		return err
	}
	labels := d.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO devices (device, name, labels, enabled, created_at, last_seen)
		VALUES ($1, $2, $3, $4, $5, $6)`, d.ID, d.Name, labels, d.Enabled, orNow(d.CreatedAt), d.LastSeen)
	if isCode(err, sqlUniqueViolation) {
		return fmt.Errorf("create device %s: %w", d.ID, storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create device %s: %w", d.ID, err)
	}
	return nil
}

const deviceColumns = `device, name, labels, enabled, created_at, last_seen, acked_seq`

func scanDevice(row storage.Scanner) (storage.Device, error) {
	var d storage.Device
	var acked int64
	if err := row.Scan(&d.ID, &d.Name, &d.Labels, &d.Enabled, &d.CreatedAt, &d.LastSeen, &acked); err != nil {
		return d, err
	}
	d.Acked = uint64(acked)
	return d, nil
}

// GetDevice returns one device; storage.ErrNotFound if absent.
func (s *Store) GetDevice(ctx context.Context, id string) (storage.Device, error) {
	if err := s.ready(); err != nil {
		return storage.Device{}, err
	}
	d, err := scanDevice(s.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE device = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("get device %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("get device %s: %w", id, err)
	}
	return d, nil
}

// ListDevices returns all devices ordered by id.
func (s *Store) ListDevices(ctx context.Context) ([]storage.Device, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY device`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	out, err := storage.ScanAll(rows, scanDevice)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// execOne runs a statement that must touch one row; storage.ErrNotFound
// otherwise.
func (s *Store) execOne(ctx context.Context, what, sql string, args ...any) error {
	if err := s.ready(); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w", what, storage.ErrNotFound)
	}
	return nil
}

// SetDeviceEnabled enables or disables a device.
func (s *Store) SetDeviceEnabled(ctx context.Context, id string, enabled bool) error {
	return s.execOne(ctx, "enable device "+id, `UPDATE devices SET enabled = $2 WHERE device = $1`, id, enabled)
}

// TouchDevice records when the device was last seen.
func (s *Store) TouchDevice(ctx context.Context, id string, seen time.Time) error {
	return s.execOne(ctx, "touch device "+id, `UPDATE devices SET last_seen = $2 WHERE device = $1`, id, seen)
}

// DeleteDevice removes the device, its tokens and sessions (by cascade);
// with purge also its readings and rollups. The name->id mapping stays, so
// unpurged readings keep their device name in telemetry.
func (s *Store) DeleteDevice(ctx context.Context, id string, purge bool) error {
	if err := s.ready(); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM devices WHERE device = $1`, id)
		if err != nil {
			return fmt.Errorf("delete device %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("delete device %s: %w", id, storage.ErrNotFound)
		}
		if !purge {
			return nil
		}
		purges := []string{`DELETE FROM readings WHERE device_id = (SELECT id FROM device_ids WHERE device = $1)`}
		if s.Mode() != storage.ModeTimescale {
			purges = append(purges,
				`DELETE FROM rollup_1m WHERE device_id = (SELECT id FROM device_ids WHERE device = $1)`,
				`DELETE FROM rollup_1h WHERE device_id = (SELECT id FROM device_ids WHERE device = $1)`)
		} else {
			// A continuous aggregate is not deletable, and TimescaleDB only
			// drops the purged rows from buckets a later refresh covers
			// (Maintain refreshes recent ones), so delete the device's
			// materialized buckets directly.
			for _, c := range caggs {
				mat, err := materializedTable(ctx, tx, c.view)
				if err != nil {
					return fmt.Errorf("purge device %s: %w", id, err)
				}
				purges = append(purges, `DELETE FROM `+mat+` WHERE device_id = (SELECT id FROM device_ids WHERE device = $1)`)
			}
		}
		for _, q := range purges {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return fmt.Errorf("purge device %s: %w", id, err)
			}
		}
		return nil
	})
}

// AddDeviceToken stores a token hash for an existing device.
func (s *Store) AddDeviceToken(ctx context.Context, t storage.DeviceToken) error {
	if err := s.ready(); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO device_tokens (hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)`,
		t.Hash, t.DeviceID, orNow(t.CreatedAt), t.ExpiresAt)
	switch {
	case isCode(err, sqlUniqueViolation):
		return fmt.Errorf("add token for %s: %w", t.DeviceID, storage.ErrExists)
	case isCode(err, sqlForeignKeyViolation):
		return fmt.Errorf("add token for %s: %w", t.DeviceID, storage.ErrNotFound)
	case err != nil:
		return fmt.Errorf("add token for %s: %w", t.DeviceID, err)
	}
	return nil
}

// ExpireDeviceTokens sets expires_at = at on the device's tokens that have
// no expiry or a later one, except keep.
func (s *Store) ExpireDeviceTokens(ctx context.Context, device string, keep []byte, at time.Time) error {
	if err := s.ready(); err != nil {
		return err
	}
	if keep == nil {
		keep = []byte{}
	}
	if _, err := s.pool.Exec(ctx, `UPDATE device_tokens SET expires_at = $3
		WHERE device = $1 AND hash <> $2 AND (expires_at IS NULL OR expires_at > $3)`, device, keep, at); err != nil {
		return fmt.Errorf("expire tokens of %s: %w", device, err)
	}
	return nil
}

// AddAPIKey stores an operator key; storage.ErrExists if id or hash is taken.
func (s *Store) AddAPIKey(ctx context.Context, k storage.APIKey) error {
	if err := s.ready(); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO api_keys (id, hash, name, role, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		k.ID, k.Hash, k.Name, k.Role, orNow(k.CreatedAt), k.RevokedAt)
	if isCode(err, sqlUniqueViolation) {
		return fmt.Errorf("add api key %s: %w", k.ID, storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("add api key %s: %w", k.ID, err)
	}
	return nil
}

const apiKeyColumns = `id, hash, name, role, created_at, revoked_at`

func scanAPIKey(row storage.Scanner) (storage.APIKey, error) {
	var k storage.APIKey
	err := row.Scan(&k.ID, &k.Hash, &k.Name, &k.Role, &k.CreatedAt, &k.RevokedAt)
	return k, err
}

// LookupAPIKey finds a key by hash, revoked or not.
func (s *Store) LookupAPIKey(ctx context.Context, hash []byte) (storage.APIKey, error) {
	if err := s.ready(); err != nil {
		return storage.APIKey{}, err
	}
	k, err := scanAPIKey(s.pool.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE hash = $1`, hash))
	if errors.Is(err, pgx.ErrNoRows) {
		return k, fmt.Errorf("look up api key: %w", storage.ErrNotFound)
	}
	if err != nil {
		return k, fmt.Errorf("look up api key: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by creation time.
func (s *Store) ListAPIKeys(ctx context.Context) ([]storage.APIKey, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	out, err := storage.ScanAll(rows, scanAPIKey)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return out, nil
}

// RevokeAPIKey marks a key revoked at at (an earlier revocation stands).
func (s *Store) RevokeAPIKey(ctx context.Context, id string, at time.Time) error {
	return s.execOne(ctx, "revoke api key "+id,
		`UPDATE api_keys SET revoked_at = LEAST(coalesce(revoked_at, $2), $2) WHERE id = $1`, id, at)
}

// OpenSession records a device session; the device must exist.
func (s *Store) OpenSession(ctx context.Context, ss storage.Session) error {
	if err := s.ready(); err != nil {
		return err
	}
	// One statement records the session and advances last_seen: one round
	// trip and one commit per handshake.
	_, err := s.pool.Exec(ctx, `WITH s AS (
			INSERT INTO device_sessions (id, device, node, remote_addr, transport, started_at)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING device, started_at)
		UPDATE devices d SET last_seen = GREATEST(d.last_seen, s.started_at) FROM s WHERE d.device = s.device`,
		ss.ID, ss.DeviceID, ss.Node, ss.RemoteAddr, ss.Transport, orNow(ss.StartedAt))
	switch {
	case isCode(err, sqlUniqueViolation):
		return fmt.Errorf("open session %s: %w", ss.ID, storage.ErrExists)
	case isCode(err, sqlForeignKeyViolation):
		return fmt.Errorf("open session %s for %s: %w", ss.ID, ss.DeviceID, storage.ErrNotFound)
	case err != nil:
		return fmt.Errorf("open session %s: %w", ss.ID, err)
	}
	return nil
}

// CloseSession records how a session ended.
func (s *Store) CloseSession(ctx context.Context, id string, ended time.Time, reason string, readings int64) error {
	if err := s.ready(); err != nil {
		return err
	}
	var found bool
	err := s.pool.QueryRow(ctx, `WITH s AS (
			UPDATE device_sessions SET ended_at = $2, close_reason = $3, readings = $4 WHERE id = $1 RETURNING device, ended_at),
		t AS (UPDATE devices d SET last_seen = GREATEST(d.last_seen, s.ended_at) FROM s WHERE d.device = s.device)
		SELECT EXISTS (SELECT 1 FROM s)`, id, ended, reason, readings).Scan(&found)
	if err != nil {
		return fmt.Errorf("close session %s: %w", id, err)
	}
	if !found {
		return fmt.Errorf("close session %s: %w", id, storage.ErrNotFound)
	}
	return nil
}

// ListSessions returns the device's most recent sessions, newest first.
func (s *Store) ListSessions(ctx context.Context, device string, limit int) ([]storage.Session, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings
		FROM device_sessions WHERE device = $1 ORDER BY started_at DESC, id DESC LIMIT $2`, device, limit)
	if err != nil {
		return nil, fmt.Errorf("list sessions of %s: %w", device, err)
	}
	defer rows.Close()
	out, err := storage.ScanAll(rows, scanSession)
	if err != nil {
		return nil, fmt.Errorf("list sessions of %s: %w", device, err)
	}
	return out, nil
}

func scanSession(row storage.Scanner) (storage.Session, error) {
	var ss storage.Session
	err := row.Scan(&ss.ID, &ss.DeviceID, &ss.Node, &ss.RemoteAddr, &ss.Transport, &ss.StartedAt, &ss.EndedAt, &ss.CloseReason, &ss.Readings)
	return ss, err
}
