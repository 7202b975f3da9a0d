package queryapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Reader is what the handlers need from a storage backend.
type Reader interface {
	Query(ctx context.Context, sql string, opts storage.QueryOptions) (storage.QueryResult, error)
	Series(ctx context.Context, req storage.SeriesRequest) (storage.Series, error)
}

// Config bounds /v1/query; it is what the configuration sets
// (storage.query.*). Zero values take the defaults of DefaultConfig.
type Config struct {
	// Timeout bounds a whole /v1/query request — the statement and writing
	// the answer to the client — (default 10s).
	Timeout time.Duration
	// MaxRows caps /v1/query results (default 10,000).
	MaxRows int
	// MaxBytes caps a /v1/query result as it streams from the database
	// (default storage.DefaultQueryMaxBytes, 16 MiB); the answer says when
	// it cut the result short.
	MaxBytes int64
	// MaxConcurrent bounds /v1/query requests running at once; more are
	// answered 429 at once (default 4: the SQLite query pool's two
	// connections busy and two waiting; more would only queue inside the
	// server while holding their sockets).
	MaxConcurrent int
}

// DefaultConfig returns the defaults that zero values also mean.
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, MaxRows: 10_000, MaxBytes: storage.DefaultQueryMaxBytes, MaxConcurrent: 4}
}

// Validate checks every field; errors name the key (storage.query.*) and
// the bad value. Zero means the default.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("storage.query.timeout: must be >= 0, got %s", c.Timeout))
	}
	if c.MaxRows < 0 || c.MaxRows > 1_000_000 {
		errs = append(errs, fmt.Errorf("storage.query.max_rows: must be 0 (default) or 1..1000000, got %d", c.MaxRows))
	}
	if c.MaxBytes < 0 || c.MaxBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("storage.query.max_bytes: must be 0 (default) or 1..1073741824, got %d", c.MaxBytes))
	}
	if c.MaxConcurrent < 0 || c.MaxConcurrent > 1024 {
		errs = append(errs, fmt.Errorf("storage.query.max_concurrent: must be 0 (default) or 1..1024, got %d", c.MaxConcurrent))
	}
	return errors.Join(errs...)
}

// Options configure the handlers. Zero values take the defaults.
type Options struct {
	Config
	// MaxPoints caps /v1/series?points= (default 10,000).
	MaxPoints int
	Logger    *slog.Logger
}

// errorWriteGrace is how long an error answer (a few hundred bytes) may
// take to write once the request's deadline has passed.
const errorWriteGrace = time.Second

// Handler serves GET /v1/query and GET /v1/series.
func Handler(r Reader, o Options) http.Handler {
	d := DefaultConfig()
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.MaxRows <= 0 {
		o.MaxRows = d.MaxRows
	}
	if o.MaxPoints <= 0 {
		o.MaxPoints = 10_000
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = d.MaxBytes
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = d.MaxConcurrent
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{r: r, o: o, slots: make(chan struct{}, o.MaxConcurrent)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/query", h.query)
	mux.HandleFunc("GET /v1/series", h.series)
	return mux
}

type handler struct {
	r Reader
	o Options
	// slots holds one token per /v1/query or /v1/series running
	// (MaxConcurrent).
	slots chan struct{}
}

func httpError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (h *handler) query(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sql := strings.TrimSpace(q.Get("sql"))
	if sql == "" {
		httpError(w, http.StatusBadRequest, "sql: required (one read-only SQL statement)")
		return
	}
	format := q.Get("format")
	if format == "" {
		format = "json"
	}
	write, ok := Writers[format]
	if !ok {
		httpError(w, http.StatusBadRequest, "format: must be json, csv or table, got %q", format)
		return
	}
	maxRows := h.o.MaxRows
	if s := q.Get("max_rows"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "max_rows: must be a positive integer, got %q", s)
			return
		}
		maxRows = min(n, h.o.MaxRows)
	}
	if !h.acquire(w) {
		return
	}
	defer func() { <-h.slots }()
	// One deadline for the whole request: the statement gets what is left
	// of it, and writing the answer to a slow client ends at it too.
	deadline := time.Now().Add(h.o.Timeout)
	ctx, cancel := context.WithDeadline(r.Context(), deadline)
	defer cancel()
	// Not every ResponseWriter supports deadlines (test recorders); the
	// context still bounds the statement then.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(deadline)
	res, err := h.r.Query(ctx, sql, storage.QueryOptions{Timeout: h.o.Timeout, MaxRows: maxRows, MaxBytes: h.o.MaxBytes})
	if err != nil {
		// A statement stopped at the deadline still gets its short error
		// answer out.
		_ = rc.SetWriteDeadline(time.Now().Add(errorWriteGrace))
		status := http.StatusBadRequest
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			status = http.StatusGatewayTimeout
		case errors.Is(err, storage.ErrReadOnly), errors.Is(err, storage.ErrNotAllowed):
			status = http.StatusForbidden
		}
		httpError(w, status, "%v", err)
		return
	}
	switch format {
	case "csv":
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	case "table":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	default:
		w.Header().Set("Content-Type", "application/json")
	}
	if res.Truncated {
		w.Header().Set("X-Meridian-Truncated", "true")
		if res.TruncatedBy != "" {
			w.Header().Set("X-Meridian-Truncated-By", res.TruncatedBy)
		}
	}
	if err := write(w, res); err != nil {
		h.o.Logger.Warn("write query result", "err", err)
	}
}

// parseTime accepts RFC 3339 or Unix milliseconds.
func parseTime(key, s string) (time.Time, error) {
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: must be RFC 3339 or Unix milliseconds, got %q", key, s)
	}
	return t, nil
}

// acquire takes one of the MaxConcurrent slots /v1/query and /v1/series
// share, or answers 429: a viewer's reads must not hold every database
// connection operators and devices need.
func (h *handler) acquire(w http.ResponseWriter) bool {
	select {
	case h.slots <- struct{}{}:
		return true
	default:
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusTooManyRequests, "too many concurrent queries (at most %d); retry later", h.o.MaxConcurrent)
		return false
	}
}

func (h *handler) series(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := storage.SeriesRequest{Device: q.Get("device"), Metric: q.Get("metric"), Points: 500}
	if req.Device == "" {
		httpError(w, http.StatusBadRequest, "device: required")
		return
	}
	if req.Metric == "" {
		httpError(w, http.StatusBadRequest, "metric: required")
		return
	}
	now := time.Now()
	req.To, req.From = now, now.Add(-time.Hour)
	var err error
	if s := q.Get("to"); s != "" {
		if req.To, err = parseTime("to", s); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
	}
	if s := q.Get("from"); s != "" {
		if req.From, err = parseTime("from", s); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
	} else {
		req.From = req.To.Add(-time.Hour)
	}
	if !req.From.Before(req.To) {
		httpError(w, http.StatusBadRequest, "from: must be before to")
		return
	}
	if s := q.Get("points"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > h.o.MaxPoints {
			httpError(w, http.StatusBadRequest, "points: must be an integer from 1 to %d, got %q", h.o.MaxPoints, s)
			return
		}
		req.Points = n
	}
	if !h.acquire(w) {
		return
	}
	defer func() { <-h.slots }()
	ctx, cancel := context.WithTimeout(r.Context(), h.o.Timeout)
	defer cancel()
	res, err := h.r.Series(ctx, req)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			httpError(w, http.StatusNotFound, "%v", err)
			return
		}
		h.o.Logger.Warn("series", "device", req.Device, "metric", req.Metric, "err", err)
		httpError(w, http.StatusServiceUnavailable, "series: %v", err)
		return
	}
	if res.Points == nil {
		res.Points = []storage.SeriesPoint{}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}
