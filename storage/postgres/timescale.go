package postgres

import (
	"context"
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
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, setupLockID); err != nil {
		return fmt.Errorf("take setup lock: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, setupLockID); err != nil {
			conn.Conn().Close(uctx)
		}
	}()
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
		// data beyond it is refreshed by Maintain from rollup_dirty.
		{"add 1m refresh policy", `SELECT add_continuous_aggregate_policy('rollup_1m',
			start_offset => $1::interval, end_offset => NULL, schedule_interval => INTERVAL '1 minute')`, []any{2 * rollupWindow}},
		{"add 1h refresh policy", `SELECT add_continuous_aggregate_policy('rollup_1h',
			start_offset => $1::interval, end_offset => NULL, schedule_interval => INTERVAL '5 minutes')`, []any{2*rollupWindow + 2*time.Hour}},
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

// maintainTimescale is Maintain for TimescaleDB mode: refresh the continuous
// aggregates over the recent window and the dirty hours, then compress and
// drop chunks. refresh_continuous_aggregate refuses to run inside a
// transaction block, so these run as single simple-protocol statements.
func (s *Store) maintainTimescale(ctx context.Context, conn *pgx.Conn, now time.Time) error {
	rawCutoff := time.Time{}
	if r := s.cfg.Retention.Raw; r > 0 {
		rawCutoff = now.Add(-r)
	}
	refresh := func(lo, hi time.Time, expired bool) error {
		if !lo.Before(hi) {
			return nil
		}
		if expired {
			// Refreshing where raw chunks were dropped would empty the
			// buckets; only fill hours that were never materialised.
			var exists bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rollup_1m WHERE bucket >= $1 AND bucket < $2)`, lo, hi).Scan(&exists); err != nil {
				return fmt.Errorf("check rollups [%s, %s): %w", lo.Format(time.RFC3339), hi.Format(time.RFC3339), err)
			}
			if exists {
				return nil
			}
		}
		for _, view := range []string{"rollup_1m", "rollup_1h"} {
			if _, err := conn.Exec(ctx, `CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)`,
				pgx.QueryExecModeSimpleProtocol, view, lo, hi); err != nil {
				return fmt.Errorf("refresh %s [%s, %s): %w", view, lo.Format(time.RFC3339), hi.Format(time.RFC3339), err)
			}
		}
		return nil
	}
	if err := s.refreshDirty(ctx, conn, rawCutoff, refresh); err != nil {
		return err
	}
	from, err := s.windowStart(ctx, conn, now, rawCutoff)
	if err != nil {
		return err
	}
	// Whole hours so the 1h aggregate's buckets are inside the window.
	if err := refresh(from.Truncate(time.Hour), now.Truncate(time.Hour).Add(time.Hour), false); err != nil {
		return err
	}
	if err := s.setRefreshedTo(ctx, conn, now); err != nil {
		return err
	}
	if s.cfg.CompressAfter > 0 {
		if _, err := conn.Exec(ctx, `SELECT compress_chunk(c, if_not_compressed => true)
			FROM show_chunks('readings', older_than => $1::timestamptz) c`,
			pgx.QueryExecModeSimpleProtocol, now.Add(-s.cfg.CompressAfter)); err != nil {
			return fmt.Errorf("compress chunks: %w", err)
		}
	}
	if !rawCutoff.IsZero() {
		if _, err := conn.Exec(ctx, `SELECT drop_chunks('readings', older_than => $1::timestamptz)`,
			pgx.QueryExecModeSimpleProtocol, rawCutoff); err != nil {
			return fmt.Errorf("drop raw chunks: %w", err)
		}
	}
	if r := s.cfg.Retention.Rollups; r > 0 {
		for _, view := range []string{"rollup_1m", "rollup_1h"} {
			if _, err := conn.Exec(ctx, `SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)`,
				pgx.QueryExecModeSimpleProtocol, view, now.Add(-r)); err != nil {
				return fmt.Errorf("drop %s chunks: %w", view, err)
			}
		}
	}
	return nil
}
