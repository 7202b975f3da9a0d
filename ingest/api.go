package ingest

import (
	"context"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Store is what the pipeline needs from storage: an atomic commit of batches
// with the duplicate check inside the transaction (see storagetest.Backend
// for the full contract), the durable watermark for hello.acked, and a
// liveness check for /readyz.
type Store interface {
	Commit(ctx context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error)
	Watermark(ctx context.Context, device string) (uint64, error)
	Ping(ctx context.Context) error
}

// Authenticator resolves a device token to the device id. It returns
// ErrUnauthorized (possibly wrapped) for a missing, unknown, expired or
// disabled token; any other error is an internal failure (HTTP 503).
type Authenticator interface {
	AuthenticateDevice(ctx context.Context, token string) (device string, err error)
}
