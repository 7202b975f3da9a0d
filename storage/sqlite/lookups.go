package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
)

// lookups are the read pool's prepared statements for the handshake path
// (token, API key and watermark lookups): preparing a statement costs more
// than running these point lookups, and a reconnect storm runs thousands a
// second. database/sql re-prepares a *sql.Stmt on each pool connection
// lazily and keeps it. They are prepared on first use, not at Open, because
// a store opened without migrating may not have the tables yet.
type lookups struct {
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// prepared returns the read pool's statement for query, preparing it once.
func (s *Store) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	s.look.mu.Lock()
	defer s.look.mu.Unlock()
	if st, ok := s.look.stmts[query]; ok {
		return st, nil
	}
	st, err := s.r.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare lookup: %w", err)
	}
	if s.look.stmts == nil {
		s.look.stmts = map[string]*sql.Stmt{}
	}
	s.look.stmts[query] = st
	return st, nil
}

// queryRow runs a prepared point lookup on the read pool. A failure to
// prepare comes back through Row.Scan, like any query error.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) scanner {
	st, err := s.prepared(ctx, query)
	if err != nil {
		return errRow{err}
	}
	return st.QueryRowContext(ctx, args...)
}

// closeLookups closes the prepared statements (Close).
func (s *Store) closeLookups() error {
	s.look.mu.Lock()
	defer s.look.mu.Unlock()
	var first error
	for q, st := range s.look.stmts {
		if err := st.Close(); err != nil && first == nil {
			first = err
		}
		delete(s.look.stmts, q)
	}
	return first
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
