// Package devices is Meridian's registry logic: who may connect and who may
// look. It issues and checks device tokens (with rotation grace and
// revocation), lets a fleet provision itself with a shared provisioning key,
// manages operator API keys with the roles "admin" and "viewer", applies the
// per-device rate limits, and serves the admin HTTP API (/v1/admin/...) and
// POST /v1/provision.
//
// Credentials are kept apart by prefix: device tokens start with "mdt_" and
// API keys with "mak_", so a device token is refused before any lookup when
// presented as an operator key, and the other way round. Secrets are 32 random
// bytes, returned once and stored only as their SHA-256 hash; a stored hash is
// compared with crypto/subtle after the lookup, so a backend that matched
// loosely could not let a wrong secret through.
//
// The package owns the small Repo interface it needs from storage; the storage
// backends satisfy it and cmd/meridian does the wiring. Authentication errors
// wrap ErrUnauthorized, whose type has an `Unauthorized() bool` method, so
// ingest can recognise them with errors.As against its own one-method
// interface without importing this package.
//
// Successful credential lookups are cached for at most a second (credCache);
// every change that ends a credential on this node forgets it first, and
// ForgetDevice lets the wiring do the same when another node's kick arrives.
//
// SessionLog records device sessions (device_sessions, last_seen) for ingest
// through a bounded queue that one goroutine writes a group per transaction.
//
// Concurrency: a *Service is safe for concurrent use by any number of
// goroutines. The rate-limiter maps and the credential caches are guarded by
// their own mutexes and bounded in size; kick callbacks are called
// synchronously, outside any lock, after the store change they announce has
// been made, so they must not block (ingest only signals the session to
// close). A kick reaches the session on whichever node holds it: cmd wires
// the callback to this node's ingest and to the MQTT bridge, which forwards
// it to the other nodes (<prefix>/_kick, docs/scaling.md); a node that
// misses the message learns of a revoked or disabled device at its next
// authentication after its cache entry expires (at most a second). A
// *SessionLog's Opened and Closed are safe from any goroutine; Run is its
// only writer and Close drains it.
package devices
