// Package migrations embeds the versioned SQL schema of every storage
// backend, in goose format (github.com/pressly/goose/v3), so the binary
// carries its schema and `meridian migrate` needs no files on disk.
//
// Layout:
//
//	postgres/   PostgreSQL, plain mode (native partitioning, rollup tables)
//	timescale/  PostgreSQL with TimescaleDB: files here replace the postgres/
//	            file of the same name (same version), so both modes share
//	            one version sequence and the registry schema
//	sqlite/     the embedded SQLite store
//
// The package only hands out file systems; running them (locking, version
// checks) is the backends' job. It imports nothing and holds no state beyond
// the read-only embedded files, so it is safe for concurrent use.
package migrations
