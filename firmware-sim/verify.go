package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// QueryFunc runs one read-only SQL statement against the store and returns
// all its rows, values as database/sql-ish Go values (string, int64,
// float64, time.Time; JSON-decoded strings and numbers are accepted too). It
// must fail rather than return a truncated result.
type QueryFunc func(ctx context.Context, sql string) ([][]any, error)

// VerifyResult is the outcome of checking the ledger against the store.
type VerifyResult struct {
	Pass bool `json:"pass"`
	Counts
	// Details names the first failures (a few per failing device).
	Details []string `json:"details,omitempty"`
}

// String is the one-paragraph human summary.
func (r VerifyResult) String() string {
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	c := r.Counts
	s := fmt.Sprintf("verify %s: %d devices, %d readings sent, %d acked and required, %d stored exactly once, %d rejected on purpose (absent: %d)\n"+
		"  missing %d, duplicated %d, phantom %d, rejected stored %d, value mismatch %d, superseded %d, partial batches %d, ambiguous %d, ack mismatch %d\n"+
		"  unacked but stored %d, rows from before this run %d",
		verdict, c.Devices, c.Sent, c.Required, c.Stored, c.Rejected, c.Rejected-c.RejectedStored,
		c.Missing, c.Duplicated, c.Phantom, c.RejectedStored, c.ValueMismatch, c.Superseded, c.PartialBatches, c.AmbiguousFailed, c.AckMismatch,
		c.OptionalStored, c.Ignored)
	for _, d := range r.Details {
		s += "\n  " + d
	}
	return s
}

// verifyChunk is how many devices one query covers: big enough that a
// 19,000-device fleet takes a few hundred queries, small enough that one
// answer (devices x readings) stays a modest allocation.
const verifyChunk = 50

// Verify reads back every device of the ledger through q (the telemetry
// view, docs/sql.md) and checks it against what was sent and acked.
func Verify(ctx context.Context, q QueryFunc, l *Ledger) (VerifyResult, error) {
	var res VerifyResult
	ids := l.IDs()
	for start := 0; start < len(ids); start += verifyChunk {
		chunk := ids[start:min(start+verifyChunk, len(ids))]
		quoted := make([]string, len(chunk))
		for i, id := range chunk {
			quoted[i] = "'" + strings.ReplaceAll(id, "'", "''") + "'"
		}
		sql := "SELECT device, metric, time, value FROM telemetry WHERE device IN (" + strings.Join(quoted, ", ") + ")"
		rows, err := q(ctx, sql)
		if err != nil {
			return res, fmt.Errorf("read back devices %s..%s: %w", chunk[0], chunk[len(chunk)-1], err)
		}
		byDev := make(map[string][]Row, len(chunk))
		for i, r := range rows {
			row, dev, err := parseRow(r)
			if err != nil {
				return res, fmt.Errorf("row %d of devices %s..: %w", i, chunk[0], err)
			}
			byDev[dev] = append(byDev[dev], row)
		}
		for _, id := range chunk {
			c, detail := l.Device(id).Check(byDev[id])
			res.Counts.add(c)
			for _, d := range detail {
				if len(res.Details) < 20 {
					res.Details = append(res.Details, id+": "+d)
				}
			}
		}
	}
	res.Pass = !res.Counts.Failed()
	return res, nil
}

func parseRow(r []any) (Row, string, error) {
	if len(r) != 4 {
		return Row{}, "", fmt.Errorf("want 4 columns, got %d", len(r))
	}
	dev, ok1 := r[0].(string)
	metric, ok2 := r[1].(string)
	if !ok1 || !ok2 {
		return Row{}, "", fmt.Errorf("device and metric must be strings, got %T and %T", r[0], r[1])
	}
	t, err := toMillis(r[2])
	if err != nil {
		return Row{}, "", fmt.Errorf("time: %w", err)
	}
	v, err := toFloat(r[3])
	if err != nil {
		return Row{}, "", fmt.Errorf("value: %w", err)
	}
	return Row{Metric: metric, T: t, Value: v}, dev, nil
}

// timeLayouts are the text forms a time column may come back as: RFC 3339
// (JSON, PostgreSQL through HTTP) and SQLite's "YYYY-MM-DD HH:MM:SS.SSS".
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999"}

func toMillis(v any) (int64, error) {
	switch x := v.(type) {
	case time.Time:
		return x.UnixMilli(), nil
	case int64: // integer Unix ms (an embedded store may keep time so)
		return x, nil
	case float64:
		return int64(x), nil
	case json.Number:
		return x.Int64()
	case string:
		for _, l := range timeLayouts {
			if t, err := time.Parse(l, x); err == nil {
				return t.UnixMilli(), nil
			}
		}
		return 0, fmt.Errorf("unrecognised time %q", x)
	}
	return 0, fmt.Errorf("unsupported time type %T", v)
}

func toFloat(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case float32:
		return float64(x), nil
	case int64:
		return float64(x), nil
	case json.Number:
		return x.Float64()
	case string:
		return strconv.ParseFloat(x, 64)
	}
	return 0, fmt.Errorf("unsupported value type %T", v)
}

// HTTPQuery returns a QueryFunc that runs SQL through the server's
// GET /v1/query?sql= with an API key (viewer role is enough). The answer is
// the JSON {"columns": [...], "rows": [[...]], "truncated": bool}; a
// truncated answer is an error (raise the server's row cap, or verify
// through the store).
func HTTPQuery(client *http.Client, baseURL, apiKey string) QueryFunc {
	return func(ctx context.Context, sql string) ([][]any, error) {
		u := strings.TrimRight(baseURL, "/") + "/v1/query?" + url.Values{"sql": {sql}, "max_rows": {"1000000"}}.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("GET /v1/query: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return nil, fmt.Errorf("GET /v1/query: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		var out struct {
			Rows      [][]any `json:"rows"`
			Truncated bool    `json:"truncated"`
		}
		dec := json.NewDecoder(resp.Body)
		dec.UseNumber()
		if err := dec.Decode(&out); err != nil {
			return nil, fmt.Errorf("decode /v1/query answer: %w", err)
		}
		if out.Truncated {
			return nil, errors.New("/v1/query answer truncated by the server's row cap")
		}
		return out.Rows, nil
	}
}
