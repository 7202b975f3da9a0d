package meridian

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func TestRing(t *testing.T) {
	r := NewRing[int](3)
	for seq := uint64(1); seq <= 3; seq++ {
		if !r.Push(Entry[int]{Seq: seq}) {
			t.Fatalf("push %d refused", seq)
		}
	}
	if r.Push(Entry[int]{Seq: 4}) || !r.Full() {
		t.Fatal("a full ring took a fourth entry")
	}
	var dropped []uint64
	if n := r.DropThrough(2, func(e *Entry[int]) { dropped = append(dropped, e.Seq) }); n != 2 {
		t.Fatalf("dropThrough(2) removed %d", n)
	}
	if !reflect.DeepEqual(dropped, []uint64{1, 2}) || r.Len() != 1 || r.At(0).Seq != 3 {
		t.Fatalf("after drop: %v, len %d", dropped, r.Len())
	}
	// Wrap around.
	r.Push(Entry[int]{Seq: 4})
	r.Push(Entry[int]{Seq: 5})
	if r.Last() != 5 || r.At(0).Seq != 3 || r.At(2).Seq != 5 {
		t.Fatalf("wrapped order wrong: first %d last %d", r.At(0).Seq, r.Last())
	}
	if n := r.DropThrough(1, nil); n != 0 {
		t.Fatalf("dropping below the front removed %d", n)
	}
	r.Clear(nil)
	if r.Len() != 0 || r.Last() != 0 {
		t.Fatal("clear left entries")
	}
}

func TestRingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dev-1.ring")
	rf, entries, err := OpenRingFile(path, 4)
	if err != nil || len(entries) != 0 {
		t.Fatalf("fresh file: %v, %d entries", err, len(entries))
	}
	live := NewRing[int](4)
	for seq := uint64(1); seq <= 12; seq++ {
		e := Entry[int]{Seq: seq, Frame: []byte{byte(seq), 0xff}}
		live.DropThrough(seq-4, nil) // keep the last 3 "unacked"
		live.Push(e)
		if err := Append(rf, e.Seq, e.Frame, &live); err != nil {
			t.Fatal(err)
		}
	}
	_, entries, err = OpenRingFile(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range entries {
		seqs = append(seqs, e.Seq)
		if e.Frame[0] != byte(e.Seq) {
			t.Fatalf("seq %d has frame %v", e.Seq, e.Frame)
		}
	}
	// The newest limit entries survive; older acked ones were compacted
	// away or are dropped by hello later.
	if !reflect.DeepEqual(seqs, []uint64{9, 10, 11, 12}) {
		t.Fatalf("restored seqs %v", seqs)
	}
	// A torn last record (crash mid-write) is ignored.
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, b[:len(b)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, entries, err = OpenRingFile(path, 4); err != nil || len(entries) != 3 {
		t.Fatalf("torn file: %v, %d entries", err, len(entries))
	}
}

func TestNormalizeRestartedSeqs(t *testing.T) {
	in := []Record{{Seq: 5}, {Seq: 6}, {Seq: 2}, {Seq: 3}}
	got := normalize(in, 10)
	if len(got) != 2 || got[0].Seq != 2 {
		t.Fatalf("a restarted seq range must supersede older records, got %v", got)
	}
}

func TestBackoff(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	ceilings := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, c := range ceilings {
		c *= time.Millisecond
		var top time.Duration
		for range 200 {
			save := b.attempt
			d := b.Next(rng)
			b.attempt = save
			if d < 0 || d > c {
				t.Fatalf("attempt %d: %s outside [0, %s]", i, d, c)
			}
			top = max(top, d)
		}
		if top < c/2 {
			t.Errorf("attempt %d: full jitter should reach near %s, max seen %s", i, c, top)
		}
		b.Next(rng)
	}
	if b.Attempt() != len(ceilings) {
		t.Fatalf("attempt count %d", b.Attempt())
	}
	b.Reset()
	if d := b.Next(rng); d > 100*time.Millisecond {
		t.Fatalf("after Reset: %s", d)
	}
	// A huge attempt count does not overflow into a negative ceiling.
	b.attempt = 62
	if d := b.Next(rng); d < 0 || d > time.Second {
		t.Fatalf("overflow: %s", d)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 5, 125, 126, 1000, 70_000} {
		payload := bytes.Repeat([]byte{0xab}, n)
		b := appendFrame(nil, ws.OpBinary, payload, 0x01020304)
		// The server side of gobwas must read it as a masked frame.
		f, err := ws.ReadFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if !f.Header.Masked || f.Header.OpCode != ws.OpBinary || !f.Header.Fin {
			t.Fatalf("n=%d: header %+v", n, f.Header)
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		if !bytes.Equal(f.Payload, payload) {
			t.Fatalf("n=%d: payload differs", n)
		}
		// And our parser reads it back too (masked or not).
		op, fin, p, size, _ := parseFrame(b, DefaultMaxServerFrame)
		if op != ws.OpBinary || !fin || size != len(b) || !bytes.Equal(p, payload) {
			t.Fatalf("n=%d: parseFrame op %v fin %v size %d", n, op, fin, size)
		}
	}
	// Incomplete input asks for more.
	var buf bytes.Buffer
	_ = ws.WriteFrame(&buf, ws.NewBinaryFrame(bytes.Repeat([]byte{1}, 300)))
	whole := buf.Bytes()
	for _, cut := range []int{0, 1, 3, 100, len(whole) - 1} {
		if _, _, _, size, need := parseFrame(whole[:cut], DefaultMaxServerFrame); size != 0 || need <= cut {
			t.Fatalf("cut %d: size %d need %d", cut, size, need)
		}
	}
}

// FuzzParseFrame: the device's frame parser never panics, never reports a
// frame larger than its input, and asks for more bytes only beyond what it
// has.
func FuzzParseFrame(f *testing.F) {
	for _, n := range []int{0, 3, 125, 126, 300, 70_000} {
		var buf bytes.Buffer
		_ = ws.WriteFrame(&buf, ws.NewBinaryFrame(bytes.Repeat([]byte{7}, n)))
		f.Add(buf.Bytes())
		f.Add(appendFrame(nil, ws.OpPing, []byte("hi"), 1))
	}
	f.Add([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, p, size, need := parseFrame(b, DefaultMaxServerFrame)
		if size > len(b) || len(p) > size {
			t.Fatalf("size %d payload %d of %d bytes", size, len(p), len(b))
		}
		if size == 0 && need <= len(b) && need <= DefaultMaxServerFrame {
			t.Fatalf("incomplete frame asks for %d bytes, has %d", need, len(b))
		}
	})
}
