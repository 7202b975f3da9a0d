package meridian

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Entry is one sent-but-unacked batch in a Ring.
type Entry[M any] struct {
	Seq   uint64
	Frame []byte // the encoded batch map, unmasked; resent byte for byte
	Meta  M      // the owner's bookkeeping (send time, ledger record, ...)
}

// Ring is the bounded buffer of unacked batches of docs/protocol.md 7.1,
// oldest first, in ascending seq order. It is not safe for concurrent use:
// one goroutine (or the Client's mutex) owns it.
//
// The buffer grows on demand up to its limit: a device's ring is usually
// empty or holds one batch in flight, and a simulator's 19,000 devices
// should not each carry a full-size array for the rare outage.
type Ring[M any] struct {
	buf   []Entry[M]
	head  int
	n     int
	limit int
}

// NewRing returns an empty ring that holds at most limit entries.
func NewRing[M any](limit int) Ring[M] { return Ring[M]{limit: max(limit, 1)} }

// Len is the number of entries.
func (r *Ring[M]) Len() int { return r.n }

// Limit is the most entries the ring holds.
func (r *Ring[M]) Limit() int { return r.limit }

// Full reports whether Push would refuse.
func (r *Ring[M]) Full() bool { return r.n == r.limit }

// At returns the i-th oldest entry.
func (r *Ring[M]) At(i int) *Entry[M] { return &r.buf[(r.head+i)%len(r.buf)] }

// Push appends e; it reports false when the ring is full. Callers keep seqs
// ascending.
func (r *Ring[M]) Push(e Entry[M]) bool {
	if r.Full() {
		return false
	}
	if r.n == len(r.buf) {
		nb := make([]Entry[M], min(max(2*len(r.buf), 2), r.limit))
		for i := 0; i < r.n; i++ {
			nb[i] = *r.At(i)
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
	return true
}

// Last is the newest entry's seq, 0 when empty.
func (r *Ring[M]) Last() uint64 {
	if r.n == 0 {
		return 0
	}
	return r.At(r.n - 1).Seq
}

// DropThrough removes the entries with seq <= seq from the front, calling fn
// (if not nil) for each, and returns how many it removed. It is both steps
// 2 (hello.acked) and 5 (ack.seq) of docs/protocol.md 7.2.
func (r *Ring[M]) DropThrough(seq uint64, fn func(*Entry[M])) int {
	k := 0
	for r.n > 0 && r.buf[r.head].Seq <= seq {
		if fn != nil {
			fn(&r.buf[r.head])
		}
		r.buf[r.head] = Entry[M]{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		k++
	}
	return k
}

// Clear empties the ring, calling fn for each entry.
func (r *Ring[M]) Clear(fn func(*Entry[M])) { r.DropThrough(^uint64(0), fn) }

// Record is one persisted ring entry.
type Record struct {
	Seq   uint64
	Frame []byte
}

// RingFile persists a ring so a restart keeps it, as firmware keeps its
// buffer in flash (docs/protocol.md 7.1). It is an append-only log of
// records [seq u64][len u32][frame]; acked records are not removed one by
// one (hello.acked drops them after a restart) but the log is rewritten from
// the live ring once it has grown to twice the ring's size. The persisted
// records also carry the seq counter: after a restart it continues after the
// newest record.
//
// The file is opened per write, not held open: a process with thousands of
// devices would otherwise spend a descriptor per ring that sockets need.
// Not safe for concurrent use.
type RingFile struct {
	path    string
	records int
	limit   int
}

// OpenRingFile opens (creating) the log at path and returns the records it
// holds, oldest first: at most limit, in ascending seq order.
func OpenRingFile(path string, limit int) (*RingFile, []Record, error) {
	var recs []Record
	if f, err := os.Open(path); err == nil {
		recs, err = readRecords(bufio.NewReader(f))
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("read ring file %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("open ring file: %w", err)
	}
	// Keep only the newest limit records in ascending seq order: a log may
	// hold records from before a restart that are acked since (dropped
	// after hello) or, after a reboot, a restarted seq range.
	recs = normalize(recs, limit)
	rf := &RingFile{path: path, limit: limit}
	if err := rf.Rewrite(recs); err != nil {
		return nil, nil, err
	}
	return rf, recs, nil
}

func normalize(recs []Record, limit int) []Record {
	// A later record with a seq not above the previous one means the device
	// restarted its seq range: older records are superseded.
	start := 0
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq <= recs[i-1].Seq {
			start = i
		}
	}
	recs = recs[start:]
	if len(recs) > limit {
		recs = recs[len(recs)-limit:]
	}
	return recs
}

func readRecords(r io.Reader) ([]Record, error) {
	var out []Record
	var hdr [12]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return out, nil // a torn last record was never acked-or-sent: drop it
			}
			return nil, err
		}
		seq := binary.BigEndian.Uint64(hdr[:8])
		n := binary.BigEndian.Uint32(hdr[8:])
		if n > 16<<20 {
			return nil, fmt.Errorf("record of %d bytes: corrupt file", n)
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(r, frame); err != nil {
			return out, nil
		}
		out = append(out, Record{Seq: seq, Frame: frame})
	}
}

func appendRecord(b []byte, seq uint64, frame []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint32(b, uint32(len(frame)))
	return append(b, frame...)
}

// Append logs a newly sealed batch. live is the ring it was pushed to: once
// the log holds twice the ring's size it is compacted to live's entries.
func Append[M any](rf *RingFile, seq uint64, frame []byte, live *Ring[M]) error {
	if rf.records >= 2*rf.limit {
		return rf.Rewrite(Records(live))
	}
	f, err := os.OpenFile(rf.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open ring file: %w", err)
	}
	_, err = f.Write(appendRecord(nil, seq, frame))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to ring file: %w", err)
	}
	rf.records++
	return nil
}

// Records returns the ring's entries as records, oldest first.
func Records[M any](r *Ring[M]) []Record {
	out := make([]Record, 0, r.Len())
	for i := 0; i < r.Len(); i++ {
		e := r.At(i)
		out = append(out, Record{Seq: e.Seq, Frame: e.Frame})
	}
	return out
}

// Rewrite replaces the log with recs (write to a temp file, rename).
func (rf *RingFile) Rewrite(recs []Record) error {
	var b []byte
	for _, r := range recs {
		b = appendRecord(b, r.Seq, r.Frame)
	}
	tmp := rf.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write ring file: %w", err)
	}
	if err := os.Rename(tmp, rf.path); err != nil {
		return fmt.Errorf("replace ring file: %w", err)
	}
	rf.records = len(recs)
	return nil
}
