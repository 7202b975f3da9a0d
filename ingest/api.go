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

// Authenticator resolves a device token to the device id. For a missing,
// unknown, expired or revoked token or a disabled device it returns an error
// that implements interface{ Unauthorized() bool } returning true (ingest
// answers 401); any other error is an internal failure (ingest answers 503).
// The interface check keeps ingest free of imports of the devices package.
type Authenticator interface {
	AuthenticateDevice(ctx context.Context, token string) (device string, err error)
}

// AckedAuthenticator is an Authenticator that can also return the
// device's watermark, read in the same store query as the token (fresh;
// false when it answered without asking the store, from a cache). A device
// handshake then costs one store query instead of two: in a reconnect storm
// every handshake misses the cache of a restarted node.
type AckedAuthenticator interface {
	AuthenticateDeviceAcked(ctx context.Context, token string) (device string, acked uint64, fresh bool, err error)
}
