// Package ingest is the device side of Meridian: the WebSocket endpoint and
// its HTTP fallback (protocol v1, docs/protocol.md), device sessions with
// one-session-per-device takeover, and the batching pipeline that commits
// readings through a Store and acknowledges each batch only once it is
// durable.
//
// Concurrency contract: each WebSocket session sits on a wsconn.Conn (the
// connection core in ingest/wsconn), which runs at most one reader and one
// writer per socket and neither while the session is idle; the session's
// Message handler runs on the reader and owns the per-connection seq. The
// pipeline shards devices over Config.Writers writer goroutines
// by a hash of the device id, so a device's batches commit and are acked in
// submission order whichever transport carried them. All queues are bounded:
// QueueReadings over the whole pipeline (a full queue pauses socket reads),
// SessionQueue in-flight batches per session, 16 queued commands per
// session. A device over its readings rate is paced the same way (its socket
// is not read) for up to RatePauseMax. Server methods are safe for
// concurrent use.
//
// ingest imports no storage, devices, bridge or dashboard code: it declares
// the small interfaces it needs (Store, Authenticator, Limiter,
// SessionRecorder) and cmd/meridian wires the implementations in.
package ingest
