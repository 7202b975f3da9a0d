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
// Concurrency contract: Committed, Presence and Result are called from
// ingest's goroutines and never block: Committed pushes into a bounded
// drop-oldest ring, Presence and Result update state under one mutex and
// queue publishes. Exactly one publisher goroutine publishes: with an
// external broker through paho, keeping at most 64 publishes in flight and
// publishing only while connected; with the embedded broker in-process
// (mochi's inline client), synchronously, and only what some client can
// receive (subIndex). paho's message handler, or the embedded broker's
// inline subscription, only classifies a message and enqueues it without
// blocking (full queues drop and count); one worker goroutine acts on
// commands, ownership and status records, and calls Devices (which must
// not block either). Lock order: Bridge.mu before Bridge.link.connMu;
// neither is held while calling Devices, paho or callbacks. subIndex.mu and
// statusTable.mu are leaves, taken inside the broker's hooks.
//
// Parts: link (bridge.go) is the way to the broker, paho or in-process;
// the ring (queue.go) and the publisher (publisher.go) carry telemetry,
// status and events out; ownership (worker.go, docs/scaling.md "Cluster
// protocol") is the node's view of who holds which device; commandQueue
// and the worker route commands and results.
//
// bridge imports no ingest, devices, storage or dashboard code: it declares
// Devices and takes the authenticator and error classifiers as functions;
// cmd/meridian wires them.
package bridge
