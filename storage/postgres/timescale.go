package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// TimescaleDB-only housekeeping. Nothing here can be exercised on a server
// without the extension, so every statement is kept to documented
// TimescaleDB 2.x API, and Maintain does by hand what the policies would do,
// because the job scheduler is not reliable on every build (see issue 3).

// applyTimescalePolicies sets the configuration-dependent parts of the
// hypertable: chunk interval and the compression, retention and refresh
// policies. Policies are replaced on each start so configuration changes
// take effect; they are idempotent across nodes under the setup lock.
func (s *Store) applyTimescalePolicies(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Release()
	_, err = withAdvisoryLock(ctx, conn.Conn(), setupLockID, true, func() error {
		return s.applyTimescalePoliciesLocked(ctx, conn.Conn())
	})
	if err != nil {
		return fmt.Errorf("setup lock: %w", err)
	}
	return nil
}

// applyTimescalePoliciesLocked is applyTimescalePolicies under the setup lock.
func (s *Store) applyTimescalePoliciesLocked(ctx context.Context, conn *pgx.Conn) error {
	type step struct {
		what string
		sql  string
		args []any
	}
	steps := []step{
		{"set chunk interval", `SELECT set_chunk_time_interval('readings', $1::interval)`, []any{s.cfg.ChunkInterval}},
		{"remove compression policy", `SELECT remove_compression_policy('readings', if_exists => true)`, nil},
		{"remove retention policy", `SELECT remove_retention_policy('readings', if_exists => true)`, nil},
		{"remove 1m rollup retention", `SELECT remove_retention_policy('rollup_1m', if_exists => true)`, nil},
		{"remove 1h rollup retention", `SELECT remove_retention_policy('rollup_1h', if_exists => true)`, nil},
		{"remove 1m refresh policy", `SELECT remove_continuous_aggregate_policy('rollup_1m', if_exists => true)`, nil},
		{"remove 1h refresh policy", `SELECT remove_continuous_aggregate_policy('rollup_1h', if_exists => true)`, nil},
		// Refresh policies cover the same recent window Maintain does; late
		// data beyond it is refreshed by Maintain from rollup_dirty. The end
		// offset of one bucket leaves the bucket still filling to real-time
		// aggregation (see maintainTimescale); TimescaleDB wants a policy
		// window of at least two buckets.
		{"add 1m refresh policy", `SELECT add_continuous_aggregate_policy('rollup_1m',
			start_offset => $1::interval, end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute')`, []any{2 * rollupWindow}},
		{"add 1h refresh policy", `SELECT add_continuous_aggregate_policy('rollup_1h',
			start_offset => $1::interval, end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes')`, []any{2*rollupWindow + 3*time.Hour}},
	}
	if s.cfg.CompressAfter > 0 {
		steps = append(steps, step{"add compression policy", `SELECT add_compression_policy('readings', $1::interval)`, []any{s.cfg.CompressAfter}})
	}
	if r := s.cfg.Retention.Raw; r > 0 {
		steps = append(steps, step{"add retention policy", `SELECT add_retention_policy('readings', $1::interval)`, []any{r}})
	}
	if r := s.cfg.Retention.Rollups; r > 0 {
		steps = append(steps,
			step{"add 1m rollup retention", `SELECT add_retention_policy('rollup_1m', $1::interval)`, []any{r}},
			step{"add 1h rollup retention", `SELECT add_retention_policy('rollup_1h', $1::interval)`, []any{r}})
	}
	for _, st := range steps {
		if _, err := conn.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("timescaledb: %s: %w", st.what, err)
		}
	}
	return nil
}

// caggs are the continuous aggregates and their bucket widths.
var caggs = []struct {
	view  string
	width time.Duration
}{
	{"rollup_1m", time.Minute},
	{"rollup_1h", time.Hour},
}

// sqlLockNotAvailable is what TimescaleDB raises when a refresh overlaps one
// already running on the same continuous aggregate (a refresh policy, or
// another node's Maintain).
const sqlLockNotAvailable = "55P03"

// More SQLSTATEs of concurrent maintenance: compress_chunk on a chunk that
// another session compressed meanwhile, a chunk dropped meanwhile.
const (
	sqlDuplicateObject = "42710"
	sqlUndefinedTable  = "42P01"
)

// errRefreshBusy: a refresh was skipped because another one covers an
// overlapping window right now; the next Maintain retries it.
var errRefreshBusy = errors.New("continuous aggregate refresh already running")

// maintainTimescale is Maintain for TimescaleDB mode: refresh the continuous
// aggregates over the dirty hours and the recent window, then compress and
// drop chunks.
//
// Only complete buckets (before now) are materialized. The aggregates are
// real-time (materialized_only = false): buckets from the watermark (the
// end of the last materialized bucket) on are computed from readings at
// query time, so a bucket still filling must stay above the watermark or
// readings arriving after the refresh would not show until the next one.
//
// refresh_continuous_aggregate refuses to run inside a transaction block, so
// these run as single simple-protocol statements.
func (s *Store) maintainTimescale(ctx context.Context, conn *pgx.Conn, now time.Time) error {
	rawCutoff := time.Time{}
	if r := s.cfg.Retention.Raw; r > 0 {
		rawCutoff = now.Add(-r)
	}
	mat1m, err := materializedTable(ctx, conn, "rollup_1m")
	if err != nil {
		return err
	}
	refresh := func(lo, hi time.Time, expired bool) error {
		return s.refreshCaggs(ctx, conn, mat1m, now, lo, hi, expired)
	}
	if err := s.refreshDirty(ctx, conn, rawCutoff, refresh); err != nil {
		return err
	}
	from, err := s.windowStart(ctx, conn, now, rawCutoff)
	if err != nil {
		return err
	}
	switch err := refresh(from, now, false); {
	case errors.Is(err, errRefreshBusy):
		// Progress stays where it was, so the next window starts earlier
		// and covers what was skipped.
	case err != nil:
		return err
	default:
		if err := s.setRefreshedTo(ctx, conn, now); err != nil {
			return err
		}
	}
	if s.cfg.CompressAfter > 0 {
		if err := s.compressChunks(ctx, conn, now.Add(-s.cfg.CompressAfter)); err != nil {
			return err
		}
	}
	return s.dropExpiredChunks(ctx, conn, now, rawCutoff)
}

// refreshCaggs refreshes the continuous aggregates over [lo, hi), each
// widened to whole buckets and cut at its last complete bucket before now.
// expired says raw chunks of the range may have been dropped (mat1m is the
// 1m aggregate's materialized table). A refresh that overlaps one already
// running is skipped and reported as errRefreshBusy after the others ran.
func (s *Store) refreshCaggs(ctx context.Context, conn *pgx.Conn, mat1m string, now, lo, hi time.Time, expired bool) error {
	if !lo.Before(hi) {
		return nil
	}
	if expired {
		// Refreshing where raw chunks were dropped would empty the
		// buckets; only fill hours that were never materialised. Ask
		// the materialized table: the view's real-time part would
		// answer from the very readings not yet rolled up.
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+mat1m+` WHERE bucket >= $1 AND bucket < $2)`, lo, hi).Scan(&exists); err != nil {
			return fmt.Errorf("check rollups [%s, %s): %w", lo.Format(time.RFC3339), hi.Format(time.RFC3339), err)
		}
		if exists {
			return nil
		}
	}
	busy := false
	for _, c := range caggs {
		l, h := lo.Truncate(c.width), ceilTo(hi, c.width)
		if end := now.Truncate(c.width); h.After(end) {
			h = end
		}
		if !l.Before(h) {
			continue
		}
		_, err := conn.Exec(ctx, `CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)`,
			pgx.QueryExecModeSimpleProtocol, c.view, l, h)
		if isCode(err, sqlLockNotAvailable) {
			s.log.Info("continuous aggregate refresh skipped, another refresh is running", "view", c.view,
				"from", l, "to", h, "err", err)
			busy = true
			continue
		}
		if err != nil {
			return fmt.Errorf("refresh %s [%s, %s): %w", c.view, l.Format(time.RFC3339), h.Format(time.RFC3339), err)
		}
	}
	if busy {
		return errRefreshBusy
	}
	return nil
}

// dropExpiredChunks drops the readings chunks older than rawCutoff (none
// when it is zero) and the rollup chunks past rollup retention.
func (s *Store) dropExpiredChunks(ctx context.Context, conn *pgx.Conn, now, rawCutoff time.Time) error {
	if !rawCutoff.IsZero() {
		_, err := conn.Exec(ctx, `SELECT drop_chunks('readings', older_than => $1::timestamptz)`,
			pgx.QueryExecModeSimpleProtocol, rawCutoff)
		if err := s.skipBusy(err, "drop raw chunks"); err != nil {
			return fmt.Errorf("drop raw chunks: %w", err)
		}
	}
	if r := s.cfg.Retention.Rollups; r > 0 {
		for _, c := range caggs {
			_, err := conn.Exec(ctx, `SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)`,
				pgx.QueryExecModeSimpleProtocol, c.view, now.Add(-r))
			if err := s.skipBusy(err, "drop "+c.view+" chunks"); err != nil {
				return fmt.Errorf("drop %s chunks: %w", c.view, err)
			}
		}
	}
	return nil
}

// compressChunks compresses the readings chunks wholly older than before,
// and recompresses those that late inserts left partly uncompressed, one
// chunk per statement so no transaction holds many chunk locks. A chunk the
// compression policy is working on is left to it.
func (s *Store) compressChunks(ctx context.Context, conn *pgx.Conn, before time.Time) error {
	rows, err := conn.Query(ctx, `SELECT c::text FROM show_chunks('readings', older_than => $1::timestamptz) c`, before)
	if err != nil {
		return fmt.Errorf("list chunks to compress: %w", err)
	}
	chunks, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list chunks to compress: %w", err)
	}
	for _, c := range chunks {
		// A fully compressed chunk only draws a NOTICE.
		_, err := conn.Exec(ctx, `SELECT compress_chunk($1::regclass, if_not_compressed => true)`,
			pgx.QueryExecModeSimpleProtocol, c)
		if isCode(err, sqlDuplicateObject) || isCode(err, sqlUndefinedTable) {
			// Compressed (or dropped) by another session since it was listed.
			continue
		}
		if err := s.skipBusy(err, "compress chunk "+c); err != nil {
			return fmt.Errorf("compress chunk %s: %w", c, err)
		}
	}
	return nil
}

// skipBusy returns nil for an error that means another session (a
// TimescaleDB policy job, usually) holds what this step needs right now,
// after logging it: the next Maintain does what is left.
func (s *Store) skipBusy(err error, what string) error {
	if isCode(err, sqlLockNotAvailable) {
		s.log.Info("maintenance step skipped, another session is busy with it", "step", what, "err", err)
		return nil
	}
	return err
}

// materializedTable returns the quoted name of the hypertable holding a
// continuous aggregate's materialized buckets.
func materializedTable(ctx context.Context, q querier, view string) (string, error) {
	var schema, table string
	if err := q.QueryRow(ctx, `SELECT materialization_hypertable_schema, materialization_hypertable_name
		FROM timescaledb_information.continuous_aggregates
		WHERE view_schema = current_schema() AND view_name = $1`, view).Scan(&schema, &table); err != nil {
		return "", fmt.Errorf("find materialized table of %s: %w", view, err)
	}
	return pgx.Identifier{schema, table}.Sanitize(), nil
}
