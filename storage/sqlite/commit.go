package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	sqlite3 "github.com/ncruces/go-sqlite3"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// hourMs is the rollup_1h bucket width and the granularity of dirty marks.
const hourMs = int64(time.Hour / time.Millisecond)

// Commit stores the batches in one transaction, in order: for each batch the
// device's watermark is read inside the transaction; Seq <= watermark is a
// duplicate and stores nothing, otherwise the readings are inserted and the
// watermark becomes Seq. Unknown devices are created in the registry. On
// error nothing of the call is stored; a nil error means the transaction is
// durable (as durable as Config.Synchronous makes it). An error caused by the
// data rather than the database wraps telemetry.ErrInvalidData (see
// dataError), so the caller can isolate the offending batch instead of
// retrying the set forever.
//
// The write path uses the driver's direct statement API: one prepared
// single-row INSERT stepped per reading. In-process that costs no round
// trip, and it measured faster than multi-row INSERTs of 100-1000 rows
// (binding thousands of parameters per statement is the slower part).
func (s *Store) Commit(ctx context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error) {
	out := make([]telemetry.Outcome, len(batches))
	if len(batches) == 0 {
		return out, nil
	}
	for i, b := range batches {
		if b.Device == "" {
			return nil, fmt.Errorf("commit: batch %d has no device: %w", i, telemetry.ErrInvalidData)
		}
		if b.Seq == 0 || b.Seq > math.MaxInt64 {
			return nil, fmt.Errorf("commit: batch %d of %s: seq %d out of range 1..2^63-1: %w", i, b.Device, b.Seq, telemetry.ErrInvalidData)
		}
		for _, r := range b.Readings {
			// SQLite stores NaN as NULL, which the NOT NULL column rejects
			// with a less helpful message; ingest already refuses NaN.
			if math.IsNaN(r.Value) {
				return nil, fmt.Errorf("commit: batch %d of %s: metric %q at %d is NaN: %w", i, b.Device, r.Metric, r.Time, telemetry.ErrInvalidData)
			}
		}
	}
	err := s.withWriter(ctx, func(c *sqlite3.Conn) error {
		return s.commitTx(ctx, c, batches, out)
	})
	if err != nil {
		return nil, fmt.Errorf("commit %d batches: %w", len(batches), dataError(err))
	}
	return out, nil
}

// dataError marks err with telemetry.ErrInvalidData when SQLite refused the
// data itself: a constraint (CHECK, NOT NULL, foreign key), a type mismatch,
// or a string or blob over its size limit. Busy, locked, I/O, full-disk and
// interrupt errors are the database's state, not the batch's, and stay
// retryable.
func dataError(err error) error {
	for _, code := range []sqlite3.ErrorCode{sqlite3.CONSTRAINT, sqlite3.MISMATCH, sqlite3.TOOBIG} {
		if errors.Is(err, code) {
			return fmt.Errorf("%w: %w", telemetry.ErrInvalidData, err)
		}
	}
	return err
}

// commitStmts are the write path's statements, prepared once on the writer
// connection and reused (preparing them per commit cost ~5% of a
// 1000-reading commit). Only touched while holding the writer connection.
// Close finalizes them: sqlite3_close refuses while any exist.
type commitStmts struct {
	conn                           *sqlite3.Conn
	selDevice, insDevice, updAcked *sqlite3.Stmt
	selDeviceID, insDeviceID       *sqlite3.Stmt
	selMetric, insMetric           *sqlite3.Stmt
	insReading, insDirty           *sqlite3.Stmt
}

func prepareCommit(c *sqlite3.Conn) (*commitStmts, error) {
	cs := &commitStmts{conn: c}
	for _, p := range []struct {
		dst **sqlite3.Stmt
		q   string
	}{
		{&cs.selDevice, `SELECT acked_seq FROM devices WHERE device = ?`},
		{&cs.insDevice, `INSERT INTO devices (device, created_at) VALUES (?, ?)`},
		{&cs.updAcked, `UPDATE devices SET acked_seq = ? WHERE device = ?`},
		{&cs.selDeviceID, `SELECT id FROM device_ids WHERE device = ?`},
		{&cs.insDeviceID, `INSERT INTO device_ids (device) VALUES (?)`},
		{&cs.selMetric, `SELECT id FROM metrics WHERE metric = ?`},
		{&cs.insMetric, `INSERT INTO metrics (metric, created_at) VALUES (?, ?)`},
		{&cs.insReading, `INSERT INTO readings (t_ms, device_id, metric_id, value) VALUES (?, ?, ?, ?)`},
		{&cs.insDirty, `INSERT OR IGNORE INTO rollup_dirty (device_id, hour) VALUES (?, ?)`},
	} {
		st, _, err := c.Prepare(p.q)
		if err != nil {
			cs.close()
			return nil, fmt.Errorf("prepare %q: %w", p.q, err)
		}
		*p.dst = st
	}
	return cs, nil
}

func (cs *commitStmts) close() {
	for _, st := range []*sqlite3.Stmt{cs.selDevice, cs.insDevice, cs.updAcked, cs.selDeviceID, cs.insDeviceID,
		cs.selMetric, cs.insMetric, cs.insReading, cs.insDirty} {
		st.Close() // nil-safe
	}
}

type dirtyKey struct{ device, hour int64 }

// commitTx is Commit's transaction on the writer connection: reuse (or
// prepare) the statements, BEGIN IMMEDIATE, insert the batches, move the
// watermarks, mark late rollup hours, COMMIT, and only then publish the new
// ids to the caches. Any error before COMMIT succeeds rolls back.
func (s *Store) commitTx(ctx context.Context, c *sqlite3.Conn, batches []telemetry.Batch, out []telemetry.Outcome) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	cs, err := s.commitStatements(c)
	if err != nil {
		return err
	}
	if err := c.Exec("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	done := false
	defer func() {
		if !done {
			// Roll back even when ctx is what failed.
			c.SetInterrupt(context.Background())
			if rerr := c.Exec("ROLLBACK"); rerr != nil && !c.GetAutocommit() {
				err = errors.Join(err, fmt.Errorf("rollback: %w", rerr))
			}
		}
	}()

	st, err := s.insertBatches(c, cs, batches, out)
	if err != nil {
		return err
	}
	if err := updateWatermarks(cs, st.devs); err != nil {
		return err
	}
	if err := markDirty(cs, st.dirty); err != nil {
		return err
	}
	// Past this point the outcome of COMMIT is the outcome of the call, so
	// it must not be interrupted half-way: check ctx first, then commit
	// without it (a commit of a few pages is short).
	if err := ctx.Err(); err != nil {
		return err
	}
	c.SetInterrupt(context.Background())
	if err := c.Exec("COMMIT"); err != nil {
		// SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY...: the transaction is
		// rolled back (the deferred ROLLBACK finishes it if SQLite did not).
		return fmt.Errorf("commit transaction: %w", err)
	}
	done = true
	s.publishIDs(st.newDevices, st.newMetrics)
	return nil
}

// commitStatements returns the prepared write statements of connection c,
// preparing them when c is not the connection they were prepared on.
func (s *Store) commitStatements(c *sqlite3.Conn) (*commitStmts, error) {
	if s.stmts == nil || s.stmts.conn != c {
		if s.stmts != nil {
			// database/sql replaced the connection; these belong to the old one.
			s.stmts.close()
		}
		var err error
		if s.stmts, err = prepareCommit(c); err != nil {
			return nil, err
		}
	}
	return s.stmts, nil
}

// commitDev is one device's state during a commit.
type commitDev struct {
	id    int64
	acked int64
	moved bool
}

// commitState is what a commit's inserts leave for its later steps: the
// devices touched, the ids registered (published to the caches only after
// COMMIT) and the late rollup hours to mark dirty.
type commitState struct {
	devs       map[string]*commitDev
	newDevices map[string]int64
	newMetrics map[string]int64
	dirty      map[dirtyKey]struct{}
}

// insertBatches decides each batch against its device's watermark (read
// once per device, inside the transaction) and inserts the readings of the
// batches that are not duplicates, in order.
func (s *Store) insertBatches(c *sqlite3.Conn, cs *commitStmts, batches []telemetry.Batch, out []telemetry.Outcome) (*commitState, error) {
	now := fmtTime(time.Now())
	late := s.lateBefore.Load()
	st := &commitState{
		devs:       map[string]*commitDev{},
		newDevices: map[string]int64{},
		newMetrics: map[string]int64{},
		dirty:      map[dirtyKey]struct{}{},
	}
	var err error
	for i, b := range batches {
		d := st.devs[b.Device]
		if d == nil {
			d = &commitDev{}
			if d.acked, err = s.registerDevice(c, cs, b.Device, now); err != nil {
				return nil, err
			}
			if d.id, err = s.deviceID(c, cs, b.Device, st.newDevices); err != nil {
				return nil, err
			}
			st.devs[b.Device] = d
		}
		seq := int64(b.Seq)
		if seq <= d.acked {
			out[i].Duplicate = true
			continue
		}
		if err := s.insertReadings(c, cs, b, d.id, now, late, st); err != nil {
			return nil, err
		}
		d.acked, d.moved = seq, true
	}
	return st, nil
}

// insertReadings inserts one batch's readings for device id dev, noting the
// hours of readings older than late (already rolled up) as dirty.
func (s *Store) insertReadings(c *sqlite3.Conn, cs *commitStmts, b telemetry.Batch, dev int64, now string, late int64, st *commitState) error {
	var err error
	for _, r := range b.Readings {
		mid, ok := s.metricIDs[r.Metric] // writer-side read: see Store.mu
		if !ok {
			if mid, err = metricID(c, cs, r.Metric, now, st.newMetrics); err != nil {
				return err
			}
		}
		ins := cs.insReading
		ins.BindInt64(1, r.Time)
		ins.BindInt64(2, dev)
		ins.BindInt64(3, mid)
		ins.BindFloat(4, r.Value)
		if err := ins.Exec(); err != nil {
			return fmt.Errorf("insert readings of %s: %w", b.Device, err)
		}
		if r.Time < late {
			st.dirty[dirtyKey{dev, floorDiv(r.Time, hourMs) * hourMs}] = struct{}{}
		}
	}
	return nil
}

// updateWatermarks stores the new watermark of every device that moved.
func updateWatermarks(cs *commitStmts, devs map[string]*commitDev) error {
	for name, d := range devs {
		if !d.moved {
			continue
		}
		cs.updAcked.BindInt64(1, d.acked)
		cs.updAcked.BindText(2, name)
		if err := cs.updAcked.Exec(); err != nil {
			return fmt.Errorf("update watermark of %s: %w", name, err)
		}
	}
	return nil
}

// markDirty records the rollup hours that received late readings, for
// Maintain to recompute.
func markDirty(cs *commitStmts, dirty map[dirtyKey]struct{}) error {
	for k := range dirty {
		cs.insDirty.BindInt64(1, k.device)
		cs.insDirty.BindInt64(2, k.hour)
		if err := cs.insDirty.Exec(); err != nil {
			return fmt.Errorf("mark late rollup buckets: %w", err)
		}
	}
	return nil
}

// publishIDs adds the ids a committed transaction registered to the caches;
// before COMMIT they could still be rolled back.
func (s *Store) publishIDs(newDevices, newMetrics map[string]int64) {
	if len(newDevices)+len(newMetrics) > 0 {
		s.mu.Lock()
		for k, v := range newDevices {
			s.deviceIDs[k] = v
		}
		for k, v := range newMetrics {
			s.metricIDs[k] = v
		}
		s.mu.Unlock()
	}
}

// registerDevice returns the device's watermark, creating its registry row
// (enabled, no token) when missing.
func (s *Store) registerDevice(c *sqlite3.Conn, cs *commitStmts, device, now string) (int64, error) {
	st := cs.selDevice
	st.BindText(1, device)
	if st.Step() {
		acked := st.ColumnInt64(0)
		if err := st.Reset(); err != nil {
			return 0, fmt.Errorf("read watermark of %s: %w", device, err)
		}
		return acked, nil
	}
	if err := st.Reset(); err != nil {
		return 0, fmt.Errorf("read watermark of %s: %w", device, err)
	}
	cs.insDevice.BindText(1, device)
	cs.insDevice.BindText(2, now)
	if err := cs.insDevice.Exec(); err != nil {
		return 0, fmt.Errorf("register device %s: %w", device, err)
	}
	return 0, nil
}

// deviceID maps a device name to its compact id, registering it when new.
func (s *Store) deviceID(c *sqlite3.Conn, cs *commitStmts, device string, fresh map[string]int64) (int64, error) {
	if id, ok := s.deviceIDs[device]; ok {
		return id, nil
	}
	if id, ok := fresh[device]; ok {
		return id, nil
	}
	id, err := lookupOrInsert(c, cs.selDeviceID, cs.insDeviceID, device, "")
	if err != nil {
		return 0, fmt.Errorf("register device id %s: %w", device, err)
	}
	fresh[device] = id
	return id, nil
}

func metricID(c *sqlite3.Conn, cs *commitStmts, metric, now string, fresh map[string]int64) (int64, error) {
	if id, ok := fresh[metric]; ok {
		return id, nil
	}
	id, err := lookupOrInsert(c, cs.selMetric, cs.insMetric, metric, now)
	if err != nil {
		return 0, fmt.Errorf("register metric %q: %w", metric, err)
	}
	fresh[metric] = id
	return id, nil
}

// lookupOrInsert finds name's id or inserts it. Inside the write
// transaction nobody else can insert the same name in between.
func lookupOrInsert(c *sqlite3.Conn, sel, ins *sqlite3.Stmt, name, now string) (int64, error) {
	sel.BindText(1, name)
	if sel.Step() {
		id := sel.ColumnInt64(0)
		return id, sel.Reset()
	}
	if err := sel.Reset(); err != nil {
		return 0, err
	}
	ins.BindText(1, name)
	if now != "" {
		ins.BindText(2, now)
	}
	if err := ins.Exec(); err != nil {
		return 0, err
	}
	return c.LastInsertRowID(), nil
}

// floorDiv divides rounding toward negative infinity, so buckets of times
// before 1970 start at or before the time.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Watermark is the device's highest durable seq; 0 for an unknown device.
func (s *Store) Watermark(ctx context.Context, device string) (uint64, error) {
	var acked int64
	err := s.queryRow(ctx, `SELECT acked_seq FROM devices WHERE device = ?`, device).Scan(&acked)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read watermark of %s: %w", device, err)
	}
	return uint64(acked), nil
}
