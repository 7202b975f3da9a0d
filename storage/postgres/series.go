package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-iot/meridian/storage"
)

// maxSeriesPoints bounds one series answer (a dashboard is a few thousand
// pixels wide).
const maxSeriesPoints = 10000

// niceBuckets are the widths a downsampled series uses, so bucket edges fall
// on round times.
var niceBuckets = []time.Duration{
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
	24 * time.Hour, 2 * 24 * time.Hour, 7 * 24 * time.Hour, 14 * 24 * time.Hour, 30 * 24 * time.Hour,
}

// Series returns raw points when at most req.Points exist in the range;
// otherwise buckets of a round width (at most req.Points of them) computed
// from telemetry_1m or telemetry_1h, plus raw readings newer than the last
// rollup refresh so the right edge of a chart is never stale.
func (s *Store) Series(ctx context.Context, req storage.SeriesRequest) (storage.Series, error) {
	out := storage.Series{Device: req.Device, Metric: req.Metric, Source: "raw", Points: []storage.SeriesPoint{}}
	if err := s.ready(); err != nil {
		return out, err
	}
	switch {
	case req.Points <= 0 || req.Points > maxSeriesPoints:
		return out, fmt.Errorf("series: points must be 1..%d, got %d", maxSeriesPoints, req.Points)
	case !req.From.Before(req.To):
		return out, fmt.Errorf("series: from (%s) must be before to (%s)", req.From.Format(time.RFC3339), req.To.Format(time.RFC3339))
	}
	devID, ok, err := s.lookupName(ctx, &s.deviceIDs, deviceNames, req.Device)
	if err != nil || !ok {
		return out, wrapSeries(err)
	}
	metricID, ok, err := s.lookupName(ctx, &s.metricIDs, metricNames, req.Metric)
	if err != nil || !ok {
		return out, wrapSeries(err)
	}

	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (
			SELECT 1 FROM readings WHERE device_id = $1 AND metric_id = $2 AND time >= $3 AND time < $4 LIMIT $5) r`,
		devID, metricID, req.From, req.To, req.Points+1).Scan(&n); err != nil {
		return out, wrapSeries(err)
	}
	if n <= req.Points {
		return s.rawSeries(ctx, out, devID, metricID, req)
	}

	width, srcWidth, from := pickBucket(req)
	out.Bucket = width
	query := seriesFrom1m
	switch srcWidth {
	case time.Hour:
		out.Source, query = "1h", seriesFrom1h
	case time.Minute:
		out.Source = "1m"
	default:
		// Narrower than a minute: buckets straight from raw readings.
		out.Source = "raw"
	}
	// Rollups are complete up to the last refresh; raw readings cover the
	// rest. TimescaleDB's real-time aggregates would too, but only from
	// their watermark, which can sit inside a bucket that got readings after
	// it was materialized; the cut is exact in both modes.
	cut := from
	if srcWidth >= time.Minute {
		var refreshed *time.Time
		if err := s.pool.QueryRow(ctx, `SELECT refreshed_to FROM rollup_progress`).Scan(&refreshed); err != nil {
			return out, wrapSeries(err)
		}
		if refreshed != nil {
			cut = refreshed.Truncate(srcWidth)
			if cut.After(req.To) {
				cut = req.To
			}
			if cut.Before(from) {
				cut = from
			}
		}
	}
	rawWidth := max(srcWidth, time.Second)
	rows, err := s.pool.Query(ctx, query, devID, metricID, from, req.To, cut, rawWidth, width)
	if err != nil {
		return out, wrapSeries(err)
	}
	defer rows.Close()
	for rows.Next() {
		var p storage.SeriesPoint
		if err := rows.Scan(&p.Time, &p.Min, &p.Max, &p.Avg, &p.Last, &p.Count); err != nil {
			return out, wrapSeries(err)
		}
		out.Points = append(out.Points, p)
	}
	return out, wrapSeries(rows.Err())
}

// Both queries take: $1 device_id, $2 metric_id, $3 aligned from, $4 to,
// $5 cut (rollup below, raw from there), $6 width of the raw part's buckets,
// $7 output bucket width.
const (
	seriesFrom1m = `WITH src AS (
		SELECT bucket AS t, min, max, avg, count, last FROM rollup_1m
		WHERE device_id = $1 AND metric_id = $2 AND bucket >= $3 AND bucket < $5
		UNION ALL
		SELECT date_bin($6::interval, time, $3), min(value), max(value), avg(value), count(*), (array_agg(value ORDER BY time DESC))[1]
		FROM readings
		WHERE device_id = $1 AND metric_id = $2 AND time >= $5 AND time < $4
		GROUP BY 1)
	SELECT date_bin($7::interval, t, $3) AS b, min(min), max(max), sum(avg * count) / sum(count),
	       (array_agg(last ORDER BY t DESC))[1], sum(count)::bigint
	FROM src GROUP BY 1 ORDER BY 1`
	seriesFrom1h = `WITH src AS (
		SELECT bucket AS t, min, max, avg, count, last FROM rollup_1h
		WHERE device_id = $1 AND metric_id = $2 AND bucket >= $3 AND bucket < $5
		UNION ALL
		SELECT date_bin($6::interval, time, $3), min(value), max(value), avg(value), count(*), (array_agg(value ORDER BY time DESC))[1]
		FROM readings
		WHERE device_id = $1 AND metric_id = $2 AND time >= $5 AND time < $4
		GROUP BY 1)
	SELECT date_bin($7::interval, t, $3) AS b, min(min), max(max), sum(avg * count) / sum(count),
	       (array_agg(last ORDER BY t DESC))[1], sum(count)::bigint
	FROM src GROUP BY 1 ORDER BY 1`
)

func (s *Store) rawSeries(ctx context.Context, out storage.Series, devID, metricID int32, req storage.SeriesRequest) (storage.Series, error) {
	rows, err := s.pool.Query(ctx, `SELECT time, value FROM readings
		WHERE device_id = $1 AND metric_id = $2 AND time >= $3 AND time < $4 ORDER BY time`,
		devID, metricID, req.From, req.To)
	if err != nil {
		return out, wrapSeries(err)
	}
	defer rows.Close()
	for rows.Next() {
		var p storage.SeriesPoint
		if err := rows.Scan(&p.Time, &p.Avg); err != nil {
			return out, wrapSeries(err)
		}
		p.Min, p.Max, p.Last, p.Count = p.Avg, p.Avg, p.Avg, 1
		out.Points = append(out.Points, p)
	}
	return out, wrapSeries(rows.Err())
}

// pickBucket chooses the output bucket width (the narrowest round width
// giving at most req.Points buckets), the source granularity it is built
// from (1h, 1m, or for sub-minute widths the width itself over raw data) and
// the start aligned to that granularity.
func pickBucket(req storage.SeriesRequest) (width, src time.Duration, from time.Time) {
	fits := func(w, src time.Duration) (time.Time, bool) {
		f := req.From.Truncate(src)
		n := (req.To.Sub(f) + w - 1) / w
		return f, n <= time.Duration(req.Points)
	}
	span := req.To.Sub(req.From)
	if raw := ceilDur(span/time.Duration(req.Points)+1, time.Second); raw < time.Minute {
		if f, ok := fits(raw, raw); ok {
			return raw, raw, f
		}
	}
	for _, w := range niceBuckets {
		src := time.Minute
		if w%time.Hour == 0 {
			src = time.Hour
		}
		if f, ok := fits(w, src); ok {
			return w, src, f
		}
	}
	// Very long ranges: whole hours, enough of them.
	f := req.From.Truncate(time.Hour)
	w := ceilDur(req.To.Sub(f)/time.Duration(req.Points)+1, time.Hour)
	return w, time.Hour, f
}

func ceilDur(d, unit time.Duration) time.Duration {
	return (d + unit - 1) / unit * unit
}

func wrapSeries(err error) error {
	if err == nil || errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	return fmt.Errorf("series: %w", err)
}
