package sqlite

import (
	"context"
	"fmt"
	"os"
)

// DatabaseSize returns the bytes the database occupies on disk: the main
// file's pages plus the write-ahead log, which holds committed data until
// the next checkpoint (the dashboard's system page shows it).
func (s *Store) DatabaseSize(ctx context.Context) (int64, error) {
	var pages, pageSize int64
	if err := s.r.QueryRowContext(ctx, `SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()`).Scan(&pages, &pageSize); err != nil {
		return 0, fmt.Errorf("database size: %w", err)
	}
	size := pages * pageSize
	if fi, err := os.Stat(s.path + "-wal"); err == nil {
		size += fi.Size()
	}
	return size, nil
}
