package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/storage"
)

const (
	// rollupWindow is how far back each Maintain recomputes rollups from
	// where the previous one stopped, to catch on-time readings whose
	// commit raced the previous refresh.
	rollupWindow = 10 * time.Minute
	// lateAfter: a reading older than this at commit time may land in a
	// bucket already refreshed, so Commit marks its hour dirty. Half the
	// window leaves margin for clock skew between nodes.
	lateAfter = rollupWindow / 2

	maintainLockID int64 = 0x6d65726964690002 // "meridi" + 2
)

// rollupOrigin aligns date_bin buckets to UTC minutes and hours.
var rollupOrigin = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Maintain creates partitions ahead, refreshes rollups (the recent window
// and every hour dirtied by late data) and applies retention, as of now.
// Only one node maintains at a time; the others return nil at once.
// Call it about once a minute.
func (s *Store) Maintain(ctx context.Context, now time.Time) error {
	if err := s.ready(); err != nil {
		return err
	}
	now = now.UTC()
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("maintain: connect: %w", err)
	}
	defer pc.Release()
	conn := pc.Conn()
	// Another node maintaining right now does the same work: skip.
	_, err = withAdvisoryLock(ctx, conn, maintainLockID, false, func() error {
		if s.Mode() == storage.ModeTimescale {
			return s.maintainTimescale(ctx, conn, now)
		}
		return s.maintainPlain(ctx, conn, now)
	})
	if err != nil {
		return fmt.Errorf("maintain: %w", err)
	}
	return nil
}

func (s *Store) maintainPlain(ctx context.Context, conn *pgx.Conn, now time.Time) error {
	if _, err := conn.Exec(ctx, `SELECT meridian_ensure_partitions($1::date, $2)`, now, s.cfg.PartitionsAhead); err != nil {
		return fmt.Errorf("create partitions: %w", err)
	}
	var rawCutoff time.Time
	if r := s.cfg.Retention.Raw; r > 0 {
		rawCutoff = now.Add(-r)
	}
	refresh := func(lo, hi time.Time, expired bool) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return refreshPlain(ctx, tx, lo, hi, expired) })
	}
	// Rollups before retention: dirty hours about to expire are rolled up
	// while their raw rows still exist.
	if err := s.refreshDirty(ctx, conn, rawCutoff, refresh); err != nil {
		return err
	}
	from, err := s.windowStart(ctx, conn, now, rawCutoff)
	if err != nil {
		return err
	}
	if from.Before(now) {
		if err := refresh(from, now, false); err != nil {
			return err
		}
	}
	if err := s.setRefreshedTo(ctx, conn, now); err != nil {
		return err
	}
	if !rawCutoff.IsZero() {
		if _, err := conn.Exec(ctx, `SELECT meridian_drop_partitions($1)`, rawCutoff); err != nil {
			return fmt.Errorf("drop expired readings: %w", err)
		}
	}
	if r := s.cfg.Retention.Rollups; r > 0 {
		cut := now.Add(-r)
		for _, q := range []string{`DELETE FROM rollup_1m WHERE bucket < $1`, `DELETE FROM rollup_1h WHERE bucket < $1`} {
			if _, err := conn.Exec(ctx, q, cut); err != nil {
				return fmt.Errorf("expire rollups: %w", err)
			}
		}
	}
	return nil
}

// refreshPlain recomputes the 1m buckets covering [lo, hi) from readings and
// the 1h buckets covering it from the 1m rollup. For a range past raw
// retention (expired) it only adds 1m buckets that do not exist yet: raw
// rows there may be partly dropped, and recomputing would replace good
// buckets with ones built from what is left.
func refreshPlain(ctx context.Context, tx pgx.Tx, lo, hi time.Time, expired bool) error {
	lo1m, hi1m := lo.Truncate(time.Minute), ceilTo(hi, time.Minute)
	lo1h, hi1h := lo.Truncate(time.Hour), ceilTo(hi, time.Hour)
	type step struct {
		sql  string
		args []any
	}
	var steps []step
	if !expired {
		steps = append(steps, step{`DELETE FROM rollup_1m WHERE bucket >= $1 AND bucket < $2`, []any{lo1m, hi1m}})
	}
	steps = append(steps, []step{
		{`INSERT INTO rollup_1m (bucket, device_id, metric_id, min, max, avg, count, last)
		  SELECT date_bin('1 minute', time, $3), device_id, metric_id,
		         min(value), max(value), avg(value), count(*), (array_agg(value ORDER BY time DESC))[1]
		  FROM readings WHERE time >= $1 AND time < $2
		  GROUP BY 1, 2, 3
		  ON CONFLICT DO NOTHING`, []any{lo1m, hi1m, rollupOrigin}},
		{`DELETE FROM rollup_1h WHERE bucket >= $1 AND bucket < $2`, []any{lo1h, hi1h}},
		{`INSERT INTO rollup_1h (bucket, device_id, metric_id, min, max, avg, count, last)
		  SELECT date_bin('1 hour', bucket, $3), device_id, metric_id,
		         min(min), max(max), sum(avg * count) / sum(count), sum(count), (array_agg(last ORDER BY bucket DESC))[1]
		  FROM rollup_1m WHERE bucket >= $1 AND bucket < $2
		  GROUP BY 1, 2, 3`, []any{lo1h, hi1h, rollupOrigin}},
	}...)
	for _, st := range steps {
		if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("refresh rollups [%s, %s): %w", lo.Format(time.RFC3339), hi.Format(time.RFC3339), err)
		}
	}
	return nil
}

// refreshDirty refreshes every hour marked by late commits, in contiguous
// runs, and clears exactly the marks it acted on: a mark re-set by a commit
// meanwhile has a new gen and survives for the next Maintain. Hours before
// the raw retention cutoff are refreshed with expired set (see the refresh
// functions), so late rows there do not wipe rollups of dropped raw data.
// A run whose refresh reports errRefreshBusy keeps its marks for the next
// Maintain.
func (s *Store) refreshDirty(ctx context.Context, conn *pgx.Conn, rawCutoff time.Time, refresh func(lo, hi time.Time, expired bool) error) error {
	rows, err := conn.Query(ctx, `SELECT hour, gen FROM rollup_dirty ORDER BY hour`)
	if err != nil {
		return fmt.Errorf("read dirty hours: %w", err)
	}
	var hours []time.Time
	var gens []int64
	for rows.Next() {
		var h time.Time
		var g int64
		if err := rows.Scan(&h, &g); err != nil {
			rows.Close()
			return fmt.Errorf("read dirty hours: %w", err)
		}
		hours, gens = append(hours, h), append(gens, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read dirty hours: %w", err)
	}
	if len(hours) == 0 {
		return nil
	}
	// A run is hours[start:i]: contiguous, all expired or all not.
	var clearHours []time.Time
	var clearGens []int64
	start := 0
	flush := func(end int) error {
		if start == end {
			return nil
		}
		expired := !rawCutoff.IsZero() && hours[start].Before(rawCutoff)
		err := refresh(hours[start], hours[end-1].Add(time.Hour), expired)
		switch {
		case errors.Is(err, errRefreshBusy):
			// Keep the marks: the next Maintain tries again.
		case err != nil:
			return err
		default:
			clearHours = append(clearHours, hours[start:end]...)
			clearGens = append(clearGens, gens[start:end]...)
		}
		start = end
		return nil
	}
	for i := 1; i < len(hours); i++ {
		prevExpired := !rawCutoff.IsZero() && hours[i-1].Before(rawCutoff)
		expired := !rawCutoff.IsZero() && hours[i].Before(rawCutoff)
		if hours[i].Equal(hours[i-1].Add(time.Hour)) && expired == prevExpired {
			continue
		}
		if err := flush(i); err != nil {
			return err
		}
	}
	if err := flush(len(hours)); err != nil {
		return err
	}
	if len(clearHours) == 0 {
		return nil
	}
	if _, err := conn.Exec(ctx, `DELETE FROM rollup_dirty d
		USING unnest($1::timestamptz[], $2::bigint[]) AS m(hour, gen)
		WHERE d.hour = m.hour AND d.gen = m.gen`, clearHours, clearGens); err != nil {
		return fmt.Errorf("clear dirty hours: %w", err)
	}
	return nil
}

// windowStart is where this Maintain's periodic refresh begins: a window
// before where the last one stopped (or before now, when now went back),
// never before the raw retention cutoff.
func (s *Store) windowStart(ctx context.Context, conn *pgx.Conn, now, rawCutoff time.Time) (time.Time, error) {
	var last *time.Time
	if err := conn.QueryRow(ctx, `SELECT refreshed_to FROM rollup_progress`).Scan(&last); err != nil {
		return time.Time{}, fmt.Errorf("read rollup progress: %w", err)
	}
	from := now
	if last != nil && last.Before(now) {
		from = *last
	}
	from = from.Add(-rollupWindow)
	if !rawCutoff.IsZero() && from.Before(rawCutoff) {
		from = rawCutoff
	}
	return from.UTC(), nil
}

func (s *Store) setRefreshedTo(ctx context.Context, conn *pgx.Conn, now time.Time) error {
	if _, err := conn.Exec(ctx, `UPDATE rollup_progress SET refreshed_to = $1`, now); err != nil {
		return fmt.Errorf("record rollup progress: %w", err)
	}
	return nil
}

func ceilTo(t time.Time, d time.Duration) time.Time {
	if tr := t.Truncate(d); !tr.Equal(t) {
		return tr.Add(d)
	}
	return t
}
