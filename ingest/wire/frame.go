package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tinylib/msgp/msgp"
)

// Subprotocol is protocol v1's WebSocket subprotocol (docs/protocol.md 1):
// the one definition that the server and the Go client both use.
const Subprotocol = "meridian.v1"

// WebSocket close codes of protocol v1 (docs/protocol.md, "Close codes").
const (
	CloseGoingAway     = 1001 // server shutting down
	CloseProtocol      = 1002 // protocol violation (bad seq, unknown type, batch size)
	CloseUnsupported   = 1003 // text frame
	CloseInvalidData   = 1007 // undecodable MessagePack or wrong field types
	ClosePolicy        = 1008 // disabled, revoked, session taken over
	CloseTooBig        = 1009 // frame over max_frame
	CloseInternal      = 1011 // server error
	CloseTryAgainLater = 1013 // overloaded or rate limited
)

// MaxDepth is how deeply maps and arrays may nest in a device frame. A batch
// needs 3 levels (frame map, readings array, reading array); a command result
// payload gets the rest. The limit keeps every later pass (msgp.Skip is
// recursive) far from stack trouble on hostile input.
const MaxDepth = 32

// ProtocolError is a frame the server refuses; Close is the WebSocket close
// code, Code the machine-readable code sent in the error frame.
type ProtocolError struct {
	Close   int
	Code    string
	Message string
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

func invalid(format string, args ...any) *ProtocolError {
	return &ProtocolError{Close: CloseInvalidData, Code: "invalid_frame", Message: fmt.Sprintf(format, args...)}
}

// Protocol returns a protocol-violation error (close 1002).
func Protocol(code, format string, args ...any) *ProtocolError {
	return &ProtocolError{Close: CloseProtocol, Code: code, Message: fmt.Sprintf(format, args...)}
}

// CheckStructure walks one MessagePack value without decoding it and fails
// on truncation, nesting deeper than MaxDepth, or containers whose headers
// claim more elements than bytes remain. It is iterative, allocates nothing,
// and runs before any decoder touches untrusted bytes. It returns the number
// of bytes the value occupies.
func CheckStructure(b []byte) (int, error) {
	// pending counts the values still to read at each open container level.
	var pending [MaxDepth + 1]uint64
	depth := 0
	pending[0] = 1
	off := 0
	for {
		for depth >= 0 && pending[depth] == 0 {
			depth--
		}
		if depth < 0 {
			return off, nil
		}
		pending[depth]--
		if off >= len(b) {
			return off, msgp.ErrShortBytes
		}
		lead := b[off]
		off++
		var skip, count uint64 // bytes of payload to skip; child values to read
		switch {
		case lead <= 0x7f, lead >= 0xe0, lead == 0xc0, lead == 0xc2, lead == 0xc3:
			// fixint, negative fixint, nil, false, true
		case lead >= 0x80 && lead <= 0x8f:
			count = uint64(lead&0x0f) * 2
		case lead >= 0x90 && lead <= 0x9f:
			count = uint64(lead & 0x0f)
		case lead >= 0xa0 && lead <= 0xbf:
			skip = uint64(lead & 0x1f)
		default:
			var size, n int
			switch lead {
			case 0xcc, 0xd0:
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xca, 0xce, 0xd2:
				skip = 4
			case 0xcb, 0xcf, 0xd3:
				skip = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1,2,4,8,16 + type byte
				skip = 1 + uint64(1)<<(lead-0xd4)
			case 0xc4, 0xd9: // bin8, str8
				size = 1
			case 0xc5, 0xda:
				size = 2
			case 0xc6, 0xdb:
				size = 4
			case 0xc7, 0xc8, 0xc9: // ext8/16/32: length then type byte
				size, n = 1<<(lead-0xc7), 1
			case 0xdc: // array16
				size, n = 2, -1
			case 0xdd:
				size, n = 4, -1
			case 0xde: // map16
				size, n = 2, -2
			case 0xdf:
				size, n = 4, -2
			default: // 0xc1 is never used
				return off, fmt.Errorf("invalid MessagePack type byte 0x%02x at offset %d", lead, off-1)
			}
			if size > 0 {
				if off+size > len(b) {
					return off, msgp.ErrShortBytes
				}
				var l uint64
				switch size {
				case 1:
					l = uint64(b[off])
				case 2:
					l = uint64(binary.BigEndian.Uint16(b[off:]))
				case 4:
					l = uint64(binary.BigEndian.Uint32(b[off:]))
				}
				off += size
				switch n {
				case -1:
					count = l
				case -2:
					count = l * 2
				default:
					skip = l + uint64(n)
				}
			}
		}
		if skip > uint64(len(b)-off) {
			return off, msgp.ErrShortBytes
		}
		off += int(skip)
		if count > 0 {
			// Every value takes at least one byte: a header claiming more
			// values than bytes remain is truncated or hostile.
			if count > uint64(len(b)-off) {
				return off, msgp.ErrShortBytes
			}
			if depth+1 > MaxDepth {
				return off, fmt.Errorf("nesting deeper than %d levels", MaxDepth)
			}
			depth++
			pending[depth] = count
		}
	}
}

// Decode parses one device frame: exactly one MessagePack map with a string
// "type". It returns *Batch or *Result, or a *ProtocolError naming the close
// code. Unknown keys are ignored.
func Decode(b []byte) (any, error) {
	n, err := CheckStructure(b)
	if err != nil {
		return nil, invalid("undecodable MessagePack: %v", err)
	}
	if n != len(b) {
		return nil, invalid("%d trailing bytes after the frame's map", len(b)-n)
	}
	if msgp.NextType(b) != msgp.MapType {
		return nil, invalid("a frame must be a MessagePack map, got %s", msgp.NextType(b))
	}
	typ, err := peekType(b)
	if err != nil {
		return nil, invalid("field \"type\": %v", fieldErr(err))
	}
	switch typ {
	case TypeBatch:
		var m Batch
		if _, err := m.UnmarshalMsg(b); err != nil {
			return nil, invalid("batch: %v", fieldErr(err))
		}
		return &m, nil
	case TypeResult:
		var m Result
		if _, err := m.UnmarshalMsg(b); err != nil {
			return nil, invalid("result: %v", fieldErr(err))
		}
		return &m, nil
	case "":
		return nil, Protocol("missing_type", `frame has no "type" key`)
	default:
		return nil, Protocol("unknown_type", "unknown message type %q", truncate(typ, 32))
	}
}

// fieldErr turns msgp's wrapped errors ("Seq: msgp: attempted to decode type
// "str" with method for "uint"") into something a firmware author can read.
func fieldErr(err error) string {
	var te msgp.TypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%v (wrong type)", err)
	}
	return err.Error()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// TypeOf returns the "type" of a frame without decoding the rest (clients
// such as firmware-sim dispatch on it). "" if the map has no "type" key.
func TypeOf(b []byte) (string, error) { return peekType(b) }

// peekType reads the top-level map's keys until it finds "type" and returns
// its string value, skipping other values. Encoders put "type" first, so the
// common case reads a few bytes instead of skipping a whole batch of
// readings (which the generated envelope decoder did: it was the second
// most expensive step of decoding a batch). The frame has passed
// CheckStructure before this runs on device input.
func peekType(b []byte) (string, error) {
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return "", err
	}
	for i := uint32(0); i < n; i++ {
		var key []byte
		key, b, err = msgp.ReadMapKeyZC(b)
		if err != nil {
			return "", err
		}
		if string(key) == "type" {
			typ, _, err := msgp.ReadStringBytes(b)
			if err != nil {
				return "", msgp.WrapError(err, "type")
			}
			return typ, nil
		}
		if b, err = msgp.Skip(b); err != nil {
			return "", err
		}
	}
	return "", nil
}
