package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Commit stores batches in one transaction: lock the devices' rows (in name
// order, creating unknown devices), decide duplicates against the locked
// watermarks, insert the readings of the rest, move the watermarks, mark
// hours that received late readings, commit. On any error nothing is stored.
// An error caused by the data rather than the database wraps
// telemetry.ErrInvalidData (see dataError), so the caller can isolate the
// offending batch instead of retrying the set forever.
//
// The transaction is two pipelined round trips (BEGIN + lock; insert +
// watermarks + COMMIT), not one per statement: at low rates a flush is a
// few batches, and each round trip to the database is a wake-up of its
// backend and of this process that the ack waits for (docs/benchmarks.md,
// "PostgreSQL: two round trips per commit"). Flushes of copyMin readings or
// more use COPY, two round trips more, because COPY stores large flushes
// faster than an INSERT can.
func (s *Store) Commit(ctx context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	out := make([]telemetry.Outcome, len(batches))
	if len(batches) == 0 {
		return out, nil
	}
	devices, metrics, err := batchNames(batches)
	if err != nil {
		return nil, err
	}
	// Names are registered outside the transaction: registration is
	// idempotent and must not hold locks while the batch commits.
	devIDs, err := s.resolveNames(ctx, &s.deviceIDs, deviceNames, devices)
	if err != nil {
		return nil, fmt.Errorf("commit: register devices: %w", dataError(err))
	}
	metricIDs, err := s.resolveNames(ctx, &s.metricIDs, metricNames, metrics)
	if err != nil {
		return nil, fmt.Errorf("commit: register metrics: %w", dataError(err))
	}

	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("commit: acquire connection: %w", err)
	}
	defer conn.Release()
	if err := s.commitTx(ctx, conn.Conn(), batches, out, devices, devIDs, metricIDs); err != nil {
		// A transaction left open (an error before COMMIT, or a failed
		// statement) is rolled back here; if that fails too, the pool
		// destroys the connection on Release because it is not idle, which
		// ends the transaction as well. This runs on ctx, not a detached
		// cleanup context: when ctx ended (the attempt's timeout, the drain
		// deadline) dropping the connection at once is the point.
		if conn.Conn().PgConn().TxStatus() != 'I' {
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
		return nil, fmt.Errorf("commit: %w", dataError(err))
	}
	return out, nil
}

// batchNames checks the batches' seqs and returns their distinct devices
// (sorted: the order lockDevices takes their locks in) and metrics.
func batchNames(batches []telemetry.Batch) (devices, metrics []string, err error) {
	seenDev := map[string]bool{}
	seenMetric := map[string]bool{}
	for _, b := range batches {
		if b.Seq == 0 || b.Seq > math.MaxInt64 {
			return nil, nil, fmt.Errorf("commit: device %s: seq %d out of range 1..2^63-1: %w", b.Device, b.Seq, telemetry.ErrInvalidData)
		}
		if !seenDev[b.Device] {
			seenDev[b.Device] = true
			devices = append(devices, b.Device)
		}
		for _, r := range b.Readings {
			if !seenMetric[r.Metric] {
				seenMetric[r.Metric] = true
				metrics = append(metrics, r.Metric)
			}
		}
	}
	slices.Sort(devices)
	return devices, metrics, nil
}

// copyMin is the flush size (readings) from which Commit stores readings
// with COPY instead of INSERT … SELECT FROM unnest: COPY costs two round
// trips of its own but stores a large flush with less work per row.
// Measured: BenchmarkCommitInsertVsCopy (docs/benchmarks.md, "PostgreSQL: two
// round trips per commit"): break-even near 2,000, COPY 1.5x faster at 10,000.
const copyMin = 2000

// Statements of the commit transaction, written out in full so the
// connection's statement cache prepares each once.
const (
	sqlLockDevices = `SELECT device, acked_seq FROM devices WHERE device = ANY($1) ORDER BY device FOR UPDATE`
	sqlInsertRows  = `INSERT INTO readings (time, device_id, metric_id, value)
			SELECT * FROM unnest($1::timestamptz[], $2::integer[], $3::integer[], $4::double precision[])`
)

// commitTx is Commit's transaction on conn, in two pipelined round trips:
// BEGIN with the locking read of the devices' watermarks; then, once the
// duplicates are known, the readings' insert, the watermarks, the late
// hours and COMMIT. Pipelining changes no guarantee: the statements run in
// order in one transaction, a failed one skips the rest (COMMIT included),
// and the outcome is reported only after COMMIT returned.
func (s *Store) commitTx(ctx context.Context, conn *pgx.Conn, batches []telemetry.Batch, out []telemetry.Outcome,
	devices []string, devIDs, metricIDs map[string]int32) error {
	marks, err := lockDevices(ctx, conn, devices)
	if err != nil {
		return err
	}
	var fresh []telemetry.Batch
	moved := map[string]bool{}
	for i, b := range batches {
		if b.Seq <= marks[b.Device] {
			out[i].Duplicate = true
			continue
		}
		marks[b.Device] = b.Seq
		moved[b.Device] = true
		fresh = append(fresh, b)
	}
	if len(fresh) == 0 {
		// Nothing to store: release the locks without a commit record
		// (and its WAL flush). No device was created either: a new one's
		// watermark is 0, so its batches are never duplicates.
		if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
			return fmt.Errorf("end transaction: %w", err)
		}
		return nil
	}
	total := 0
	for _, b := range fresh {
		total += len(b.Readings)
	}
	// steps name the statements of the second round trip, in order, for
	// reading their results and for errors.
	var pb pgx.Batch
	var steps []string
	if total >= s.copyMin {
		src := &readingSource{batches: fresh, devIDs: devIDs, metricIDs: metricIDs}
		if n, err := conn.CopyFrom(ctx, pgx.Identifier{"readings"}, []string{"time", "device_id", "metric_id", "value"}, src); err != nil {
			return fmt.Errorf("copy readings: %w", err)
		} else if n != int64(total) {
			return fmt.Errorf("copy readings: stored %d of %d", n, total)
		}
	} else {
		queueReadings(&pb, fresh, total, devIDs, metricIDs)
		steps = append(steps, stepInsert)
	}
	queueWatermarks(&pb, devices, moved, marks)
	steps = append(steps, "update watermarks")
	if queueDirtyHours(&pb, lateHours(fresh, s.now().Add(-lateAfter).UnixMilli())) {
		steps = append(steps, "mark late hours")
	}
	pb.Queue("COMMIT")
	steps = append(steps, stepCommit)
	br := conn.SendBatch(ctx, &pb)
	for _, step := range steps {
		tag, err := br.Exec()
		switch {
		case err != nil:
		case step == stepInsert && tag.RowsAffected() != int64(total):
			err = fmt.Errorf("stored %d of %d", tag.RowsAffected(), total)
		case step == stepCommit && tag.String() != "COMMIT":
			// COMMIT of a failed transaction answers ROLLBACK.
			err = fmt.Errorf("transaction ended with %s", tag)
		}
		if err != nil {
			br.Close()
			return fmt.Errorf("%s: %w", step, err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("end pipeline: %w", err)
	}
	return nil
}

const (
	stepInsert = "insert readings"
	stepCommit = "COMMIT"
)

// queueReadings queues the insert of the batches' readings as four column
// arrays: one statement, sent in the same round trip as the watermarks and
// COMMIT.
func queueReadings(pb *pgx.Batch, batches []telemetry.Batch, total int, devIDs, metricIDs map[string]int32) {
	times := make([]time.Time, 0, total)
	devs := make([]int32, 0, total)
	mets := make([]int32, 0, total)
	vals := make([]float64, 0, total)
	for _, b := range batches {
		dev := devIDs[b.Device]
		for _, r := range b.Readings {
			times = append(times, time.UnixMilli(r.Time).UTC())
			devs = append(devs, dev)
			mets = append(mets, metricIDs[r.Metric])
			vals = append(vals, r.Value)
		}
	}
	pb.Queue(sqlInsertRows, times, devs, mets, vals)
}

// lateHours returns the starts (Unix ms) of the hours holding readings older
// than lateBefore.
func lateHours(batches []telemetry.Batch, lateBefore int64) map[int64]bool {
	late := map[int64]bool{}
	for _, b := range batches {
		for _, r := range b.Readings {
			if r.Time < lateBefore {
				late[r.Time-mod(r.Time, time.Hour.Milliseconds())] = true
			}
		}
	}
	return late
}

// queueWatermarks queues the update of the moved devices' watermarks, in
// device order.
func queueWatermarks(pb *pgx.Batch, devices []string, moved map[string]bool, marks map[string]uint64) {
	var wmDev []string
	var wmSeq []int64
	for _, d := range devices {
		if moved[d] {
			wmDev, wmSeq = append(wmDev, d), append(wmSeq, int64(marks[d]))
		}
	}
	pb.Queue(`UPDATE devices d SET acked_seq = v.seq
			FROM unnest($1::text[], $2::bigint[]) AS v(device, seq)
			WHERE d.device = v.device`, wmDev, wmSeq)
}

// queueDirtyHours queues the marks of the late hours, if any, for Maintain
// to refresh, and reports whether it queued a statement.
func queueDirtyHours(pb *pgx.Batch, late map[int64]bool) bool {
	if len(late) == 0 {
		return false
	}
	hours := make([]time.Time, 0, len(late))
	for h := range late {
		hours = append(hours, time.UnixMilli(h).UTC())
	}
	// Sorted, so concurrent commits take the marks' row locks in the same
	// order.
	slices.SortFunc(hours, func(a, b time.Time) int { return a.Compare(b) })
	pb.Queue(`INSERT INTO rollup_dirty (hour, gen)
			SELECT h, nextval('rollup_dirty_gen') FROM unnest($1::timestamptz[]) AS h ORDER BY h
			ON CONFLICT (hour) DO UPDATE SET gen = excluded.gen`, hours)
	return true
}

// dataError marks err with telemetry.ErrInvalidData when PostgreSQL refused
// the data itself: SQLSTATE class 22 (data exception: a value out of range,
// a string too long) or 23 (integrity constraint violation: a CHECK, a
// missing partition for a reading's time, a foreign key to a device deleted
// meanwhile). Everything else — connection loss, timeouts, serialization
// failures (class 40), a full disk (53) — is the database's state, not the
// batch's, and stays retryable.
func dataError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23")) {
		return fmt.Errorf("%w: %w", telemetry.ErrInvalidData, err)
	}
	return err
}

// lockDevices begins the transaction on conn, locks the registry rows of
// devices (sorted), creating the missing ones first, and returns their
// watermarks. BEGIN and the locking read go in one round trip. Existing rows
// are locked before any insert and inserts go in name order, so two commits
// cannot wait on each other in a cycle.
func lockDevices(ctx context.Context, conn *pgx.Conn, devices []string) (map[string]uint64, error) {
	marks := make(map[string]uint64, len(devices))
	scan := func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var d string
			var seq int64
			if err := rows.Scan(&d, &seq); err != nil {
				return fmt.Errorf("lock devices: %w", err)
			}
			marks[d] = uint64(seq)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock devices: %w", err)
		}
		return nil
	}
	var pb pgx.Batch
	pb.Queue("BEGIN")
	pb.Queue(sqlLockDevices, devices)
	br := conn.SendBatch(ctx, &pb)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return nil, fmt.Errorf("begin: %w", err)
	}
	rows, err := br.Query()
	if err == nil {
		err = scan(rows)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if len(marks) == len(devices) {
		return marks, nil
	}
	var missing []string
	for _, d := range devices {
		if _, ok := marks[d]; !ok {
			missing = append(missing, d)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO devices (device) SELECT d FROM unnest($1::text[]) AS d ORDER BY d ON CONFLICT DO NOTHING`, missing); err != nil {
		return nil, fmt.Errorf("create devices: %w", err)
	}
	rows, err = conn.Query(ctx, sqlLockDevices, missing)
	if err != nil {
		return nil, fmt.Errorf("lock devices: %w", err)
	}
	if err := scan(rows); err != nil {
		return nil, err
	}
	if len(marks) != len(devices) {
		// Only possible if a device was deleted between insert and lock.
		return nil, errors.New("lock devices: a device vanished during commit")
	}
	return marks, nil
}

// readingSource feeds CopyFrom from the batches without building a row
// slice; Values reuses one buffer (CopyFrom encodes each row before asking
// for the next).
type readingSource struct {
	batches   []telemetry.Batch
	devIDs    map[string]int32
	metricIDs map[string]int32
	b, r      int
	started   bool
	row       [4]any
}

func (s *readingSource) Next() bool {
	if s.started {
		s.r++
	}
	s.started = true
	for s.b < len(s.batches) {
		if s.r < len(s.batches[s.b].Readings) {
			return true
		}
		s.b++
		s.r = 0
	}
	return false
}

func (s *readingSource) Values() ([]any, error) {
	b := &s.batches[s.b]
	r := &b.Readings[s.r]
	s.row[0] = time.UnixMilli(r.Time).UTC()
	s.row[1] = s.devIDs[b.Device]
	s.row[2] = s.metricIDs[r.Metric]
	s.row[3] = r.Value
	return s.row[:], nil
}

func (s *readingSource) Err() error { return nil }

// nameTable holds the statements for one name->id table, written out in
// full rather than assembled, so no SQL is built from strings at run time.
type nameTable struct {
	// register inserts the names and returns id and name of the new rows
	// (RETURNING) plus those that existed before (the SELECT, under the same
	// statement snapshot). A row committed by a concurrent registration
	// after the snapshot is in neither, hence lookup as a second pass.
	register string
	lookup   string // all given names
	one      string // one name
}

var (
	deviceNames = nameTable{
		register: `WITH ins AS (
				INSERT INTO device_ids (device) SELECT n FROM unnest($1::text[]) AS n ORDER BY n
				ON CONFLICT DO NOTHING RETURNING id, device)
			SELECT id, device FROM ins
			UNION ALL
			SELECT id, device FROM device_ids WHERE device = ANY($1)`,
		lookup: `SELECT id, device FROM device_ids WHERE device = ANY($1)`,
		one:    `SELECT id FROM device_ids WHERE device = $1`,
	}
	metricNames = nameTable{
		register: `WITH ins AS (
				INSERT INTO metrics (metric) SELECT n FROM unnest($1::text[]) AS n ORDER BY n
				ON CONFLICT DO NOTHING RETURNING id, metric)
			SELECT id, metric FROM ins
			UNION ALL
			SELECT id, metric FROM metrics WHERE metric = ANY($1)`,
		lookup: `SELECT id, metric FROM metrics WHERE metric = ANY($1)`,
		one:    `SELECT id FROM metrics WHERE metric = $1`,
	}
)

// resolveNames maps names to ids, from the cache when possible; unknown
// names are registered with one statement for all of them.
func (s *Store) resolveNames(ctx context.Context, cache *sync.Map, nt nameTable, names []string) (map[string]int32, error) {
	ids := make(map[string]int32, len(names))
	var missing []string
	for _, n := range names {
		if v, ok := cache.Load(n); ok {
			ids[n] = v.(int32)
		} else {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return ids, nil
	}
	slices.Sort(missing)
	for attempt, q := range []string{nt.register, nt.lookup} {
		if attempt > 0 {
			var still []string
			for _, n := range missing {
				if _, ok := ids[n]; !ok {
					still = append(still, n)
				}
			}
			if missing = still; len(missing) == 0 {
				break
			}
		}
		rows, err := s.pool.Query(ctx, q, missing)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int32
			var n string
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return nil, err
			}
			ids[n] = id
			cache.Store(n, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for _, n := range names {
		if _, ok := ids[n]; !ok {
			return nil, fmt.Errorf("name %q not registered", n)
		}
	}
	return ids, nil
}

// lookupName returns the id of an existing name without registering it.
func (s *Store) lookupName(ctx context.Context, cache *sync.Map, nt nameTable, name string) (int32, bool, error) {
	if v, ok := cache.Load(name); ok {
		return v.(int32), true, nil
	}
	var id int32
	err := s.pool.QueryRow(ctx, nt.one, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	cache.Store(name, id)
	return id, true, nil
}

// Watermark is the device's highest committed seq; 0 when unknown.
func (s *Store) Watermark(ctx context.Context, device string) (uint64, error) {
	if err := s.ready(); err != nil {
		return 0, err
	}
	var seq int64
	err := s.pool.QueryRow(ctx, `SELECT acked_seq FROM devices WHERE device = $1`, device).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read watermark of %s: %w", device, err)
	}
	return uint64(seq), nil
}

// mod is the non-negative remainder, so readings before 1970 still land in
// the right hour.
func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
