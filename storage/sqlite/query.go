package sqlite

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	sqldriver "database/sql/driver"
	sqlite3 "github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/driver"

	"github.com/meridian-iot/meridian/storage"
)

const (
	defaultQueryTimeout = 10 * time.Second
	defaultQueryRows    = 10000
	defaultSeriesPoints = 1000
)

// withReader runs f on a read-only connection with ctx wired to
// sqlite3_interrupt, so a deadline stops a running statement.
func (s *Store) withReader(ctx context.Context, f func(c *sqlite3.Conn) error) error {
	conn, err := s.r.Conn(ctx)
	if err != nil {
		return fmt.Errorf("get a read connection: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c := dc.(driver.Conn).Raw()
		// Ad-hoc SQL must not reach other files: ATTACH passes SQLite's
		// read-only statement check.
		c.Limit(sqlite3.LIMIT_ATTACHED, 0)
		old := c.SetInterrupt(ctx)
		defer c.SetInterrupt(old)
		err := f(c)
		if !c.GetAutocommit() {
			// A BEGIN in ad-hoc SQL: do not pool a connection stuck in it.
			c.SetInterrupt(context.Background())
			if rerr := c.Exec("ROLLBACK"); rerr != nil {
				return errors.Join(err, rerr)
			}
		}
		return err
	})
}

// publicObjects are what ad-hoc SQL may read (docs/sql.md's public
// schema); everything else — tokens, API keys, the internal tables behind
// the views — is read only through a public view.
var publicObjects = map[string]bool{
	"telemetry": true, "telemetry_1m": true, "telemetry_1h": true,
	"devices": true, "metrics": true, "device_sessions": true,
	// The schema itself (names and DDL, no data), for \d-style browsing.
	"sqlite_master": true, "sqlite_schema": true,
}

// publicViews may read internal tables on the query's behalf.
var publicViews = map[string]bool{"telemetry": true, "telemetry_1m": true, "telemetry_1h": true}

// withQuery runs f on a connection of the ad-hoc query pool, set up so one
// query cannot hurt the rest of the server:
//   - its own pool (Config.QueryConns): lookups on the ingest and auth paths
//     use s.r and never wait behind a query;
//   - a hard heap limit (Config.QueryHeapLimit) and a maximum value length,
//     so zeroblob(1e9) or a huge sort fails with an error instead of
//     growing the process;
//   - the query authorizer: read-only, public objects only;
//   - ctx wired to sqlite3_interrupt;
//   - a panic inside the driver (its out-of-memory path panics) becomes an
//     error, and the connection, in an unknown state, is discarded.
func (s *Store) withQuery(ctx context.Context, maxValue int64, deniedRead *string, f func(c *sqlite3.Conn, objects map[string]bool) error) error {
	conn, err := s.q.Conn(ctx)
	if err != nil {
		return fmt.Errorf("get a query connection: %w", err)
	}
	defer conn.Close()
	var ferr error
	rerr := conn.Raw(func(dc any) (err error) {
		c := dc.(driver.Conn).Raw()
		defer func() {
			if p := recover(); p != nil {
				ferr = fmt.Errorf("%w: %v", errQueryMemory, p)
				err = sqldriver.ErrBadConn
			}
		}()
		c.Limit(sqlite3.LIMIT_ATTACHED, 0)
		c.Limit(sqlite3.LIMIT_LENGTH, int(min(max(maxValue, 1<<16), s.cfg.QueryHeapLimit/4)))
		c.HardHeapLimit(s.cfg.QueryHeapLimit)
		objects, err := schemaObjects(c)
		if err != nil {
			return err
		}
		if err := c.SetAuthorizer(queryAuthorizer(objects, deniedRead)); err != nil {
			return err
		}
		old := c.SetInterrupt(ctx)
		defer c.SetInterrupt(old)
		ferr = f(c, objects)
		if !c.GetAutocommit() {
			// A BEGIN in ad-hoc SQL: do not pool a connection stuck in it.
			c.SetInterrupt(context.Background())
			if err := c.Exec("ROLLBACK"); err != nil {
				return errors.Join(err, sqldriver.ErrBadConn)
			}
		}
		return nil
	})
	if ferr != nil {
		return ferr
	}
	if errors.Is(rerr, sqldriver.ErrBadConn) {
		return nil
	}
	return rerr
}

// errQueryMemory: the statement needed more memory than a query
// connection may use.
var errQueryMemory = errors.New("out of memory (storage.sqlite.query_heap_limit)")

// Query runs one read-only SQL statement on the ad-hoc query pool (see
// withQuery), with a timeout (interrupting the statement), a row cap and a
// byte cap. A statement that would write fails with storage.ErrReadOnly,
// one that reads outside the public schema with storage.ErrNotAllowed,
// before it runs.
func (s *Store) Query(ctx context.Context, q string, opts storage.QueryOptions) (storage.QueryResult, error) {
	var res storage.QueryResult
	timeout, maxRows, maxBytes := queryLimits(opts)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var deniedRead string
	err := s.withQuery(ctx, maxBytes, &deniedRead, func(c *sqlite3.Conn, objects map[string]bool) error {
		st, err := prepareQuery(c, q, objects, &deniedRead)
		if err != nil {
			return err
		}
		defer st.Close()
		return readQueryRows(st, maxRows, maxBytes, &res)
	})
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, sqlite3.INTERRUPT) {
			err = fmt.Errorf("statement timeout (%s): %w", timeout, ctx.Err())
		}
		return storage.QueryResult{}, fmt.Errorf("query: %w", err)
	}
	return res, nil
}

// queryLimits is opts with the defaults in place of zeros.
func queryLimits(opts storage.QueryOptions) (timeout time.Duration, maxRows int, maxBytes int64) {
	timeout = opts.Timeout
	if timeout <= 0 {
		timeout = defaultQueryTimeout
	}
	maxRows = opts.MaxRows
	if maxRows <= 0 {
		maxRows = defaultQueryRows
	}
	maxBytes = opts.MaxBytes
	if maxBytes <= 0 {
		maxBytes = storage.DefaultQueryMaxBytes
	}
	return timeout, maxRows, maxBytes
}

// prepareQuery prepares q, the single read-only statement of an ad-hoc
// query, under the query authorizer (which records a denied read in
// *deniedRead), and refuses it before it runs when it is not one.
func prepareQuery(c *sqlite3.Conn, q string, objects map[string]bool, deniedRead *string) (*sqlite3.Stmt, error) {
	// The authorizer trusts reads made inside a public view by the
	// view's name, which a CTE of the same name would also carry.
	for _, name := range cteNames(q) {
		if objects[name] {
			return nil, fmt.Errorf("%w: a WITH query may not be named %q like a table or view", storage.ErrNotAllowed, name)
		}
	}
	st, tail, err := c.Prepare(q)
	if errors.Is(err, sqlite3.AUTH) {
		if *deniedRead != "" {
			return nil, fmt.Errorf("%w: %s is not part of the public schema (docs/sql.md): %v", storage.ErrNotAllowed, *deniedRead, err)
		}
		return nil, fmt.Errorf("%w: %v", storage.ErrReadOnly, err)
	}
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("empty statement")
	}
	if strings.TrimSpace(tail) != "" {
		// The tail may be only comments; then preparing it gives nil.
		extra, _, err := c.Prepare(tail)
		if err != nil || extra != nil {
			extra.Close()
			st.Close()
			return nil, errors.New("only one statement may be run at a time")
		}
	}
	if !st.ReadOnly() {
		st.Close()
		return nil, storage.ErrReadOnly
	}
	return st, nil
}

// readQueryRows steps st into res, stopping (and marking res truncated)
// before the row past maxRows or the row that would take the result past
// maxBytes.
func readQueryRows(st *sqlite3.Stmt, maxRows int, maxBytes int64, res *storage.QueryResult) error {
	n := st.ColumnCount()
	res.Columns = make([]string, n)
	for i := range n {
		res.Columns[i] = st.ColumnName(i)
	}
	res.Rows = [][]any{}
	var size int64
	for st.Step() {
		if len(res.Rows) == maxRows {
			res.Truncated, res.TruncatedBy = true, storage.TruncatedRows
			break
		}
		row, fits := readQueryRow(st, n, &size, maxBytes)
		if !fits || size > maxBytes {
			res.Truncated, res.TruncatedBy = true, storage.TruncatedBytes
			break
		}
		res.Rows = append(res.Rows, row)
	}
	if err := st.Err(); err != nil {
		switch {
		case errors.Is(err, sqlite3.READONLY):
			return errors.Join(storage.ErrReadOnly, err)
		case errors.Is(err, sqlite3.NOMEM):
			return fmt.Errorf("%w: %w", errQueryMemory, err)
		case errors.Is(err, sqlite3.TOOBIG):
			return fmt.Errorf("a value is larger than the query byte cap (%d bytes): %w", maxBytes, err)
		}
		return err
	}
	return nil
}

// readQueryRow copies the current row of st out, adding the values' sizes
// to *size. It returns false, without copying, when a text or blob value
// would take *size past maxBytes: their length is checked on the wasm side
// (RawText and RawBlob do not copy) before they are copied out.
func readQueryRow(st *sqlite3.Stmt, n int, size *int64, maxBytes int64) ([]any, bool) {
	row := make([]any, n)
	for i := range n {
		switch st.ColumnType(i) {
		case sqlite3.INTEGER:
			row[i] = st.ColumnInt64(i)
		case sqlite3.FLOAT:
			row[i] = st.ColumnFloat(i)
		case sqlite3.TEXT:
			if *size+int64(len(st.ColumnRawText(i))) > maxBytes {
				return nil, false
			}
			row[i] = st.ColumnText(i)
		case sqlite3.BLOB:
			if *size+2*int64(len(st.ColumnRawBlob(i))) > maxBytes {
				return nil, false
			}
			row[i] = st.ColumnBlob(i, nil)
		default:
			row[i] = nil
		}
		*size += storage.ValueSize(row[i])
	}
	return row, true
}

// queryAuthorizer returns the authorizer of one ad-hoc query: what
// readOnlyAuthorizer admits, and reads only of public objects, of internal
// tables only from inside a public view, and of CTEs and subqueries (names
// that are not schema objects). The authorizer reports a schema object by
// name only (count(*) even without a schema), so the names of the database's
// tables and views are what tell a table from a CTE; a CTE named like an
// internal table is refused too, which costs nothing.
//
// A read with no column (SQLite's "this table is referenced but no column
// of it is used", e.g. count(*) or a join the planner keeps only for its
// rows) comes without the view that caused it; it is admitted for a table
// a public view of this statement already read, and refused otherwise, so
// count(*) FROM api_keys fails while count(*) FROM telemetry works.
// deniedRead records the object a denied read named.
func queryAuthorizer(schemaObjects map[string]bool, deniedRead *string) func(sqlite3.AuthorizerActionCode, string, string, string, string) sqlite3.AuthorizerReturnCode {
	viaView := map[string]bool{}
	return func(action sqlite3.AuthorizerActionCode, name3rd, name4th, schema, inner string) sqlite3.AuthorizerReturnCode {
		if action != sqlite3.AUTH_READ {
			return readOnlyAuthorizer(action, name3rd, name4th, schema, inner)
		}
		name := strings.ToLower(name3rd)
		if publicViews[strings.ToLower(inner)] {
			viaView[name] = true
			return sqlite3.AUTH_OK
		}
		if publicObjects[name] || !schemaObjects[name] || name4th == "" && viaView[name] {
			return sqlite3.AUTH_OK
		}
		*deniedRead = name3rd
		return sqlite3.AUTH_DENY
	}
}

// schemaObjects lists the database's tables and views (lower-cased).
func schemaObjects(c *sqlite3.Conn) (map[string]bool, error) {
	st, _, err := c.Prepare(`SELECT lower(name) FROM sqlite_schema WHERE type IN ('table', 'view')`)
	if err != nil {
		return nil, fmt.Errorf("list schema objects: %w", err)
	}
	defer st.Close()
	out := map[string]bool{}
	for st.Step() {
		out[st.ColumnText(0)] = true
	}
	if err := st.Err(); err != nil {
		return nil, fmt.Errorf("list schema objects: %w", err)
	}
	return out, nil
}

// readOnlyAuthorizer admits what a read-only query needs and nothing else,
// on top of the read-only connection and SQLite's own statement check:
// no DDL or DML (temp tables included), no ATTACH, no transactions left
// open on a pooled connection, no PRAGMA that changes a setting.
func readOnlyAuthorizer(action sqlite3.AuthorizerActionCode, name3rd, name4th, _, _ string) sqlite3.AuthorizerReturnCode {
	switch action {
	case sqlite3.AUTH_SELECT, sqlite3.AUTH_READ, sqlite3.AUTH_FUNCTION, sqlite3.AUTH_RECURSIVE:
		return sqlite3.AUTH_OK
	case sqlite3.AUTH_PRAGMA:
		name := strings.ToLower(name3rd)
		if name4th == "" {
			switch name {
			case "optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory":
				return sqlite3.AUTH_DENY
			}
			return sqlite3.AUTH_OK // reads a setting
		}
		switch name {
		case "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
			"foreign_key_list", "foreign_key_check", "integrity_check", "quick_check":
			return sqlite3.AUTH_OK // argument names what to inspect
		}
		return sqlite3.AUTH_DENY
	}
	return sqlite3.AUTH_DENY
}

// Series answers /v1/series: the raw readings when at most Points of them
// fall in [From, To), otherwise at most Points buckets with min, max, avg,
// last and count, built from the coarsest source that resolves them (1h
// rollup, 1m rollup or raw readings). Rollups are used up to the last
// refresh and raw readings after it, so the newest bucket is current.
func (s *Store) Series(ctx context.Context, req storage.SeriesRequest) (storage.Series, error) {
	out := storage.Series{Device: req.Device, Metric: req.Metric, Source: "raw", Points: []storage.SeriesPoint{}}
	if !req.To.After(req.From) {
		return out, fmt.Errorf("series: to (%s) must be after from (%s)", req.To.Format(time.RFC3339), req.From.Format(time.RFC3339))
	}
	points := req.Points
	if points <= 0 {
		points = defaultSeriesPoints
	}
	s.mu.RLock()
	dev, okD := s.deviceIDs[req.Device]
	met, okM := s.metricIDs[req.Metric]
	s.mu.RUnlock()
	if !okD || !okM {
		return out, nil
	}
	from, to := req.From.UnixMilli(), req.To.UnixMilli()
	err := s.withReader(ctx, func(c *sqlite3.Conn) error {
		raw, complete, err := readRaw(c, dev, met, from, to, points+1)
		if err != nil {
			return err
		}
		if complete && len(raw) <= points {
			for _, p := range raw {
				tm := time.UnixMilli(p.t).UTC()
				out.Points = append(out.Points, storage.SeriesPoint{Time: tm, Min: p.v, Max: p.v, Avg: p.v, Last: p.v, Count: 1})
			}
			return nil
		}
		return s.bucketed(c, dev, met, from, to, points, &out)
	})
	if err != nil {
		return storage.Series{}, fmt.Errorf("series %s/%s: %w", req.Device, req.Metric, err)
	}
	return out, nil
}

type rawPoint struct {
	t int64
	v float64
}

// readRaw reads up to limit readings; complete is false when it stopped at
// the limit.
func readRaw(c *sqlite3.Conn, dev, met, from, to int64, limit int) ([]rawPoint, bool, error) {
	st, _, err := c.Prepare(`SELECT t_ms, value FROM readings
		WHERE device_id = ? AND t_ms >= ? AND t_ms < ? AND metric_id = ? ORDER BY t_ms LIMIT ?`)
	if err != nil {
		return nil, false, err
	}
	defer st.Close()
	st.BindInt64(1, dev)
	st.BindInt64(2, from)
	st.BindInt64(3, to)
	st.BindInt64(4, met)
	st.BindInt64(5, int64(limit))
	var out []rawPoint
	for st.Step() {
		out = append(out, rawPoint{st.ColumnInt64(0), st.ColumnFloat(1)})
	}
	if err := st.Err(); err != nil {
		return nil, false, err
	}
	return out, len(out) < limit, nil
}

// bucketed fills out with at most points buckets. Buckets start at from
// rounded down to the source's width, and the width is a multiple of it
// chosen so that ceil((to - origin) / width) <= points.
func (s *Store) bucketed(c *sqlite3.Conn, dev, met, from, to int64, points int, out *storage.Series) error {
	span := to - from
	srcWidth, source := int64(1), "raw"
	switch per := span / int64(points); {
	case per >= hourMs:
		srcWidth, source = hourMs, "1h"
	case per >= minuteMs:
		srcWidth, source = minuteMs, "1m"
	}
	origin := floorDiv(from, srcWidth) * srcWidth
	width := ceilTo(ceilDiv(to-origin, int64(points)), srcWidth)
	out.Source = source
	out.Bucket = time.Duration(width) * time.Millisecond
	f := &bucketFolder{origin: origin, width: width}

	// Rollup rows are final for buckets wholly before the last refresh;
	// later readings come from the raw table.
	rawFrom := from
	if source != "raw" {
		refreshed, err := s.refreshedTo(c)
		if err != nil {
			return err
		}
		split := min(floorDiv(refreshed, srcWidth)*srcWidth, to)
		if split > origin {
			table := "rollup_1m"
			if source == "1h" {
				table = "rollup_1h"
			}
			if err := foldRollup(c, table, dev, met, origin, split, f); err != nil {
				return err
			}
			rawFrom = max(from, split)
		}
	}
	if rawFrom < to {
		if err := foldRaw(c, dev, met, rawFrom, to, f); err != nil {
			return err
		}
	}
	for _, a := range f.aggs {
		out.Points = append(out.Points, storage.SeriesPoint{
			Time: time.UnixMilli(a.bucket).UTC(), Min: a.min, Max: a.max,
			Avg: a.sum / float64(a.count), Last: a.last, Count: a.count,
		})
	}
	return nil
}

// bucketFolder merges rows arriving in time order (rollup buckets or single
// readings) into output buckets of width starting at origin.
type bucketFolder struct {
	origin, width int64
	aggs          []*bucketAgg
}

func (f *bucketFolder) fold(bucketStart, t int64, min, max, sum float64, count int64, last float64) {
	b := f.origin + floorDiv(bucketStart-f.origin, f.width)*f.width
	var a *bucketAgg
	if n := len(f.aggs); n > 0 && f.aggs[n-1].bucket == b {
		a = f.aggs[n-1]
	} else {
		a = &bucketAgg{bucket: b, min: math.Inf(1), max: math.Inf(-1), lastT: math.MinInt64}
		f.aggs = append(f.aggs, a)
	}
	a.min = math.Min(a.min, min)
	a.max = math.Max(a.max, max)
	a.sum += sum
	a.count += count
	if t >= a.lastT {
		a.last, a.lastT = last, t
	}
}

// foldRollup folds the rollup rows of [origin, split) into f. table is one
// of two constants chosen by bucketed, never input.
func foldRollup(c *sqlite3.Conn, table string, dev, met, origin, split int64, f *bucketFolder) error {
	st, _, err := c.Prepare(`SELECT bucket, min, max, sum, count, last, last_t FROM ` + table + `
		WHERE device_id = ? AND metric_id = ? AND bucket >= ? AND bucket < ? ORDER BY bucket`)
	if err != nil {
		return err
	}
	defer st.Close()
	st.BindInt64(1, dev)
	st.BindInt64(2, met)
	st.BindInt64(3, origin)
	st.BindInt64(4, split)
	for st.Step() {
		f.fold(st.ColumnInt64(0), st.ColumnInt64(6), st.ColumnFloat(1), st.ColumnFloat(2), st.ColumnFloat(3), st.ColumnInt64(4), st.ColumnFloat(5))
	}
	return st.Err()
}

// foldRaw folds the raw readings of [from, to) into f.
func foldRaw(c *sqlite3.Conn, dev, met, from, to int64, f *bucketFolder) error {
	st, _, err := c.Prepare(`SELECT t_ms, value FROM readings
		WHERE device_id = ? AND t_ms >= ? AND t_ms < ? AND metric_id = ? ORDER BY t_ms`)
	if err != nil {
		return err
	}
	defer st.Close()
	st.BindInt64(1, dev)
	st.BindInt64(2, from)
	st.BindInt64(3, to)
	st.BindInt64(4, met)
	for st.Step() {
		t, v := st.ColumnInt64(0), st.ColumnFloat(1)
		f.fold(t, t, v, v, v, 1, v)
	}
	return st.Err()
}

// refreshedTo reads how far the rollups are complete (Unix ms);
// math.MinInt64 when they were never refreshed.
func (s *Store) refreshedTo(c *sqlite3.Conn) (int64, error) {
	st, _, err := c.Prepare(`SELECT CAST(value AS INTEGER) FROM meridian_meta WHERE key = ?`)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	st.BindText(1, metaRefreshedTo)
	v := int64(math.MinInt64)
	if st.Step() {
		v = st.ColumnInt64(0)
	}
	return v, st.Err()
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

// cteNames returns the (lower-cased) names SQL gives to common table
// expressions: every name followed by an optional column list, AS,
// optional [NOT] MATERIALIZED and "(". It skips strings and comments and
// unquotes identifiers. It may also return WINDOW names, which only makes
// the check that uses it stricter.
func cteNames(sql string) []string {
	type token struct {
		word  string // lower-cased word or unquoted identifier; "" for punctuation
		punct byte
	}
	var toks []token
	for i := 0; i < len(sql); {
		ch := sql[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f':
			i++
		case strings.HasPrefix(sql[i:], "--"):
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case strings.HasPrefix(sql[i:], "/*"):
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				i = len(sql)
			} else {
				i += end + 4
			}
		case ch == '\'' || ch == '"' || ch == '`' || ch == '[':
			closer := ch
			if ch == '[' {
				closer = ']'
			}
			var b strings.Builder
			j := i + 1
			for j < len(sql) {
				if sql[j] == closer {
					if closer != ']' && j+1 < len(sql) && sql[j+1] == closer {
						b.WriteByte(closer)
						j += 2
						continue
					}
					break
				}
				b.WriteByte(sql[j])
				j++
			}
			// A single-quoted string is a word too: SQLite's grammar
			// accepts a string literal as a name (WITH 'telemetry' AS
			// ...), so it may name a CTE. Taking every string for a word
			// can only add names to check, never hide one.
			toks = append(toks, token{word: strings.ToLower(b.String())})
			i = j + 1
		case ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= 0x80:
			j := i
			for j < len(sql) && (sql[j] == '_' || sql[j] == '$' || sql[j] >= 'a' && sql[j] <= 'z' || sql[j] >= 'A' && sql[j] <= 'Z' || sql[j] >= '0' && sql[j] <= '9' || sql[j] >= 0x80) {
				j++
			}
			toks = append(toks, token{word: strings.ToLower(sql[i:j])})
			i = j
		default:
			toks = append(toks, token{punct: ch})
			i++
		}
	}
	var names []string
	for i, t := range toks {
		if t.word == "" {
			continue
		}
		j := i + 1
		if j < len(toks) && toks[j].punct == '(' { // column list
			depth := 0
			for ; j < len(toks); j++ {
				if toks[j].punct == '(' {
					depth++
				} else if toks[j].punct == ')' {
					depth--
					if depth == 0 {
						j++
						break
					}
				}
			}
		}
		if j >= len(toks) || toks[j].word != "as" {
			continue
		}
		j++
		if j < len(toks) && toks[j].word == "not" {
			j++
		}
		if j < len(toks) && toks[j].word == "materialized" {
			j++
		}
		if j < len(toks) && toks[j].punct == '(' {
			names = append(names, t.word)
		}
	}
	return names
}
