package postgres

import (
	"context"
	"fmt"
)

// DatabaseSize returns the bytes of the current database on disk, as
// PostgreSQL counts them (tables, indexes, TOAST; the dashboard's system
// page shows it).
func (s *Store) DatabaseSize(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&n); err != nil {
		return 0, fmt.Errorf("database size: %w", err)
	}
	return n, nil
}
