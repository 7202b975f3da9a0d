// Package storage holds what the storage backends (storage/postgres,
// storage/sqlite) share: their configuration, the value types of the read
// side (series, read-only query results), the device registry records, and
// the sentinel errors callers branch on.
//
// The backends return concrete types; consumers (ingest, devices, cmd)
// declare the small interfaces they need and storage/backend, which opens a
// backend for the binary, asserts that each backend fits them all. This package imports nothing of ours but telemetry.
package storage

import (
	"encoding/json"
	"errors"
	"time"
)

// Modes a backend reports from Mode(): shown in logs, `meridian migrate
// --status` and /readyz.
const (
	ModeTimescale = "timescaledb" // postgres with the timescaledb extension
	ModePostgres  = "postgres"    // plain PostgreSQL, native partitioning
	ModeSQLite    = "sqlite"      // the embedded default
)

var (
	// ErrNotFound: the named device, token or key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: creating something whose id is taken.
	ErrExists = errors.New("already exists")
	// ErrReadOnly: a read-only query tried to write.
	ErrReadOnly = errors.New("query must be read-only")
	// ErrNotAllowed: an ad-hoc query touched something outside the public
	// schema (docs/sql.md), or ad-hoc queries are refused until a
	// least-privilege query role is configured.
	ErrNotAllowed = errors.New("not allowed")
	// ErrSchemaTooNew: the database was migrated by a newer binary.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary")
)

// Retention and rollup settings shared by every backend.
type Retention struct {
	// Raw is how long raw readings are kept; 0 keeps them forever.
	Raw time.Duration
	// Rollups is how long telemetry_1m/telemetry_1h rows are kept; 0 = forever.
	Rollups time.Duration
}

// SeriesRequest asks for one device's metric between From and To
// (inclusive From, exclusive To), at most Points points.
type SeriesRequest struct {
	Device string
	Metric string
	From   time.Time
	To     time.Time
	Points int
}

// SeriesPoint is one point of a series. For raw data Min == Max == Avg ==
// Last and Count == 1; for bucketed data they summarise the bucket so spikes
// survive downsampling.
type SeriesPoint struct {
	Time  time.Time `json:"t"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Avg   float64   `json:"avg"`
	Last  float64   `json:"last"`
	Count int64     `json:"count"`
}

// Series is the answer to a SeriesRequest.
type Series struct {
	Device string `json:"device"`
	Metric string `json:"metric"`
	// Source is "raw", "1m" or "1h" (or a coarser bucket computed from one of
	// them), so a client knows what it is looking at.
	Source string `json:"source"`
	// Bucket is the bucket width; 0 for raw. JSON carries it as bucket_ms.
	Bucket time.Duration `json:"-"`
	Points []SeriesPoint `json:"points"`
}

// MarshalJSON writes the bucket width in milliseconds (bucket_ms) and point
// times as Unix milliseconds, the units the dashboard and API clients use.
func (s Series) MarshalJSON() ([]byte, error) {
	type point struct {
		T     int64   `json:"t"`
		Min   float64 `json:"min"`
		Max   float64 `json:"max"`
		Avg   float64 `json:"avg"`
		Last  float64 `json:"last"`
		Count int64   `json:"count"`
	}
	pts := make([]point, len(s.Points))
	for i, p := range s.Points {
		pts[i] = point{T: p.Time.UnixMilli(), Min: p.Min, Max: p.Max, Avg: p.Avg, Last: p.Last, Count: p.Count}
	}
	return json.Marshal(struct {
		Device   string  `json:"device"`
		Metric   string  `json:"metric"`
		Source   string  `json:"source"`
		BucketMs int64   `json:"bucket_ms"`
		Points   []point `json:"points"`
	}{s.Device, s.Metric, s.Source, s.Bucket.Milliseconds(), pts})
}

// QueryOptions bound a read-only SQL query.
type QueryOptions struct {
	// Timeout is the statement timeout; 0 means the backend default (10s).
	Timeout time.Duration
	// MaxRows caps the rows returned; 0 means the default (10,000). Result
	// sets larger than that are truncated and Truncated is set.
	MaxRows int
	// MaxBytes caps the result's size, counted as values stream in (about
	// their size as text); 0 means DefaultQueryMaxBytes. A result that
	// would pass it is truncated before the row that crosses it, with
	// TruncatedBy "bytes". Backends also refuse single values larger than
	// this before they reach memory where they can.
	MaxBytes int64
}

// DefaultQueryMaxBytes bounds a query result when QueryOptions.MaxBytes is
// 0: 10,000 rows of a few short columns are ~1 MB, so 16 MiB leaves room for
// wide rows while a handful of concurrent queries stay far from the memory
// of a small host.
const DefaultQueryMaxBytes = 16 << 20

// valueOverhead is what holding one value costs in memory beyond its bytes:
// the row's interface slot and a string or slice header. Counting it keeps
// a result of many tiny values (1,000 one-character columns) as bounded in
// memory as one of a few large ones.
const valueOverhead = 32

// ValueSize is what one result value counts against QueryOptions.MaxBytes:
// about its length as JSON or CSV text (blobs as hex), plus what holding it
// costs (valueOverhead).
func ValueSize(v any) int64 {
	switch x := v.(type) {
	case nil:
		return 4
	case string:
		return int64(len(x)) + valueOverhead
	case []byte:
		return 2*int64(len(x)) + valueOverhead
	case time.Time:
		return 32
	default:
		return 24
	}
}

// QueryResult is a read-only query's answer, values already converted to
// JSON-friendly Go values (string, int64, float64, bool, time.Time, nil).
type QueryResult struct {
	Columns   []string `json:"columns"`
	Rows      [][]any  `json:"rows"`
	Truncated bool     `json:"truncated"`
	// TruncatedBy says which cap cut the result short: "rows" or "bytes".
	TruncatedBy string `json:"truncated_by,omitempty"`
}

// Why a QueryResult was truncated.
const (
	TruncatedRows  = "rows"
	TruncatedBytes = "bytes"
)

// Device is a registry record.
type Device struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Enabled   bool              `json:"enabled"`
	CreatedAt time.Time         `json:"created_at"`
	LastSeen  *time.Time        `json:"last_seen,omitempty"`
	// Acked is the device's durable watermark (highest committed seq).
	Acked uint64 `json:"acked"`
}

// DeviceToken is a device token record; only the hash is stored.
type DeviceToken struct {
	Hash      []byte     `json:"-"`
	DeviceID  string     `json:"device"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // set when rotated out (grace) or revoked
	// DeviceEnabled and DeviceAcked are the device's enabled flag and
	// watermark (acked_seq), read with the token by LookupDeviceToken so
	// that a device handshake is one store query (a reconnect storm runs
	// thousands a second); AddDeviceToken ignores them.
	DeviceEnabled bool   `json:"-"`
	DeviceAcked   uint64 `json:"-"`
}

// APIKey is an operator key record; only the hash is stored.
type APIKey struct {
	ID        string     `json:"id"` // short public prefix that names the key
	Hash      []byte     `json:"-"`
	Name      string     `json:"name"`
	Role      string     `json:"role"` // "admin" or "viewer"
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// Session is a device_sessions record.
type Session struct {
	ID          string     `json:"id"`
	DeviceID    string     `json:"device"`
	Node        string     `json:"node"`
	RemoteAddr  string     `json:"remote_addr"`
	Transport   string     `json:"transport"` // "ws" or "http"
	StartedAt   time.Time  `json:"started_at"`
	EndedAt     *time.Time `json:"ended_at,omitempty"`
	CloseReason string     `json:"close_reason,omitempty"`
	Readings    int64      `json:"readings"`
}
