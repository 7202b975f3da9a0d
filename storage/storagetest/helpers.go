package storagetest

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// testTimeout bounds every call the suite makes, so a hung backend fails the
// test instead of stalling CI until the global timeout.
const testTimeout = 60 * time.Second

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// baseTime is the suite's "now": an hour boundary at least an hour in the
// past, so every reading the suite writes is older than the wall clock (a
// backend may treat such readings as late data) and hour buckets are
// predictable.
func baseTime() time.Time {
	return time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// readingsAt makes n readings of one metric starting at start, step apart,
// with values from f.
func readingsAt(metric string, start time.Time, step time.Duration, n int, f func(i int) float64) []telemetry.Reading {
	out := make([]telemetry.Reading, n)
	for i := range out {
		out[i] = telemetry.Reading{Time: ms(start.Add(time.Duration(i) * step)), Metric: metric, Value: f(i)}
	}
	return out
}

func mustCommit(t *testing.T, b Backend, batches ...telemetry.Batch) []telemetry.Outcome {
	t.Helper()
	out, err := b.Commit(ctxFor(t), batches)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(out) != len(batches) {
		t.Fatalf("Commit returned %d outcomes for %d batches", len(out), len(batches))
	}
	return out
}

func mustQuery(t *testing.T, b Backend, sql string) storage.QueryResult {
	t.Helper()
	res, err := b.Query(ctxFor(t), sql, storage.QueryOptions{})
	if err != nil {
		t.Fatalf("Query(%q): %v", sql, err)
	}
	return res
}

// scalarInt runs a query returning one integer cell.
func scalarInt(t *testing.T, b Backend, sql string) int64 {
	t.Helper()
	res := mustQuery(t, b, sql)
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		t.Fatalf("Query(%q): want 1x1 result, got %d rows %v", sql, len(res.Rows), res.Rows)
	}
	v, err := asInt(res.Rows[0][0])
	if err != nil {
		t.Fatalf("Query(%q): %v", sql, err)
	}
	return v
}

func countRows(t *testing.T, b Backend, device string) int64 {
	t.Helper()
	return scalarInt(t, b, fmt.Sprintf("SELECT count(*) FROM telemetry WHERE device = '%s'", device))
}

func mustWatermark(t *testing.T, b Backend, device string) uint64 {
	t.Helper()
	wm, err := b.Watermark(ctxFor(t), device)
	if err != nil {
		t.Fatalf("Watermark(%s): %v", device, err)
	}
	return wm
}

// The converters below accept every representation the QueryResult contract
// allows for a column, so the suite checks meaning rather than one backend's
// choice of Go type.

func asInt(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case int:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case float64:
		if x == math.Trunc(x) {
			return int64(x), nil
		}
	case string:
		return strconv.ParseInt(x, 10, 64)
	}
	return 0, fmt.Errorf("value %v (%T) is not an integer", v, v)
}

func asFloat(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case float32:
		return float64(x), nil
	case int64:
		return float64(x), nil
	case int:
		return float64(x), nil
	case string:
		return strconv.ParseFloat(x, 64)
	}
	return 0, fmt.Errorf("value %v (%T) is not a number", v, v)
}

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
}

func asTime(v any) (time.Time, error) {
	switch x := v.(type) {
	case time.Time:
		return x, nil
	case int64: // unix milliseconds
		return time.UnixMilli(x).UTC(), nil
	case string:
		for _, l := range timeLayouts {
			if tm, err := time.Parse(l, x); err == nil {
				return tm, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("value %v (%T) is not a time", v, v)
}

func asString(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	}
	return "", fmt.Errorf("value %v (%T) is not a string", v, v)
}

func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}
