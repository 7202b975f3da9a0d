package queryapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// fakeReader is a double of Reader for the handler's parameter handling;
// the SQL itself is exercised against real backends in storagetest.
type fakeReader struct {
	gotQuery  storage.QueryOptions
	gotSeries storage.SeriesRequest
}

func (f *fakeReader) Query(_ context.Context, sql string, o storage.QueryOptions) (storage.QueryResult, error) {
	f.gotQuery = o
	if strings.HasPrefix(sql, "DELETE") {
		return storage.QueryResult{}, storage.ErrReadOnly
	}
	return storage.QueryResult{Columns: []string{"device", "n"}, Rows: [][]any{{"a", int64(1)}}}, nil
}

func (f *fakeReader) Series(_ context.Context, r storage.SeriesRequest) (storage.Series, error) {
	f.gotSeries = r
	return storage.Series{Device: r.Device, Metric: r.Metric, Source: "1m", Bucket: time.Minute,
		Points: []storage.SeriesPoint{{Time: time.UnixMilli(60000), Min: 1, Max: 3, Avg: 2, Last: 3, Count: 3}}}, nil
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

func TestQueryAndSeries(t *testing.T) {
	f := &fakeReader{}
	h := Handler(f, Options{Config: Config{MaxRows: 100}})
	cases := []struct {
		name, path string
		status     int
		contains   string
	}{
		{"json", "/v1/query?sql=" + url.QueryEscape("SELECT 1"), 200, `"columns"`},
		{"csv", "/v1/query?format=csv&sql=SELECT+1", 200, "device,n\na,1\n"},
		{"table", "/v1/query?format=table&sql=SELECT+1", 200, "(1 row)"},
		{"missing sql", "/v1/query", 400, "sql: required"},
		{"bad format", "/v1/query?sql=x&format=xml", 400, "format: must be"},
		{"bad max_rows", "/v1/query?sql=x&max_rows=-1", 400, "max_rows"},
		{"read-only", "/v1/query?sql=DELETE+FROM+devices", 403, "read-only"},
		{"series", "/v1/series?device=d&metric=m&from=0&to=120000&points=10", 200, `"bucket_ms":60000`},
		{"series no device", "/v1/series?metric=m", 400, "device: required"},
		{"series bad from", "/v1/series?device=d&metric=m&from=yesterday", 400, "from: must be RFC 3339"},
		{"series reversed", "/v1/series?device=d&metric=m&from=2000&to=1000", 400, "from: must be before to"},
		{"series too many points", "/v1/series?device=d&metric=m&points=1000000", 400, "points"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := get(t, h, c.path)
			if status != c.status || !strings.Contains(body, c.contains) {
				t.Fatalf("status %d body %q; want %d containing %q", status, body, c.status, c.contains)
			}
		})
	}
	get(t, h, "/v1/query?sql=x&max_rows=5000")
	if f.gotQuery.MaxRows != 100 {
		t.Errorf("max_rows above the cap: got %d", f.gotQuery.MaxRows)
	}
	_, body := get(t, h, "/v1/series?device=d&metric=m&from=0&to=120000")
	var s struct {
		Points []struct{ T int64 } `json:"points"`
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil || len(s.Points) != 1 || s.Points[0].T != 60000 {
		t.Fatalf("series json %q: %v", body, err)
	}
}
