package wire

import (
	"fmt"
	"math"

	"github.com/tinylib/msgp/msgp"
)

// Reading is one element of a batch's "readings" array as it came off the
// wire: [t, metric, value]. Decoding never fails the frame because of one bad
// reading; the reading carries Err instead and Validate rejects it alone.
type Reading struct {
	// T is the device's timestamp in Unix ms; meaningful only when HasT.
	T    int64
	HasT bool // false: t was nil, stamp with the server's receive time
	// Metric is the raw metric name; Validate checks its alphabet and length.
	Metric string
	Value  float64
	// Err is why this reading could not be decoded ("" if it could).
	Err string
}

// Readings is the "readings" array. It has a hand-written codec: msgp cannot
// generate one for a heterogeneous tuple, and a generated slice decoder would
// allocate whatever length the array header claims.
type Readings []Reading

// minReadingSize is the fewest bytes an element of the readings array can
// occupy (a fixint or nil is one byte), so a header claiming more elements
// than the remaining bytes could hold is a lie and fails fast, and the slice
// we allocate is bounded by the frame size we already read.
const minElemSize = 1

// UnmarshalMsg implements msgp.Unmarshaler.
func (rs *Readings) UnmarshalMsg(b []byte) ([]byte, error) {
	n, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return b, fmt.Errorf("readings: %w", err)
	}
	if int64(n)*minElemSize > int64(len(b)) {
		return b, fmt.Errorf("readings: array claims %d elements, only %d bytes follow: %w", n, len(b), msgp.ErrShortBytes)
	}
	out := (*rs)[:0]
	if cap(out) < int(n) {
		out = make(Readings, 0, n)
	}
	// Devices repeat a handful of metric names in every batch: intern them
	// per batch so a 1000-reading batch allocates a few strings, not 1000.
	// (A map lookup keyed by string(bytes) does not allocate.)
	names := make(map[string]string, 8)
	for i := uint32(0); i < n; i++ {
		var r Reading
		b, err = r.unmarshal(b, names)
		if err != nil {
			return b, fmt.Errorf("readings[%d]: %w", i, err)
		}
		out = append(out, r)
	}
	*rs = out
	return b, nil
}

// unmarshal decodes one element. It returns an error only when the bytes are
// not valid MessagePack (the frame is then undecodable); a well-formed element
// of the wrong shape sets r.Err and is skipped.
func (r *Reading) unmarshal(b []byte, names map[string]string) ([]byte, error) {
	if msgp.NextType(b) != msgp.ArrayType {
		r.Err = "reading is not an array [t, metric, value]"
		return msgp.Skip(b)
	}
	n, rest, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return b, err
	}
	if n != 3 {
		r.Err = "reading is not an array [t, metric, value]"
		return msgp.Skip(b)
	}
	b = rest
	// t
	switch msgp.NextType(b) {
	case msgp.NilType:
		b, err = msgp.ReadNilBytes(b)
	case msgp.IntType:
		r.T, b, err = msgp.ReadInt64Bytes(b)
		r.HasT = true
	case msgp.UintType:
		var u uint64
		u, b, err = msgp.ReadUint64Bytes(b)
		r.T, r.HasT = int64(u), true
		if u > math.MaxInt64 {
			r.setErr("t out of range")
		}
	default:
		r.setErr("t must be an integer (Unix ms) or nil")
		b, err = msgp.Skip(b)
	}
	if err != nil {
		return b, err
	}
	// metric
	if msgp.NextType(b) == msgp.StrType {
		var s []byte
		s, b, err = msgp.ReadStringZC(b)
		if err == nil {
			m, ok := names[string(s)]
			if !ok {
				m = string(s)
				if len(names) < 64 { // bound the map for hostile batches
					names[m] = m
				}
			}
			r.Metric = m
		}
	} else {
		r.setErr("metric must be a string")
		b, err = msgp.Skip(b)
	}
	if err != nil {
		return b, err
	}
	// value
	switch msgp.NextType(b) {
	case msgp.IntType:
		var v int64
		v, b, err = msgp.ReadInt64Bytes(b)
		r.Value = float64(v)
	case msgp.UintType:
		var v uint64
		v, b, err = msgp.ReadUint64Bytes(b)
		r.Value = float64(v)
	case msgp.Float32Type, msgp.Float64Type:
		r.Value, b, err = msgp.ReadFloat64Bytes(b)
		if err == nil && (math.IsNaN(r.Value) || math.IsInf(r.Value, 0)) {
			r.setErr("value must be a finite number")
		}
	case msgp.BoolType:
		var v bool
		v, b, err = msgp.ReadBoolBytes(b)
		if v {
			r.Value = 1
		}
	default:
		r.setErr("value must be an int, float or bool")
		b, err = msgp.Skip(b)
	}
	return b, err
}

func (r *Reading) setErr(s string) {
	if r.Err == "" {
		r.Err = s
	}
}

// MarshalMsg implements msgp.Marshaler: [t|nil, metric, value(float64)].
func (rs Readings) MarshalMsg(b []byte) ([]byte, error) {
	b = msgp.AppendArrayHeader(b, uint32(len(rs)))
	for _, r := range rs {
		b = msgp.AppendArrayHeader(b, 3)
		if r.HasT {
			b = msgp.AppendInt64(b, r.T)
		} else {
			b = msgp.AppendNil(b)
		}
		b = msgp.AppendString(b, r.Metric)
		b = msgp.AppendFloat64(b, r.Value)
	}
	return b, nil
}

// Msgsize implements msgp.Sizer (an upper bound).
func (rs Readings) Msgsize() int {
	n := msgp.ArrayHeaderSize
	for _, r := range rs {
		n += msgp.ArrayHeaderSize + msgp.Int64Size + msgp.StringPrefixSize + len(r.Metric) + msgp.Float64Size
	}
	return n
}
