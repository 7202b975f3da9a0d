package postgres

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/meridian-iot/meridian/storage"
)

const (
	defaultQueryTimeout = 10 * time.Second
	defaultQueryRows    = 10000
	// fetchChunk rows are fetched from the cursor at a time, so a result
	// cut short by the byte cap leaves little for the connection to drain.
	fetchChunk = 500
	// maxQueryMessage caps one message from the server on the query pool:
	// a row (DataRow) bigger than this fails the query and the connection
	// is dropped before its body is read, so SELECT repeat('x', 1e9)
	// never reaches our memory. 64 MiB is well above the default byte cap
	// (storage.DefaultQueryMaxBytes), so only rows that could never be
	// returned hit it.
	maxQueryMessage = 64 << 20
)

// SQLSTATEs that mean "this statement tried to write".
const (
	sqlReadOnlyTransaction = "25006"
	sqlInsufficientPriv    = "42501"
	sqlFeatureNotSupported = "0A000"
)

// Query runs one read-only statement on the query pool (QueryURL's role,
// its own connections): inside a READ ONLY transaction that is always
// rolled back, with a statement timeout, returning at most MaxRows rows and
// about MaxBytes bytes. Without QueryURL it refuses (storage.ErrNotAllowed)
// when the service's role is privileged; see checkQueryRole.
//
// Queries (SELECT, WITH, VALUES, TABLE) are read through a cursor so a huge
// result is never sent whole. EXPLAIN and SHOW run directly. Everything else
// is refused before it reaches the server with storage.ErrReadOnly: a
// read-only transaction stops table writes, but not e.g. COPY TO PROGRAM or
// session changes, which a superuser connection would otherwise allow.
func (s *Store) Query(ctx context.Context, sql string, opts storage.QueryOptions) (storage.QueryResult, error) {
	if err := s.ready(); err != nil {
		return storage.QueryResult{}, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = defaultQueryTimeout
	}
	if opts.MaxRows <= 0 {
		opts.MaxRows = defaultQueryRows
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = storage.DefaultQueryMaxBytes
	}
	if err := s.checkQueryRole(ctx); err != nil {
		return storage.QueryResult{}, fmt.Errorf("query: %w", err)
	}
	// A trailing semicolon is habit, not a second statement.
	sql = strings.TrimRight(strings.TrimSpace(sql), "; \t\r\n")
	if sql == "" {
		return storage.QueryResult{}, errors.New("query: empty statement")
	}
	kw := firstKeyword(sql)
	var cursor bool
	switch kw {
	case "SELECT", "WITH", "VALUES", "TABLE":
		cursor = true
	case "EXPLAIN", "SHOW":
	default:
		if !isKeyword(kw) {
			// Not a statement we know: let the server name the syntax
			// error, through the cursor, where nothing can run.
			cursor = true
			break
		}
		return storage.QueryResult{}, fmt.Errorf("query: %w: %s statements are not allowed, only SELECT, WITH, VALUES, TABLE, EXPLAIN and SHOW", storage.ErrReadOnly, kw)
	}
	res, err := s.queryTx(ctx, sql, opts, cursor)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == sqlReadOnlyTransaction, pgErr.Code == sqlInsufficientPriv,
			pgErr.Code == sqlFeatureNotSupported && strings.Contains(pgErr.Message, "data-modifying"):
			return storage.QueryResult{}, fmt.Errorf("query: %w: %w", storage.ErrReadOnly, err)
		}
	}
	if err != nil {
		return storage.QueryResult{}, fmt.Errorf("query: %w", err)
	}
	return res, nil
}

// firstKeyword returns the statement's first word, upper-cased, after
// leading blanks, comments and opening parentheses.
func firstKeyword(sql string) string {
	i := 0
	for i < len(sql) {
		switch {
		case sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r' || sql[i] == '(':
			i++
		case strings.HasPrefix(sql[i:], "--"):
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case strings.HasPrefix(sql[i:], "/*"):
			// Block comments nest in PostgreSQL.
			depth := 0
			for i < len(sql) {
				if strings.HasPrefix(sql[i:], "/*") {
					depth++
					i += 2
				} else if strings.HasPrefix(sql[i:], "*/") {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		default:
			j := i
			for j < len(sql) && (sql[j] == '_' || sql[j] >= 'a' && sql[j] <= 'z' || sql[j] >= 'A' && sql[j] <= 'Z') {
				j++
			}
			return strings.ToUpper(sql[i:j])
		}
	}
	return ""
}

// statementKeywords are the first words of PostgreSQL statements other than
// the allowed ones; a statement starting with one is refused unsent.
var statementKeywords = map[string]bool{
	"ABORT": true, "ALTER": true, "ANALYZE": true, "BEGIN": true, "CALL": true, "CHECKPOINT": true,
	"CLOSE": true, "CLUSTER": true, "COMMENT": true, "COMMIT": true, "COPY": true, "CREATE": true,
	"DEALLOCATE": true, "DECLARE": true, "DELETE": true, "DISCARD": true, "DO": true, "DROP": true,
	"END": true, "EXECUTE": true, "FETCH": true, "GRANT": true, "IMPORT": true, "INSERT": true,
	"LISTEN": true, "LOAD": true, "LOCK": true, "MERGE": true, "MOVE": true, "NOTIFY": true,
	"PREPARE": true, "REASSIGN": true, "REFRESH": true, "REINDEX": true, "RELEASE": true, "RESET": true,
	"REVOKE": true, "ROLLBACK": true, "SAVEPOINT": true, "SECURITY": true, "SET": true, "START": true,
	"TRUNCATE": true, "UNLISTEN": true, "UPDATE": true, "VACUUM": true,
}

func isKeyword(kw string) bool { return statementKeywords[kw] }

// checkQueryRole refuses ad-hoc SQL when the role the query pool logs in
// as could hurt the server: a superuser (pg_read_file, COPY TO PROGRAM,
// pg_terminate_backend of anyone), a replication role (slots that survive
// the rollback and pin WAL), or a member of the server-file roles; and, when
// QueryURL names a dedicated role, one that can read the API-key table. A
// passing check is remembered; a failing one is re-checked next time.
func (s *Store) checkQueryRole(ctx context.Context) error {
	if s.queryRoleOK.Load() || s.cfg.QueryURL == "" && s.cfg.AllowPrivilegedQuery {
		return nil
	}
	var (
		role                        string
		super, repl, files, secrets bool
	)
	err := s.qpool.QueryRow(ctx, `SELECT current_user, r.rolsuper, r.rolreplication,
		EXISTS (SELECT 1 FROM pg_roles p
		        WHERE p.rolname IN ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program', 'pg_read_all_data')
		          AND pg_has_role(current_user, p.oid, 'MEMBER')),
		coalesce(has_table_privilege(to_regclass('api_keys'), 'SELECT'), false)
		  OR coalesce(has_table_privilege(to_regclass('device_tokens'), 'SELECT'), false)
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&role, &super, &repl, &files, &secrets)
	if err != nil {
		return fmt.Errorf("check the query role: %w", err)
	}
	var why string
	switch {
	case super:
		why = "is a superuser"
	case repl:
		why = "has the REPLICATION attribute"
	case files:
		why = "may read or write server files (pg_read_server_files and friends)"
	case secrets:
		// The service's own role owns the tables: without a query role a
		// viewer could read key and token hashes, and terminate the
		// service's connections (pg_terminate_backend works on one's own
		// role's backends even in a read-only transaction).
		why = "can read the api_keys or device_tokens tables"
	}
	if why == "" {
		s.queryRoleOK.Store(true)
		return nil
	}
	const how = "create a least-privilege role with `meridian migrate --create-query-role meridian_query` and set storage.postgres.query_url to log in as it (docs/sql.md, \"Ad-hoc SQL and its role\")"
	if s.cfg.QueryURL != "" {
		return fmt.Errorf("%w: ad-hoc SQL is refused: the storage.postgres.query_url role %q %s; %s", storage.ErrNotAllowed, role, why, how)
	}
	return fmt.Errorf("%w: ad-hoc SQL is refused: it would run as the service's database role %q, which %s; %s", storage.ErrNotAllowed, role, why, how)
}

func (s *Store) queryTx(ctx context.Context, sql string, opts storage.QueryOptions, cursor bool) (res storage.QueryResult, err error) {
	conn, err := s.qpool.Acquire(ctx)
	if err != nil {
		return res, err
	}
	defer conn.Release()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return res, err
	}
	defer func() {
		// Always roll back, never commit: a session-level SET the statement
		// made is undone with the transaction, so the pooled connection
		// goes back as it came. Session advisory locks survive rollback, so
		// drop any the statement took.
		rctx, cancel := cleanupContext(ctx)
		defer cancel()
		rerr := tx.Rollback(rctx)
		if rerr == nil || errors.Is(rerr, pgx.ErrTxClosed) {
			_, rerr = conn.Exec(rctx, `SELECT pg_advisory_unlock_all()`)
		}
		if rerr != nil {
			// Unknown session state: do not reuse the connection.
			conn.Conn().Close(rctx)
		}
	}()
	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`,
		strconv.FormatInt(opts.Timeout.Milliseconds(), 10)); err != nil {
		return res, err
	}
	if s.cfg.ReadOnlyRole != "" && s.cfg.QueryURL == "" {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+pgx.Identifier{s.cfg.ReadOnlyRole}.Sanitize()); err != nil {
			return res, fmt.Errorf("switch to read-only role: %w", err)
		}
	}
	// User SQL only ever goes through Query in DescribeExec mode: the
	// extended protocol runs exactly one statement (Exec without arguments
	// would fall back to the simple protocol, which runs several), and no
	// prepared statement is cached for ad-hoc text.
	if cursor {
		rows, err := tx.Query(ctx, `DECLARE meridian_query NO SCROLL CURSOR FOR `+sql, pgx.QueryExecModeDescribeExec)
		if err != nil {
			return res, err
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, err
		}
		c := newCollector(opts)
		fetch := `FETCH FORWARD ` + strconv.Itoa(min(opts.MaxRows+1, fetchChunk)) + ` FROM meridian_query`
		for {
			rows, err = tx.Query(ctx, fetch, pgx.QueryExecModeDescribeExec)
			if err != nil {
				return res, err
			}
			n, err := c.collect(rows)
			if err != nil || c.res.Truncated || n == 0 {
				return c.res, err
			}
		}
	}
	rows, err := tx.Query(ctx, sql, pgx.QueryExecModeDescribeExec)
	if err != nil {
		return res, err
	}
	c := newCollector(opts)
	_, err = c.collect(rows)
	return c.res, err
}

// collector gathers a result within the row and byte caps.
type collector struct {
	res      storage.QueryResult
	maxRows  int
	maxBytes int64
	size     int64
}

func newCollector(opts storage.QueryOptions) *collector {
	return &collector{res: storage.QueryResult{Columns: []string{}, Rows: [][]any{}}, maxRows: opts.MaxRows, maxBytes: opts.MaxBytes}
}

// collect reads rows until they end or a cap is reached (then Truncated and
// TruncatedBy are set), and returns how many it read. Sizes are checked on
// the raw wire values, before anything is decoded.
func (c *collector) collect(rows pgx.Rows) (int, error) {
	defer rows.Close()
	if len(c.res.Columns) == 0 {
		for _, f := range rows.FieldDescriptions() {
			c.res.Columns = append(c.res.Columns, f.Name)
		}
	}
	n := 0
	for rows.Next() {
		n++
		if len(c.res.Rows) == c.maxRows {
			c.res.Truncated, c.res.TruncatedBy = true, storage.TruncatedRows
			break
		}
		var raw int64
		for _, v := range rows.RawValues() {
			raw += int64(len(v))
		}
		if c.size+raw > c.maxBytes {
			c.res.Truncated, c.res.TruncatedBy = true, storage.TruncatedBytes
			break
		}
		vals, err := rows.Values()
		if err != nil {
			return n, err
		}
		row := make([]any, len(vals))
		for i, v := range vals {
			row[i] = jsonValue(v)
			c.size += storage.ValueSize(row[i])
		}
		if c.size > c.maxBytes {
			c.res.Truncated, c.res.TruncatedBy = true, storage.TruncatedBytes
			break
		}
		c.res.Rows = append(c.res.Rows, row)
	}
	rows.Close()
	return n, rows.Err()
}

// jsonValue converts what pgx decodes into the QueryResult vocabulary:
// string, int64, float64, bool, time.Time, nil; anything else becomes text.
func jsonValue(v any) any {
	switch x := v.(type) {
	case nil, string, int64, float64, bool, time.Time:
		return x
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int:
		return int64(x)
	case float32:
		return float64(x)
	case []byte:
		return `\x` + hex.EncodeToString(x)
	case pgtype.Numeric:
		return numericValue(x)
	case map[string]any, []any:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	case [16]byte: // uuid
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	case fmt.Stringer:
		return x.String()
	case driver.Valuer:
		if dv, err := x.Value(); err == nil {
			return jsonValue(dv)
		}
	}
	return fmt.Sprint(v)
}

// numericValue returns an int64 for integral numerics that fit (sum of a
// bigint column is numeric), float64 otherwise.
func numericValue(n pgtype.Numeric) any {
	if !n.Valid {
		return nil
	}
	if n.NaN {
		return "NaN"
	}
	if n.InfinityModifier != pgtype.Finite {
		f, _ := n.Float64Value()
		return f.Float64
	}
	if n.Exp >= 0 {
		i := new(big.Int).Set(n.Int)
		i.Mul(i, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n.Exp)), nil))
		if i.IsInt64() {
			return i.Int64()
		}
	}
	f, err := n.Float64Value()
	if err != nil {
		return n.Int.String()
	}
	return f.Float64
}
