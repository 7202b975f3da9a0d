// Package postgres is Meridian's production storage backend: readings,
// watermarks, the device registry, rollups, retention, the dashboard's series
// and read-only SQL, on PostgreSQL 14+ through pgx.
//
// Two modes, chosen once per database and recorded in it: with the
// timescaledb extension, readings live in a compressed hypertable and the
// rollups are continuous aggregates; without it, readings are partitioned by
// day and the rollups are tables this package maintains (Maintain). Both
// expose the same public SQL surface (telemetry, devices, metrics,
// telemetry_1m, telemetry_1h; see docs/sql.md).
//
// Open never needs the database to be up: the pool connects lazily and a
// background goroutine detects the mode and migrates on first contact,
// retrying with backoff, until Close. Until then every data method returns an
// error wrapping ErrNotReady.
//
// Concurrency: a *Store is safe for concurrent use by many goroutines and
// many nodes sharing one database. Commit serialises writers of the same
// device on that device's row lock (rows locked in device-name order, so
// concurrent commits cannot deadlock); Maintain runs on one node at a time
// (advisory lock); migrations are serialised by goose's session lock. The
// name caches are sync.Maps whose entries never change once written.
// Ad-hoc SQL (Query) runs on a second, small pool that logs in as
// Config.QueryURL's least-privilege role, so it never holds the
// connections commits and lookups need.
//
// In TimescaleDB mode the compression, retention and refresh policies are
// set from Config at every start, and Maintain also does their work by hand,
// so nothing depends on TimescaleDB's job scheduler. Where the scheduler
// does run them, a refresh, compression or drop a policy job holds at that
// moment is skipped by Maintain and left for its next run (dirty hours stay
// marked).
package postgres
