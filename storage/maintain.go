package storage

import (
	"context"
	"log/slog"
	"time"
)

// Maintainer is what RunMaintenance needs from a backend: its housekeeping
// as of now (partitions ahead, retention, rollup refresh).
type Maintainer interface {
	Maintain(ctx context.Context, now time.Time) error
}

// minMaintainTimeout is the least time one maintenance run gets, whatever
// the interval: a first run on a large table (creating a week of partitions,
// refreshing every dirty rollup bucket) takes tens of seconds.
const minMaintainTimeout = time.Minute

// RunMaintenance runs m's housekeeping now and then every interval until ctx
// ends. Failures are logged and retried at the next tick: housekeeping
// falling behind never stops ingestion. The caller waits until the backend
// is ready before calling it.
func RunMaintenance(ctx context.Context, m Maintainer, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		mctx, cancel := context.WithTimeout(ctx, max(every, minMaintainTimeout))
		start := time.Now()
		err := m.Maintain(mctx, start)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("storage maintenance failed; retrying next interval", "err", err, "interval", every)
		case err == nil:
			log.Debug("storage maintenance done", "took", time.Since(start))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
