package storagetest

import (
	"context"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// Backend is the whole surface a storage backend offers. Consumers declare
// smaller interfaces (ingest needs Commit/Watermark/Ping); this one exists so
// the suite can exercise everything, and cmd asserts each backend satisfies it.
type Backend interface {
	// Mode is storage.ModeTimescale, storage.ModePostgres or storage.ModeSQLite.
	Mode() string
	Ping(ctx context.Context) error
	Close() error

	// Commit stores the batches in one transaction, in order. For each batch
	// the device's watermark is read inside the transaction (locking the
	// device row on postgres): a batch with Seq <= watermark is a duplicate
	// and stores nothing; otherwise its readings are stored and the watermark
	// becomes Seq. Several batches of one device may appear, in seq order.
	// Devices unknown to the registry are created (enabled, no token) so that
	// tests and the simulator can commit without provisioning first.
	// On error nothing of the call is stored and no watermark moves.
	Commit(ctx context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error)
	// Watermark is the highest durable seq of device, 0 if none or unknown.
	Watermark(ctx context.Context, device string) (uint64, error)

	// Maintain does periodic housekeeping as of now: create partitions ahead,
	// apply retention, refresh rollups (including buckets dirtied by late
	// data). The server calls it on a ticker; tests call it directly.
	Maintain(ctx context.Context, now time.Time) error

	// Series answers the dashboard's /v1/series.
	Series(ctx context.Context, req storage.SeriesRequest) (storage.Series, error)
	// Query runs one read-only SQL statement.
	Query(ctx context.Context, sql string, opts storage.QueryOptions) (storage.QueryResult, error)

	// Device registry.
	CreateDevice(ctx context.Context, d storage.Device) error
	GetDevice(ctx context.Context, id string) (storage.Device, error)
	ListDevices(ctx context.Context) ([]storage.Device, error)
	SetDeviceEnabled(ctx context.Context, id string, enabled bool) error
	// DeleteDevice removes the device, its tokens and sessions; with purge its
	// readings too (otherwise they stay, queryable under the device id).
	DeleteDevice(ctx context.Context, id string, purge bool) error
	TouchDevice(ctx context.Context, id string, seen time.Time) error

	AddDeviceToken(ctx context.Context, t storage.DeviceToken) error
	// ExpireDeviceTokens sets ExpiresAt=at on every token of the device that
	// has none or a later one, except the token whose hash is keep (may be nil).
	ExpireDeviceTokens(ctx context.Context, device string, keep []byte, at time.Time) error
	// LookupDeviceToken finds a token by hash, with its device's enabled
	// flag and watermark; storage.ErrNotFound if absent.
	LookupDeviceToken(ctx context.Context, hash []byte) (storage.DeviceToken, error)

	AddAPIKey(ctx context.Context, k storage.APIKey) error
	LookupAPIKey(ctx context.Context, hash []byte) (storage.APIKey, error)
	ListAPIKeys(ctx context.Context) ([]storage.APIKey, error)
	RevokeAPIKey(ctx context.Context, id string, at time.Time) error

	// OpenSession records a session and advances the device's last_seen to
	// its start; CloseSession records its end and advances last_seen to it.
	// Each is one transaction, so a handshake costs one commit.
	OpenSession(ctx context.Context, s storage.Session) error
	CloseSession(ctx context.Context, id string, ended time.Time, reason string, readings int64) error
	ListSessions(ctx context.Context, device string, limit int) ([]storage.Session, error)
	// RecordSessions writes a group of session opens and closes in one
	// transaction (the device session log's group commit); see
	// storage.SessionGroup for what is skipped and how last_seen moves.
	RecordSessions(ctx context.Context, g storage.SessionGroup) error
}
