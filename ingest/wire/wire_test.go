package wire

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"
)

// frame builds a MessagePack map from alternating key/value appenders, so
// tests can choose exact encodings (int8 vs uint64, float32, nil...).
func frame(kv ...func([]byte) []byte) []byte {
	b := msgp.AppendMapHeader(nil, uint32(len(kv)/2))
	for _, f := range kv {
		b = f(b)
	}
	return b
}

func str(s string) func([]byte) []byte {
	return func(b []byte) []byte { return msgp.AppendString(b, s) }
}
func raw(x ...byte) func([]byte) []byte {
	return func(b []byte) []byte { return append(b, x...) }
}
func arr(n uint32, elems ...func([]byte) []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		b = msgp.AppendArrayHeader(b, n)
		for _, e := range elems {
			b = e(b)
		}
		return b
	}
}

func TestDecodeBatchEncodings(t *testing.T) {
	b := frame(
		str("type"), str("batch"),
		str("extra"), arr(2, raw(0x01), str("ignored")), // unknown keys are skipped
		str("seq"), raw(0xd0, 0x07), // int8 7
		str("readings"), arr(5,
			arr(3, raw(0xcf, 0, 0, 1, 0x8f, 0x0d, 0x18, 0x3c, 0x00), str("temp"), raw(0xca, 0x41, 0xc8, 0, 0)), // uint64 t, float32 25.0
			arr(3, raw(0xc0), str("door"), raw(0xc3)),                                                          // nil t, true
			arr(3, raw(0x01), str("n"), raw(0xd1, 0xff, 0x38)),                                                 // int16 -200
			arr(3, raw(0x01), str("x"), str("not a number")),                                                   // bad value
			raw(0x05), // not an array
		),
	)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	bt := m.(*Batch)
	if bt.Seq != 7 || len(bt.Readings) != 5 {
		t.Fatalf("got seq %d, %d readings", bt.Seq, len(bt.Readings))
	}
	r := bt.Readings
	if !r[0].HasT || r[0].T != 0x18f0d183c00 || r[0].Metric != "temp" || r[0].Value != 25 || r[0].Err != "" {
		t.Errorf("reading 0: %+v", r[0])
	}
	if r[1].HasT || r[1].Value != 1 {
		t.Errorf("reading 1: %+v", r[1])
	}
	if r[2].Value != -200 {
		t.Errorf("reading 2: %+v", r[2])
	}
	if r[3].Err == "" || r[4].Err == "" {
		t.Errorf("bad readings not flagged: %+v %+v", r[3], r[4])
	}
}

func TestDecodeErrors(t *testing.T) {
	deep := bytes.Repeat([]byte{0x81, 0xa1, 'k'}, 10000)
	deep = append(deep, 0xc0)
	cases := []struct {
		name  string
		in    []byte
		close int
		msg   string
	}{
		{"garbage", []byte{0xc1, 0x00}, CloseInvalidData, "invalid MessagePack"},
		{"empty", nil, CloseInvalidData, "undecodable"},
		{"not a map", msgp.AppendString(nil, "batch"), CloseInvalidData, "must be a MessagePack map"},
		{"truncated", frame(str("type"), str("batch"), str("seq"), raw(0x01))[:10], CloseInvalidData, "undecodable"},
		{"trailing", append(frame(str("type"), str("batch")), 0x00), CloseInvalidData, "trailing"},
		{"deep", append([]byte{0x82, 0xa4, 't', 'y', 'p', 'e', 0xa5, 'b', 'a', 't', 'c', 'h', 0xa1, 'x'}, deep...), CloseInvalidData, "nesting deeper"},
		{"huge array header", frame(str("type"), str("batch"), str("readings"), raw(0xdd, 0x80, 0, 0, 0)), CloseInvalidData, "undecodable"},
		{"huge string header", frame(str("type"), raw(0xdb, 0x7f, 0xff, 0xff, 0xff)), CloseInvalidData, "undecodable"},
		{"type not string", frame(str("type"), raw(0x01)), CloseInvalidData, "type"},
		{"seq wrong type", frame(str("type"), str("batch"), str("seq"), str("1")), CloseInvalidData, "wrong type"},
		{"readings not array", frame(str("type"), str("batch"), str("seq"), raw(1), str("readings"), raw(1)), CloseInvalidData, "readings"},
		{"missing type", frame(str("seq"), raw(1)), CloseProtocol, "no \"type\""},
		{"unknown type", frame(str("type"), str("reboot")), CloseProtocol, "unknown message type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(c.in)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("want ProtocolError, got %v", err)
			}
			if pe.Close != c.close || !strings.Contains(pe.Error(), c.msg) {
				t.Fatalf("got close %d %q, want %d containing %q", pe.Close, pe.Error(), c.close, c.msg)
			}
		})
	}
}

func TestCheckBatchAndValidate(t *testing.T) {
	lim := Limits{MaxBatch: 3, MaxFuture: time.Hour, MaxPast: 24 * time.Hour}
	for _, c := range []struct {
		name string
		b    Batch
		code string // "" = accepted
	}{
		{"seq 1", Batch{Seq: 1, Readings: Readings{{}}}, ""},
		{"seq 2^63-1", Batch{Seq: math.MaxInt64, Readings: Readings{{}}}, ""},
		{"seq 0", Batch{Seq: 0, Readings: Readings{{}}}, "bad_seq"},
		{"seq 2^63", Batch{Seq: math.MaxInt64 + 1, Readings: Readings{{}}}, "bad_seq"},
		{"seq 2^64-1 (erased flash)", Batch{Seq: math.MaxUint64, Readings: Readings{{}}}, "bad_seq"},
		{"empty", Batch{Seq: 1}, "empty_batch"},
		{"oversized", Batch{Seq: 1, Readings: make(Readings, 4)}, "batch_too_large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckBatch(&c.b, lim)
			var pe *ProtocolError
			switch {
			case c.code == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.code == "":
			case !errors.As(err, &pe) || pe.Code != c.code || pe.Close != CloseProtocol:
				t.Fatalf("got %v, want close %d %s", err, CloseProtocol, c.code)
			}
		})
	}
	now := time.UnixMilli(1_700_000_000_000)
	rs := Readings{
		{T: now.UnixMilli(), HasT: true, Metric: "ok.metric/a:b-c_d", Value: 1},
		{HasT: false, Metric: "stamped", Value: 2},
		{T: now.UnixMilli(), HasT: true, Metric: "bad metric", Value: 3},
		{T: now.Add(2 * time.Hour).UnixMilli(), HasT: true, Metric: "future", Value: 4},
		{T: now.Add(-48 * time.Hour).UnixMilli(), HasT: true, Metric: "past", Value: 5},
		{T: now.UnixMilli(), HasT: true, Metric: strings.Repeat("m", 129), Value: 6},
		{T: now.UnixMilli(), HasT: true, Metric: "", Value: 7},
		{Err: "value must be an int, float or bool"},
	}
	ok, rej, errs := Validate(rs, now, lim, nil)
	if len(ok) != 2 || rej != 6 {
		t.Fatalf("accepted %d rejected %d: %v", len(ok), rej, errs)
	}
	if ok[1].Time != now.UnixMilli() {
		t.Errorf("nil t not stamped: %d", ok[1].Time)
	}
	if len(errs) != 4 { // metric (3x same reason), future, past, value
		t.Errorf("want 4 distinct reasons, got %q", errs)
	}
}

func TestRoundTrip(t *testing.T) {
	in := Batch{Type: TypeBatch, Seq: 42, Readings: Readings{{T: 1, HasT: true, Metric: "a", Value: 1.5}, {Metric: "b", Value: -2}}}
	b, err := in.MarshalMsg(nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	out := m.(*Batch)
	if out.Seq != 42 || len(out.Readings) != 2 || out.Readings[0] != in.Readings[0] || out.Readings[1] != in.Readings[1] {
		t.Fatalf("round trip: %+v", out)
	}
	ack := Ack{Type: TypeAck, Seq: 42, Accepted: 2, Errors: []string{}}
	ab, _ := ack.MarshalMsg(nil)
	var back Ack
	if _, err := back.UnmarshalMsg(ab); err != nil || back.Seq != 42 || back.Accepted != 2 {
		t.Fatalf("ack round trip: %+v %v", back, err)
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := (&Batch{Type: TypeBatch, Seq: 1, Readings: Readings{{T: 1, HasT: true, Metric: "t", Value: 1}}}).MarshalMsg(nil)
	res, _ := (&Result{Type: TypeResult, ID: "c1", OK: true, Payload: msgp.Raw{0x80}}).MarshalMsg(nil)
	f.Add(good)
	f.Add(res)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x81, 0xa4, 't', 'y', 'p', 'e', 0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Add(bytes.Repeat([]byte{0x91}, 64))
	// seq at and around the int64 limit of the stores: 2^64-1 is what
	// firmware reading its counter from erased flash sends.
	for _, seq := range []uint64{math.MaxUint64, math.MaxInt64 + 1, math.MaxInt64} {
		b, _ := (&Batch{Type: TypeBatch, Seq: seq, Readings: Readings{{T: 1, HasT: true, Metric: "t", Value: 1}}}).MarshalMsg(nil)
		f.Add(b)
	}
	lim := Limits{MaxBatch: 1000, MaxFuture: time.Hour, MaxPast: time.Hour}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("non-protocol error %T: %v", err, err)
			}
			return
		}
		if bt, ok := m.(*Batch); ok {
			if CheckBatch(bt, lim) == nil {
				if bt.Seq == 0 || bt.Seq > MaxSeq {
					t.Fatalf("seq %d passed CheckBatch", bt.Seq)
				}
				Validate(bt.Readings, time.Now(), lim, nil)
			}
			if len(bt.Readings) > len(b) {
				t.Fatalf("%d readings from %d bytes", len(bt.Readings), len(b))
			}
		}
	})
}

func BenchmarkDecodeValidate(b *testing.B) {
	now := time.Now()
	rs := make(Readings, 1000)
	for i := range rs {
		rs[i] = Reading{T: now.UnixMilli() - int64(i), HasT: true, Metric: "sensor.temperature", Value: float64(i) / 3}
	}
	frame, _ := (&Batch{Type: TypeBatch, Seq: 1, Readings: rs}).MarshalMsg(nil)
	lim := Limits{MaxBatch: 1000, MaxFuture: time.Hour, MaxPast: 30 * 24 * time.Hour}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m, err := Decode(frame)
		if err != nil {
			b.Fatal(err)
		}
		bt := m.(*Batch)
		if err := CheckBatch(bt, lim); err != nil {
			b.Fatal(err)
		}
		ok, _, _ := Validate(bt.Readings, now, lim, nil)
		if len(ok) != 1000 {
			b.Fatal(len(ok))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/reading")
}
