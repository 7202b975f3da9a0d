package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// cleanupTimeout bounds the statements that put a session back as it was
// (unlocking an advisory lock, rolling back an ad-hoc query) after the work
// that needed it. They run on a context detached from the caller's
// cancellation, since the caller's context ending is often why cleanup runs;
// a few seconds is ample for one loopback round trip, and if the server does
// not answer by then the connection is closed instead, which drops every
// session-level lock with it.
const cleanupTimeout = 5 * time.Second

// cleanupContext is ctx without its cancellation or deadline, bounded by
// cleanupTimeout: values (tracing, logging) still flow from the caller.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// withAdvisoryLock runs fn holding the session advisory lock id on conn,
// waiting for it (wait) or giving up at once (ran reports whether fn ran).
// The lock is released afterwards even if ctx has ended; when releasing
// fails the connection is closed, since the lock dies with the session.
func withAdvisoryLock(ctx context.Context, conn *pgx.Conn, id int64, wait bool, fn func() error) (ran bool, err error) {
	if wait {
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, id); err != nil {
			return false, fmt.Errorf("take lock: %w", err)
		}
	} else {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, id).Scan(&got); err != nil {
			return false, fmt.Errorf("take lock: %w", err)
		}
		if !got {
			return false, nil
		}
	}
	defer func() {
		uctx, cancel := cleanupContext(ctx)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, id); err != nil {
			_ = conn.Close(uctx)
		}
	}()
	return true, fn()
}
