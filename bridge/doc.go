// Package bridge connects Meridian to MQTT (docs/mqtt.md): every committed
// batch is published after commit, device presence and ownership are
// published as retained records, operator commands arrive on
// <prefix>/<device>/commands (or POST /v1/admin/devices/{id}/commands) and
// the device's result goes back out. With no broker URL it runs an embedded
// broker (mochi-mqtt) that authenticates clients with operator API keys.
// Several nodes sharing one broker use it as their bus: commands reach the
// node holding the device, a device reconnecting elsewhere has its old
// session closed, and each node sees the others' live readings
// (docs/scaling.md).
//
// Concurrency contract: Committed, Presence, Result and Kick are called
// from ingest's (or the registry's) goroutines and never block: Committed
// pushes into a bounded drop-oldest ring, the others update a part's state
// under its lock and queue publishes. Exactly one publisher goroutine
// publishes: with an external broker through paho, keeping at most 64
// publishes in flight and publishing only while connected; with the
// embedded broker in-process (mochi's inline client), synchronously, and
// only what some client can receive (subIndex). paho's message handler, or
// the embedded broker's inline subscription, only classifies a message and
// enqueues it without blocking (full queues drop and count); one worker
// goroutine acts on commands, ownership and status records, and calls
// Devices (which must not block either); one more hands other nodes'
// telemetry to the OnRemoteBatch callback.
//
// Parts (each a type with its own state, in its own file): link (link.go,
// broker.go) is the way to the broker, paho or in-process; publisher
// (publisher.go, with the ring in queue.go) publishes telemetry, records
// and events; cluster (cluster.go, docs/scaling.md "Cluster protocol") is
// the node's view of the other nodes and of who holds which device, and
// the kicks between nodes; router (router.go, http.go) routes commands,
// queues them for offline devices, hands them off to the device's new
// node, and publishes results. Bridge (bridge.go, worker.go) composes them.
//
// Locks: cluster.mu, router.mu, link.connMu and the ring's lock never
// nest. Each is held only inside its own part's methods, which call no
// other part, no Devices method, no paho call and no callback while
// holding it. subIndex.mu, statusTable.mu and authHook.mu are leaves,
// taken inside the embedded broker's hooks.
//
// bridge imports no ingest, devices, storage or dashboard code: it declares
// Devices and takes the authenticator and error classifiers as functions;
// cmd/meridian wires them.
package bridge
