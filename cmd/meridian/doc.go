// Command meridian is the Meridian server and its operator tools.
//
// This package is the only place that reads configuration (viper, from
// defaults, a file, MERIDIAN_* env vars and flags; see settings.go and
// docs/config.md) and the only one that wires the other packages together:
// it opens the configured storage backend (storage/backend chooses it),
// builds the devices service and the ingest server on it, and serves them
// on one HTTP listener with /healthz, /readyz and /metrics. Nothing imports
// it.
//
// main calls run and exits in one place: status 2 for a bad configuration or
// command line, 1 for any other failure.
//
// Concurrency: serve runs the HTTP server, the ingest pipeline, the storage
// housekeeping ticker and the admin-key bootstrap in one errgroup. On SIGINT
// or SIGTERM it stops accepting connections, then lets ingest stop reading,
// commit, ack and close devices within ingest.shutdown_grace, and closes the
// store last. A second signal kills the process.
package main
