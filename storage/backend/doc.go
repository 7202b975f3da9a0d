// Package backend chooses, configures and opens the store of the meridian
// binary: PostgreSQL (TimescaleDB when the extension is installed) when
// storage.url is set, else the embedded SQLite file under server.data_dir.
//
// It owns the storage.* settings that are not one backend's own (Config:
// the URL, retention, housekeeping interval, migrate-at-start, the query
// bounds) and fills them into the backend's config, so each backend keeps
// a Config of its own and knows nothing of the other. Open returns the
// store as Store: the union of the small interfaces its consumers declare
// (ingest.Store, devices.Repo, queryapi.Reader, storage.Maintainer, ...),
// and the assertions beside it are the compile-time promise that both
// backends fit every consumer. That is why this package, unlike the rest of
// storage/, imports ingest and devices: for their interface types only.
// Only cmd/meridian imports it; storage/postgres and storage/sqlite never
// do (they import the storage root, which therefore cannot open them).
//
// Concurrency: Config is a value. An Opened store is safe for concurrent
// use as its backend is; WaitReady may be called from several goroutines.
package backend
