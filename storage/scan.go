package storage

// Scanner is one result row of either backend (pgx.Row, pgx.Rows, *sql.Row,
// *sql.Rows): what a backend's scanDevice or scanAPIKey reads from.
type Scanner interface {
	Scan(dest ...any) error
}

// Rows is a result set of either backend (pgx.Rows, *sql.Rows), as far as
// ScanAll needs it. The caller still closes it.
type Rows interface {
	Scanner
	Next() bool
	Err() error
}

// ScanAll reads every row with scan, in order. It stops at the first error
// of scan or of the result set.
func ScanAll[T any](rows Rows, scan func(Scanner) (T, error)) ([]T, error) {
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
