package wire

import "github.com/tinylib/msgp/msgp"

//go:generate go tool msgp -file=messages.go -o=messages_gen.go -tests=false -io=false

// Message type names: the value of every frame's "type" key.
const (
	TypeHello   = "hello"
	TypeBatch   = "batch"
	TypeAck     = "ack"
	TypeCommand = "command"
	TypeResult  = "result"
	TypeError   = "error"
)

// Hello is the server's first frame after the upgrade (and the body of
// GET /v1/device/hello).
type Hello struct {
	Type      string `msg:"type"`
	Device    string `msg:"device"`
	Session   string `msg:"session"`
	Acked     uint64 `msg:"acked"`
	Time      int64  `msg:"time"`
	MaxBatch  int    `msg:"max_batch"`
	MaxFrame  int    `msg:"max_frame"`
	Heartbeat int    `msg:"heartbeat"`
}

// Batch is a device's batch of readings. Readings has a hand-written codec
// (readings.go) because a reading is a heterogeneous array and each bad
// reading is rejected on its own rather than failing the frame.
type Batch struct {
	Type     string   `msg:"type"`
	Seq      uint64   `msg:"seq"`
	Readings Readings `msg:"readings"`
}

// Ack acknowledges one batch once it is durable.
type Ack struct {
	Type      string   `msg:"type"`
	Seq       uint64   `msg:"seq"`
	Accepted  int      `msg:"accepted"`
	Rejected  int      `msg:"rejected"`
	Duplicate bool     `msg:"duplicate"`
	Errors    []string `msg:"errors"`
}

// Command is an operator's command to a device.
type Command struct {
	Type    string   `msg:"type"`
	ID      string   `msg:"id"`
	Name    string   `msg:"name"`
	Payload msgp.Raw `msg:"payload"`
}

// Result is a device's answer to a Command.
type Result struct {
	Type    string   `msg:"type"`
	ID      string   `msg:"id"`
	OK      bool     `msg:"ok"`
	Payload msgp.Raw `msg:"payload"`
}

// Error is sent right before a close for a protocol or policy reason.
type Error struct {
	Type    string `msg:"type"`
	Code    string `msg:"code"`
	Message string `msg:"message"`
}
