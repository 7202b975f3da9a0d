package storage

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

type countingMaintainer struct {
	runs atomic.Int32
	err  error
}

func (c *countingMaintainer) Maintain(ctx context.Context, _ time.Time) error {
	c.runs.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("no deadline on the maintenance context")
	}
	return c.err
}

// A failing run is retried at the next tick, and the loop ends with ctx.
func TestRunMaintenanceRetriesAndStops(t *testing.T) {
	m := &countingMaintainer{err: errors.New("disk full")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunMaintenance(ctx, m, 5*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	deadline := time.Now().Add(5 * time.Second)
	for m.runs.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunMaintenance did not return after cancel")
	}
	if n := m.runs.Load(); n < 3 {
		t.Fatalf("%d runs, want a retry after each failure", n)
	}
}
