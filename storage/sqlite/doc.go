// Package sqlite is Meridian's embedded storage backend: one SQLite file
// (<data_dir>/meridian.db), used when no database URL is configured. It
// offers the same contract as storage/postgres (see storage/storagetest):
// atomic commits of readings plus per-device watermarks, retention, 1-minute
// and 1-hour rollups maintained by the service, series for the dashboard and
// read-only SQL over the public views.
//
// The driver is github.com/ncruces/go-sqlite3 (SQLite compiled to Wasm and
// translated to Go: no cgo, so cross-compiling for ARM edge hosts is plain
// `GOARCH=arm64 go build`). It won a benchmark against modernc.org/sqlite
// on this project's insert pattern, mostly through its direct statement
// API, which the commit path uses (see commit.go).
//
// Schema (migrations/sqlite): the public names match PostgreSQL's
// (telemetry, telemetry_1m, telemetry_1h, devices, metrics,
// device_sessions). Internally times are Unix milliseconds (integers:
// compact, exact, cheap to index); the views and registry tables show UTC
// text 'YYYY-MM-DD HH:MM:SS.SSS', SQLite's own datetime format, so times
// sort as text and compare directly with datetime('now', '-1 hour') in the
// sqlite3 CLI and in `meridian query`.
//
// Concurrency: a Store is safe for concurrent use. SQLite allows one writer
// at a time, so every write (commits, registry changes, housekeeping) goes
// through a single writer connection and is serialised by database/sql's
// pool of size one; readers (Series, token/key/watermark lookups) use a
// separate small pool of read-only connections that WAL mode lets run beside
// the writer, and ad-hoc SQL (Query) a third pool of its own, so a slow query
// never delays a device handshake. Query connections carry an authorizer
// (public schema only), a hard heap limit and a maximum value length.
// Housekeeping works in short transactions so commits are not held up for
// long. The in-memory name->id caches are guarded by a mutex and only learn
// ids whose registering transaction committed.
package sqlite
