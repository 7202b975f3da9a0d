package sim

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// entry is one sent-but-unacked batch.
type entry struct {
	seq   uint64
	frame []byte // the encoded batch map, unmasked; resent byte for byte
	n     int    // readings in the batch
	// sentAt is when it was last written (unix ns) and conn the connection
	// generation it was written on: an ack measures latency only against a
	// send on the same connection.
	sentAt int64
	conn   uint32
	sends  int
	ver    *SentBatch // ledger record, nil when not verifying
}

// ring is the bounded buffer of unacked batches, oldest first, in
// ascending seq order. Owned by one device goroutine.
//
// The buffer grows on demand up to limit: a device's ring is usually empty
// or holds one batch in flight, and 19,000 devices should not each carry a
// full-size array for the rare outage.
type ring struct {
	buf   []entry
	head  int
	n     int
	limit int
}

func newRing(limit int) ring { return ring{limit: limit} }

func (r *ring) len() int   { return r.n }
func (r *ring) full() bool { return r.n == r.limit }

// at returns the i-th oldest entry.
func (r *ring) at(i int) *entry { return &r.buf[(r.head+i)%len(r.buf)] }

// push appends e; it reports false when the ring is full.
func (r *ring) push(e entry) bool {
	if r.full() {
		return false
	}
	if r.n == len(r.buf) {
		nb := make([]entry, min(max(2*len(r.buf), 2), r.limit))
		for i := 0; i < r.n; i++ {
			nb[i] = *r.at(i)
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
	return true
}

// last is the newest entry's seq, 0 when empty.
func (r *ring) last() uint64 {
	if r.n == 0 {
		return 0
	}
	return r.at(r.n - 1).seq
}

// dropThrough removes entries with seq <= seq from the front, calling fn
// (if not nil) for each, and returns how many it removed.
func (r *ring) dropThrough(seq uint64, fn func(*entry)) int {
	k := 0
	for r.n > 0 && r.buf[r.head].seq <= seq {
		if fn != nil {
			fn(&r.buf[r.head])
		}
		r.buf[r.head] = entry{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		k++
	}
	return k
}

// clear empties the ring, calling fn for each entry.
func (r *ring) clear(fn func(*entry)) { r.dropThrough(^uint64(0), fn) }

// ringFile persists a device's ring so a simulator restart keeps it (like
// firmware keeping its buffer in flash). It is an append-only log of
// records [seq u64][len u32][frame]; acked records are not removed one by
// one (hello.acked drops them after a restart) but the log is rewritten from
// the live ring once it has grown to twice the ring's size.
//
// The file is opened per write, not held open: with thousands of devices a
// descriptor per ring would eat the process's file limit that sockets need.
type ringFile struct {
	path    string
	records int
	limit   int
}

// openRingFile opens (creating) the device's log under dir and returns the
// entries it holds, oldest first.
func openRingFile(dir, device string, limit int) (*ringFile, []entry, error) {
	path := filepath.Join(dir, device+".ring")
	var entries []entry
	if f, err := os.Open(path); err == nil {
		entries, err = readRecords(bufio.NewReader(f))
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("read ring file %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("open ring file: %w", err)
	}
	// Keep only the newest limit entries in ascending seq order: a log may
	// hold records from before a restart that are acked since (dropped
	// after hello) or, after a reboot, a restarted seq range.
	entries = normalize(entries, limit)
	rf := &ringFile{path: path, limit: limit}
	if err := rf.rewrite(entries); err != nil {
		return nil, nil, err
	}
	return rf, entries, nil
}

func normalize(entries []entry, limit int) []entry {
	// A later record with a seq not above the previous one means the device
	// restarted its seq range: older records are superseded.
	start := 0
	for i := 1; i < len(entries); i++ {
		if entries[i].seq <= entries[i-1].seq {
			start = i
		}
	}
	entries = entries[start:]
	if len(entries) > limit {
		entries = entries[len(entries)-limit:]
	}
	return entries
}

func readRecords(r io.Reader) ([]entry, error) {
	var out []entry
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
		out = append(out, entry{seq: seq, frame: frame})
	}
}

func appendRecord(b []byte, e *entry) []byte {
	b = binary.BigEndian.AppendUint64(b, e.seq)
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.frame)))
	return append(b, e.frame...)
}

// append logs a newly sealed batch.
func (rf *ringFile) append(e *entry, live *ring) error {
	if rf.records >= 2*rf.limit {
		entries := make([]entry, 0, live.len())
		for i := 0; i < live.len(); i++ {
			entries = append(entries, *live.at(i))
		}
		return rf.rewrite(entries)
	}
	f, err := os.OpenFile(rf.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open ring file: %w", err)
	}
	_, err = f.Write(appendRecord(nil, e))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to ring file: %w", err)
	}
	rf.records++
	return nil
}

// rewrite replaces the log with entries (write to a temp file, rename).
func (rf *ringFile) rewrite(entries []entry) error {
	var b []byte
	for i := range entries {
		b = appendRecord(b, &entries[i])
	}
	tmp := rf.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write ring file: %w", err)
	}
	if err := os.Rename(tmp, rf.path); err != nil {
		return fmt.Errorf("replace ring file: %w", err)
	}
	rf.records = len(entries)
	return nil
}
