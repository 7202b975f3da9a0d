// Package telemetry holds the leaf value types that travel through Meridian:
// a reading, a batch of readings from one device, and the outcome of
// committing a batch. It imports nothing of ours so that every other package
// (ingest, storage backends, bridge, dashboard, firmware-sim) can share these
// types without import cycles.
//
// The types are plain values with no behaviour that needs locking; callers
// that share a Batch across goroutines must not mutate it after handing it on.
package telemetry

import "errors"

// Reading is one validated measurement.
type Reading struct {
	// Time is Unix time in milliseconds, UTC. Already resolved: a device that
	// sent nil has been stamped with the server's receive time by ingest.
	Time int64
	// Metric is 1..128 bytes of [A-Za-z0-9_.:/-] (see docs/protocol.md).
	Metric string
	// Value is the reading; booleans arrive here as 1 or 0.
	Value float64
}

// Batch is the unit of durability: every reading of a batch and the device's
// watermark advance to Seq commit together, or none of it does.
type Batch struct {
	// Device is the device's id (its slug, e.g. "boiler-7").
	Device string
	// Seq is the device's sequence number for this batch, > 0.
	Seq uint64
	// Readings are the accepted readings; may be empty when every reading of
	// the batch was rejected (the watermark still advances so the device's
	// resend window closes).
	Readings []Reading
}

// Outcome is what a store reports for one batch of a commit.
type Outcome struct {
	// Duplicate is true when Seq was at or below the device's durable
	// watermark at commit time: nothing of the batch was stored.
	Duplicate bool
}

// ErrUnknownDevice is returned by lookups of a device id the store does not
// know.
var ErrUnknownDevice = errors.New("unknown device")

// ErrOffline: a command's device has no live session on this node. Ingest
// returns it from SendCommand; the bridge answers the command "offline" (or
// queues it) when it sees it.
var ErrOffline = errors.New("device offline")

// ErrCommandQueueFull: the device's command queue is full (it is not
// reading). Ingest returns it from SendCommand; the bridge answers "busy".
var ErrCommandQueueFull = errors.New("device command queue full")

// ErrInvalidData is wrapped by a store's Commit when the data itself was
// refused (a value out of range, a violated constraint), as opposed to the
// store being unavailable: committing the same batches again fails again, so
// the caller must isolate the offending batch instead of retrying the set.
var ErrInvalidData = errors.New("data refused by the store")

// Command is an operator's command for one device. Payload is MessagePack
// (any value, nil for none); bridges convert from and to JSON.
type Command struct {
	ID      string
	Name    string
	Payload []byte
}

// CommandResult is a device's answer to a Command.
type CommandResult struct {
	Device  string
	ID      string
	OK      bool
	Payload []byte // MessagePack
	// Error is set by the server, not the device, when the command could not
	// be delivered or answered (e.g. "offline", "timeout").
	Error string
}

// Presence is a device going online or offline on this node.
type Presence struct {
	Device string
	Online bool
	At     int64 // Unix ms
}
