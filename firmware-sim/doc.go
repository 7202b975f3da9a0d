// Package sim is Meridian's device fleet simulator (`meridian sim`): the
// load generator and demo driver, and the project's own proof that the
// ingest contract holds (acked means stored, exactly once).
//
// A simulated device behaves like firmware written from docs/protocol.md
// and nothing else: of Meridian it imports only ingest/telemetry,
// ingest/wire and the public Go device client, clients/go/meridian, whose
// Conn, Ring, RingFile, Backoff and HTTPDevice carry its protocol mechanics
// (so there is one Go device implementation, not two). It connects with its Bearer token, reads hello, keeps a bounded
// ring of unacked batches (in memory, or in a file per device under
// Config.StateDir so a simulator restart resends them), drops entries at or
// below hello.acked and resends the rest in seq order, reconnects with
// exponential backoff and full jitter (longer after 1013 and 1008), answers
// pings and commands, and restarts its seq after hello.acked when a reboot
// lost the counter. A share of devices use the HTTP fallback instead.
// Readings come from sensor profiles (temperature, humidity, pressure,
// battery, vibration, door) with daily cycles, noise, drift and spikes; each
// reading's (metric, t) is unique per device, so the store can be compared
// with the ledger exactly. Chaos (all off by default) drops connections,
// stalls devices, skews clocks, sends invalid readings and undecodable
// frames, and reboots devices.
//
// Verification. With Config.Verify each device keeps a ledger of every
// batch version it sent and what the server said about it: a non-duplicate
// ack means exactly that batch's valid readings were stored; a duplicate ack
// or a hello.acked at or above its seq means one version of that seq was
// stored earlier. Verify then reads every device's rows back with SQL over
// the public `telemetry(time, device, metric, value)` view (docs/sql.md) and
// checks: every acked reading stored exactly once, nothing stored that was
// never sent, rejected readings absent, every batch stored whole or not at
// all. The SQL runs through a QueryFunc, so the package never imports
// storage: `meridian sim --verify` passes the configured store's read-only
// Query (the same path as `meridian query`), and HTTPQuery offers the
// server's GET /v1/query with an API key for a remote server.
//
// Concurrency: each device is one goroutine that owns its connection, ring,
// signal generator and ledger; it reads its socket with a deadline set to
// its next timed duty (sample, flush, chaos), so reading acks and writing
// batches need no second goroutine, and 19,000 devices fit one process
// (RaiseFileLimit lifts the soft open-file limit first): measured at about
// 14 KiB per connected device (8 KiB goroutine stack, the rest heap), 270 MB
// RSS for 19,000 devices. Fleet-wide counters
// are atomics; Fleet.Run owns the device goroutines and returns after all
// have stopped. Verify runs after Run, when no device touches its ledger.
package sim
