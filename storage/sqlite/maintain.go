package sqlite

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	sqlite3 "github.com/ncruces/go-sqlite3"
)

const (
	minuteMs = int64(time.Minute / time.Millisecond)
	// deleteChunk bounds one retention DELETE: ~10k rows is a few
	// milliseconds of write lock, so commits queue behind it only briefly.
	deleteChunk = 10000
	// refreshGroup devices share a refresh transaction: at a minute of
	// 1 Hz data with ten metrics each that is ~120k readings, well under
	// a second of write lock.
	refreshGroup = 200
)

// Maintain does the periodic housekeeping as of now, each step in short
// write transactions so commits interleave:
//
//  1. refresh rollups: per device, the 1-minute buckets from the last
//     refresh on are recomputed from raw readings and their hours from the
//     minutes; then the (device, hour) pairs commits marked dirty with late
//     readings are recomputed the same way;
//  2. delete raw readings older than Retention.Raw (after 1, so late rows
//     reach the rollups before they go);
//  3. delete rollup rows older than Retention.Rollups.
func (s *Store) Maintain(ctx context.Context, now time.Time) error {
	nowMs := now.UnixMilli()
	if err := s.refreshRollups(ctx, nowMs); err != nil {
		return fmt.Errorf("maintain: %w", err)
	}
	if err := s.applyRetention(ctx, nowMs); err != nil {
		return fmt.Errorf("maintain: %w", err)
	}
	return nil
}

func (s *Store) refreshRollups(ctx context.Context, nowMs int64) error {
	prev, err := s.metaInt(ctx, s.w, metaRefreshedTo)
	if err != nil {
		return err
	}
	lo := int64(math.MinInt64)
	if prev != nil {
		lo = floorDiv(min(*prev, nowMs), minuteMs) * minuteMs
	}
	rawCutoff, err := s.metaInt(ctx, s.w, metaRawCutoff)
	if err != nil {
		return err
	}
	keepFrom := int64(math.MinInt64) // raw rows older than this are gone
	if rawCutoff != nil {
		keepFrom = *rawCutoff
	}
	// From here on, commits of readings older than nowMs mark their hours
	// dirty: the per-device passes below may already have gone past them.
	// Set while holding the writer so it is ordered with commits.
	if err := s.withWriter(ctx, func(*sqlite3.Conn) error {
		if s.lateBefore.Load() < nowMs {
			s.lateBefore.Store(nowMs)
		}
		return nil
	}); err != nil {
		return err
	}

	devices, err := s.ids(ctx, `SELECT id FROM device_ids ORDER BY id`)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	// Devices in groups, one transaction each: one transaction per device
	// would cost a sync per device (thousands per minute on a big fleet),
	// one for all would hold the write lock for the whole refresh.
	for group := range slices.Chunk(devices, refreshGroup) {
		if err := s.withWriter(ctx, func(c *sqlite3.Conn) error {
			return inTx(c, func() error {
				for _, dev := range group {
					if err := refreshDevice(c, dev, max(lo, keepFrom), math.MaxInt64); err != nil {
						return fmt.Errorf("device %d: %w", dev, err)
					}
				}
				return nil
			})
		}); err != nil {
			return fmt.Errorf("refresh rollups: %w", err)
		}
	}

	dirty, err := s.dirtyMarks(ctx)
	if err != nil {
		return err
	}
	for _, d := range dirty {
		from := max(d.hour, ceilTo(keepFrom, minuteMs))
		if from >= d.hour+hourMs {
			s.log.Debug("late readings older than raw retention are not rolled up", "device_id", d.device, "hour", time.UnixMilli(d.hour).UTC())
		}
		if err := s.withWriter(ctx, func(c *sqlite3.Conn) error {
			return inTx(c, func() error {
				if from < d.hour+hourMs {
					if err := refreshDevice(c, d.device, from, d.hour+hourMs); err != nil {
						return err
					}
				}
				return execArgs(c, `DELETE FROM rollup_dirty WHERE device_id = ? AND hour = ?`, d.device, d.hour)
			})
		}); err != nil {
			return fmt.Errorf("refresh late rollups of device %d: %w", d.device, err)
		}
	}

	if _, err := s.w.ExecContext(ctx, `INSERT INTO meridian_meta (key, value) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, metaRefreshedTo, strconv.FormatInt(nowMs, 10)); err != nil {
		return fmt.Errorf("record rollup progress: %w", err)
	}
	return nil
}

func (s *Store) dirtyMarks(ctx context.Context) ([]dirtyKey, error) {
	rows, err := s.w.QueryContext(ctx, `SELECT device_id, hour FROM rollup_dirty ORDER BY device_id, hour`)
	if err != nil {
		return nil, fmt.Errorf("read late rollup marks: %w", err)
	}
	defer rows.Close()
	var out []dirtyKey
	for rows.Next() {
		var d dirtyKey
		if err := rows.Scan(&d.device, &d.hour); err != nil {
			return nil, fmt.Errorf("read late rollup marks: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ids runs a query returning one integer column on the writer (so it sees
// what the writer just did).
func (s *Store) ids(ctx context.Context, q string, args ...any) ([]int64, error) {
	rows, err := s.w.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// bucketAgg accumulates one rollup bucket.
type bucketAgg struct {
	bucket              int64
	min, max, sum, last float64
	lastT               int64
	count               int64
}

func (a *bucketAgg) add(t int64, v float64) {
	if a.count == 0 {
		a.min, a.max, a.last, a.lastT = v, v, v, t
	} else {
		a.min = math.Min(a.min, v)
		a.max = math.Max(a.max, v)
		// Ties on time go to the later insert: rows come in index order
		// (device_id, t_ms, metric_id, rowid), so within one metric equal
		// times arrive in insertion order.
		if t >= a.lastT {
			a.last, a.lastT = v, t
		}
	}
	a.sum += v
	a.count++
}

// refreshDevice recomputes the device's 1-minute buckets in [from, to)
// (from a minute boundary) from raw readings, then the hours they fall in
// from the minutes. Runs inside the caller's transaction.
func refreshDevice(c *sqlite3.Conn, device, from, to int64) error {
	if from != math.MinInt64 {
		from = floorDiv(from, minuteMs) * minuteMs
	}
	done, err := minuteBuckets(c, device, from, to)
	if err != nil {
		return err
	}
	if err := writeMinutes(c, device, from, to, done); err != nil {
		return err
	}
	return rollUpHours(c, device, from, to)
}

// metricAgg is one metric's finished 1-minute bucket.
type metricAgg struct {
	metric int64
	agg    bucketAgg
}

// minuteBuckets aggregates the device's raw readings in [from, to) into
// 1-minute buckets per metric.
func minuteBuckets(c *sqlite3.Conn, device, from, to int64) ([]metricAgg, error) {
	sel, _, err := c.Prepare(`SELECT t_ms, metric_id, value FROM readings
		WHERE device_id = ? AND t_ms >= ? AND t_ms < ? ORDER BY t_ms`)
	if err != nil {
		return nil, err
	}
	defer sel.Close()
	sel.BindInt64(1, device)
	sel.BindInt64(2, from)
	sel.BindInt64(3, to)
	open := map[int64]*bucketAgg{} // metric -> bucket being filled
	var done []metricAgg
	for sel.Step() {
		t, m, v := sel.ColumnInt64(0), sel.ColumnInt64(1), sel.ColumnFloat(2)
		b := floorDiv(t, minuteMs) * minuteMs
		a := open[m]
		if a == nil || a.bucket != b {
			if a != nil {
				done = append(done, metricAgg{m, *a})
			}
			a = &bucketAgg{bucket: b}
			open[m] = a
		}
		a.add(t, v)
	}
	if err := sel.Err(); err != nil {
		return nil, fmt.Errorf("read readings: %w", err)
	}
	for m, a := range open {
		done = append(done, metricAgg{m, *a})
	}
	return done, nil
}

// writeMinutes replaces the device's 1-minute rollups in [from, to) with
// done.
func writeMinutes(c *sqlite3.Conn, device, from, to int64, done []metricAgg) error {
	if err := execArgs(c, `DELETE FROM rollup_1m WHERE device_id = ? AND bucket >= ? AND bucket < ?`, device, from, to); err != nil {
		return fmt.Errorf("clear 1m rollups: %w", err)
	}
	ins, _, err := c.Prepare(`INSERT INTO rollup_1m (device_id, metric_id, bucket, min, max, sum, count, last, last_t)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	for _, d := range done {
		a := d.agg
		ins.BindInt64(1, device)
		ins.BindInt64(2, d.metric)
		ins.BindInt64(3, a.bucket)
		ins.BindFloat(4, a.min)
		ins.BindFloat(5, a.max)
		ins.BindFloat(6, a.sum)
		ins.BindInt64(7, a.count)
		ins.BindFloat(8, a.last)
		ins.BindInt64(9, a.lastT)
		if err := ins.Exec(); err != nil {
			return fmt.Errorf("write 1m rollups: %w", err)
		}
	}
	return nil
}

// rollUpHours recomputes the device's 1-hour rollups of the hours that
// [from, to) touches from its 1-minute rollups.
func rollUpHours(c *sqlite3.Conn, device, from, to int64) error {
	hFrom := from
	if hFrom != math.MinInt64 {
		hFrom = floorDiv(from, hourMs) * hourMs
	}
	hTo := to
	if hTo != math.MaxInt64 {
		hTo = ceilTo(to, hourMs)
	}
	if err := execArgs(c, `DELETE FROM rollup_1h WHERE device_id = ? AND bucket >= ? AND bucket < ?`, device, hFrom, hTo); err != nil {
		return fmt.Errorf("clear 1h rollups: %w", err)
	}
	// An hour is its minutes: extremes of extremes, sums of sums, and the
	// last of the minute holding the latest reading.
	if err := execArgs(c, `INSERT INTO rollup_1h (device_id, metric_id, bucket, min, max, sum, count, last, last_t)
		SELECT g.device_id, g.metric_id, g.hour, g.min, g.max, g.sum, g.count,
		       (SELECT l.last FROM rollup_1m l
		        WHERE l.device_id = g.device_id AND l.metric_id = g.metric_id
		          AND l.bucket >= g.hour AND l.bucket < g.hour + ?4
		        ORDER BY l.last_t DESC, l.bucket DESC LIMIT 1),
		       g.last_t
		FROM (SELECT device_id, metric_id, (bucket - (bucket % ?4 + ?4) % ?4) AS hour,
		             min(min) AS min, max(max) AS max, sum(sum) AS sum, sum(count) AS count, max(last_t) AS last_t
		      FROM rollup_1m
		      WHERE device_id = ?1 AND bucket >= ?2 AND bucket < ?3
		      GROUP BY metric_id, hour) g`, device, hFrom, hTo, hourMs); err != nil {
		return fmt.Errorf("write 1h rollups: %w", err)
	}
	return nil
}

func (s *Store) applyRetention(ctx context.Context, nowMs int64) error {
	if raw := s.cfg.Retention.Raw; raw > 0 {
		cutoff := nowMs - raw.Milliseconds()
		// CROSS JOIN makes SQLite loop over devices and range-scan each
		// one's index entries below the cutoff (there is no time-first
		// index: it would slow every commit); a chunk that starts over
		// skips emptied devices with one seek each.
		if err := s.deleteChunked(ctx, `DELETE FROM readings WHERE rowid IN
			(SELECT r.rowid FROM device_ids d CROSS JOIN readings r ON r.device_id = d.id AND r.t_ms < ? LIMIT ?)`, cutoff); err != nil {
			return fmt.Errorf("raw retention: %w", err)
		}
		if _, err := s.w.ExecContext(ctx, `INSERT INTO meridian_meta (key, value) VALUES (?1, ?2)
			ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))`,
			metaRawCutoff, strconv.FormatInt(cutoff, 10)); err != nil {
			return fmt.Errorf("record raw retention: %w", err)
		}
	}
	if keep := s.cfg.Retention.Rollups; keep > 0 {
		cutoff := nowMs - keep.Milliseconds()
		for _, table := range []string{"rollup_1m", "rollup_1h"} {
			// Table names are constants of this function, never input.
			q := `DELETE FROM ` + table + ` WHERE (device_id, metric_id, bucket) IN
				(SELECT device_id, metric_id, bucket FROM ` + table + ` WHERE bucket < ? LIMIT ?)`
			if err := s.deleteChunked(ctx, q, cutoff); err != nil {
				return fmt.Errorf("rollup retention of %s: %w", table, err)
			}
		}
	}
	return nil
}

// deleteChunked repeats a DELETE whose last parameter is a LIMIT until it
// removes fewer rows than the chunk, each chunk its own short transaction.
func (s *Store) deleteChunked(ctx context.Context, q string, args ...any) error {
	args = append(args, deleteChunk)
	for {
		res, err := s.w.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n < deleteChunk {
			return nil
		}
	}
}

// inTx runs f in a write transaction on c.
func inTx(c *sqlite3.Conn, f func() error) (err error) {
	if err := c.Exec("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil && !c.GetAutocommit() {
			// The failure may be ctx's interrupt; roll back regardless.
			c.SetInterrupt(context.Background())
			if rerr := c.Exec("ROLLBACK"); rerr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", rerr))
			}
		}
	}()
	if err := f(); err != nil {
		return err
	}
	if err := c.Exec("COMMIT"); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// execArgs runs one statement with int64 arguments.
func execArgs(c *sqlite3.Conn, q string, args ...int64) error {
	st, _, err := c.Prepare(q)
	if err != nil {
		return err
	}
	defer st.Close()
	for i, a := range args {
		if err := st.BindInt64(i+1, a); err != nil {
			return err
		}
	}
	return st.Exec()
}

// ceilTo rounds a up to a multiple of unit.
func ceilTo(a, unit int64) int64 {
	if a == math.MinInt64 || a == math.MaxInt64 {
		return a
	}
	return -floorDiv(-a, unit) * unit
}
