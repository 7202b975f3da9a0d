package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	sqlite3 "github.com/ncruces/go-sqlite3"

	"github.com/meridian-iot/meridian/storage"
)

// isUnique reports a PRIMARY KEY or UNIQUE constraint violation.
func isUnique(err error) bool {
	return errors.Is(err, sqlite3.CONSTRAINT_PRIMARYKEY) || errors.Is(err, sqlite3.CONSTRAINT_UNIQUE)
}

func isForeignKey(err error) bool { return errors.Is(err, sqlite3.CONSTRAINT_FOREIGNKEY) }

// execOne runs a write that must touch exactly one row; none is
// storage.ErrNotFound.
func (s *Store) execOne(ctx context.Context, what, q string, args ...any) error {
	res, err := s.w.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, storage.ErrNotFound)
	}
	return nil
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// CreateDevice adds a registry record; storage.ErrExists when the id is taken.
func (s *Store) CreateDevice(ctx context.Context, d storage.Device) error {
	if d.ID == "" {
		return errors.New("create device: empty id")
	}
	labels := d.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	lj, err := json.Marshal(labels)
	if err != nil {
		return fmt.Errorf("create device %s: encode labels: %w", d.ID, err)
	}
	_, err = s.w.ExecContext(ctx,
		`INSERT INTO devices (device, name, labels, enabled, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?)`,
		d.ID, d.Name, string(lj), d.Enabled, fmtTime(orNow(d.CreatedAt)), fmtTimePtr(d.LastSeen))
	if isUnique(err) {
		return fmt.Errorf("create device %s: %w", d.ID, storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create device %s: %w", d.ID, err)
	}
	return nil
}

const deviceCols = `device, name, labels, enabled, created_at, last_seen, acked_seq`

// scanner is a row to scan: storage.Scanner, under the name this package's
// readers use.
type scanner = storage.Scanner

func scanDevice(sc scanner) (storage.Device, error) {
	var (
		d        storage.Device
		labels   string
		created  string
		lastSeen sql.NullString
		acked    int64
	)
	if err := sc.Scan(&d.ID, &d.Name, &labels, &d.Enabled, &created, &lastSeen, &acked); err != nil {
		return d, err
	}
	if err := json.Unmarshal([]byte(labels), &d.Labels); err != nil {
		return d, fmt.Errorf("decode labels of %s: %w", d.ID, err)
	}
	var err error
	if d.CreatedAt, err = parseTime(created); err != nil {
		return d, err
	}
	if d.LastSeen, err = parseTimePtr(lastSeen); err != nil {
		return d, err
	}
	d.Acked = uint64(acked)
	return d, nil
}

// GetDevice returns a registry record; storage.ErrNotFound if absent.
func (s *Store) GetDevice(ctx context.Context, id string) (storage.Device, error) {
	// Prepared (lookups.go): an uncached handshake authenticates through
	// here, so a reconnect storm runs it thousands of times a second.
	d, err := scanDevice(s.queryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE device = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("device %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("get device %s: %w", id, err)
	}
	return d, nil
}

// ListDevices returns every registry record ordered by id.
func (s *Store) ListDevices(ctx context.Context) ([]storage.Device, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices ORDER BY device`)
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

// SetDeviceEnabled enables or disables a device.
func (s *Store) SetDeviceEnabled(ctx context.Context, id string, enabled bool) error {
	return s.execOne(ctx, "set device "+id+" enabled", `UPDATE devices SET enabled = ? WHERE device = ?`, enabled, id)
}

// TouchDevice records connection activity; last_seen never moves back.
func (s *Store) TouchDevice(ctx context.Context, id string, seen time.Time) error {
	return s.execOne(ctx, "touch device "+id,
		`UPDATE devices SET last_seen = max(coalesce(last_seen, ''), ?) WHERE device = ?`, fmtTime(seen), id)
}

// DeleteDevice removes the device with its tokens and sessions (foreign
// key cascade); with purge its readings, rollups and compact id too.
func (s *Store) DeleteDevice(ctx context.Context, id string, purge bool) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE device = ?`, id)
	if err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("delete device %s: %w", id, storage.ErrNotFound)
	}
	if purge {
		for _, q := range []string{
			`DELETE FROM readings WHERE device_id IN (SELECT id FROM device_ids WHERE device = ?1)`,
			`DELETE FROM rollup_1m WHERE device_id IN (SELECT id FROM device_ids WHERE device = ?1)`,
			`DELETE FROM rollup_1h WHERE device_id IN (SELECT id FROM device_ids WHERE device = ?1)`,
			`DELETE FROM rollup_dirty WHERE device_id IN (SELECT id FROM device_ids WHERE device = ?1)`,
			`DELETE FROM device_ids WHERE device = ?1`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("purge device %s: %w", id, err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	if purge {
		// Still holding the writer connection: no commit can use the
		// stale id in between.
		s.mu.Lock()
		delete(s.deviceIDs, id)
		s.mu.Unlock()
	}
	return nil
}

// AddDeviceToken stores a token hash; storage.ErrExists for a known hash,
// storage.ErrNotFound for an unknown device.
func (s *Store) AddDeviceToken(ctx context.Context, t storage.DeviceToken) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO device_tokens (hash, device, created_at, expires_at) VALUES (?, ?, ?, ?)`,
		t.Hash, t.DeviceID, fmtTime(orNow(t.CreatedAt)), fmtTimePtr(t.ExpiresAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("add token for %s: %w", t.DeviceID, storage.ErrExists)
	case isForeignKey(err):
		return fmt.Errorf("add token for %s: device %w", t.DeviceID, storage.ErrNotFound)
	case err != nil:
		return fmt.Errorf("add token for %s: %w", t.DeviceID, err)
	}
	return nil
}

// ExpireDeviceTokens sets expires_at = at on the device's tokens that have
// none or a later one, except keep.
func (s *Store) ExpireDeviceTokens(ctx context.Context, device string, keep []byte, at time.Time) error {
	_, err := s.w.ExecContext(ctx, `UPDATE device_tokens SET expires_at = ?1
		WHERE device = ?2 AND (expires_at IS NULL OR expires_at > ?1) AND (?3 IS NULL OR hash != ?3)`,
		fmtTime(at), device, nilIfEmpty(keep))
	if err != nil {
		return fmt.Errorf("expire tokens of %s: %w", device, err)
	}
	return nil
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// LookupDeviceToken finds a token by hash, with its device's enabled flag
// and watermark; storage.ErrNotFound if absent.
func (s *Store) LookupDeviceToken(ctx context.Context, hash []byte) (storage.DeviceToken, error) {
	var (
		t       storage.DeviceToken
		created string
		expires sql.NullString
	)
	var acked int64
	err := s.queryRow(ctx, `SELECT t.hash, t.device, t.created_at, t.expires_at, d.enabled, d.acked_seq
		FROM device_tokens t JOIN devices d USING (device) WHERE t.hash = ?`, hash).
		Scan(&t.Hash, &t.DeviceID, &created, &expires, &t.DeviceEnabled, &acked)
	t.DeviceAcked = uint64(acked)
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("device token: %w", storage.ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("look up device token: %w", err)
	}
	if t.CreatedAt, err = parseTime(created); err != nil {
		return t, err
	}
	if t.ExpiresAt, err = parseTimePtr(expires); err != nil {
		return t, err
	}
	return t, nil
}

// AddAPIKey stores an operator key; storage.ErrExists when its id or hash
// is taken.
func (s *Store) AddAPIKey(ctx context.Context, k storage.APIKey) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO api_keys (id, hash, name, role, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)`,
		k.ID, k.Hash, k.Name, k.Role, fmtTime(orNow(k.CreatedAt)), fmtTimePtr(k.RevokedAt))
	if isUnique(err) {
		return fmt.Errorf("add api key %s: %w", k.ID, storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("add api key %s: %w", k.ID, err)
	}
	return nil
}

const apiKeyCols = `id, hash, name, role, created_at, revoked_at`

func scanAPIKey(sc scanner) (storage.APIKey, error) {
	var (
		k       storage.APIKey
		created string
		revoked sql.NullString
	)
	if err := sc.Scan(&k.ID, &k.Hash, &k.Name, &k.Role, &created, &revoked); err != nil {
		return k, err
	}
	var err error
	if k.CreatedAt, err = parseTime(created); err != nil {
		return k, err
	}
	k.RevokedAt, err = parseTimePtr(revoked)
	return k, err
}

// LookupAPIKey finds a key by hash (revoked keys too, so the caller can
// say so); storage.ErrNotFound if absent.
func (s *Store) LookupAPIKey(ctx context.Context, hash []byte) (storage.APIKey, error) {
	k, err := scanAPIKey(s.queryRow(ctx, `SELECT `+apiKeyCols+` FROM api_keys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, fmt.Errorf("api key: %w", storage.ErrNotFound)
	}
	if err != nil {
		return k, fmt.Errorf("look up api key: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key ordered by id.
func (s *Store) ListAPIKeys(ctx context.Context) ([]storage.APIKey, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+apiKeyCols+` FROM api_keys ORDER BY id`)
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

// RevokeAPIKey marks a key revoked at at; a key revoked earlier keeps its
// first revocation time.
func (s *Store) RevokeAPIKey(ctx context.Context, id string, at time.Time) error {
	return s.execOne(ctx, "revoke api key "+id, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`, fmtTime(at), id)
}

// OpenSession records a new session; storage.ErrExists for a taken id,
// storage.ErrNotFound for an unknown device.
func (s *Store) OpenSession(ctx context.Context, ss storage.Session) error {
	started := fmtTime(orNow(ss.StartedAt))
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("open session %s: %w", ss.ID, err)
	}
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, `INSERT INTO device_sessions (id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		ss.ID, ss.DeviceID, ss.Node, ss.RemoteAddr, ss.Transport, started, fmtTimePtr(ss.EndedAt), ss.CloseReason, ss.Readings)
	switch {
	case isUnique(err):
		return fmt.Errorf("open session %s: %w", ss.ID, storage.ErrExists)
	case isForeignKey(err):
		return fmt.Errorf("open session %s: device %s %w", ss.ID, ss.DeviceID, storage.ErrNotFound)
	case err != nil:
		return fmt.Errorf("open session %s: %w", ss.ID, err)
	}
	// last_seen in the same transaction: one fsync per handshake, not two
	// (session bookkeeping bounded the handshake rate, docs/benchmarks.md).
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_seen = max(coalesce(last_seen, ''), ?) WHERE device = ?`, started, ss.DeviceID); err != nil {
		return fmt.Errorf("open session %s: touch device: %w", ss.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("open session %s: commit: %w", ss.ID, err)
	}
	return nil
}

// CloseSession records the end of a session and advances the device's
// last_seen, in one transaction.
func (s *Store) CloseSession(ctx context.Context, id string, ended time.Time, reason string, readings int64) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("close session %s: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, `UPDATE device_sessions SET ended_at = ?, close_reason = ?, readings = ? WHERE id = ?`, fmtTime(ended), reason, readings, id)
	if err != nil {
		return fmt.Errorf("close session %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("close session %s: %w", id, storage.ErrNotFound)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_seen = max(coalesce(last_seen, ''), ?)
		WHERE device = (SELECT device FROM device_sessions WHERE id = ?)`, fmtTime(ended), id); err != nil {
		return fmt.Errorf("close session %s: touch device: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("close session %s: commit: %w", id, err)
	}
	return nil
}

// ListSessions returns the device's newest sessions first, at most limit
// (100 when limit <= 0).
func (s *Store) ListSessions(ctx context.Context, device string, limit int) ([]storage.Session, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id, device, node, remote_addr, transport, started_at, ended_at, close_reason, readings
		FROM device_sessions WHERE device = ? ORDER BY started_at DESC, id DESC LIMIT ?`, device, limit)
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

func scanSession(sc scanner) (storage.Session, error) {
	var (
		ss      storage.Session
		started string
		ended   sql.NullString
	)
	if err := sc.Scan(&ss.ID, &ss.DeviceID, &ss.Node, &ss.RemoteAddr, &ss.Transport, &started, &ended, &ss.CloseReason, &ss.Readings); err != nil {
		return ss, err
	}
	var err error
	if ss.StartedAt, err = parseTime(started); err != nil {
		return ss, err
	}
	ss.EndedAt, err = parseTimePtr(ended)
	return ss, err
}
