package sim

import (
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// LReading is one reading as the ledger remembers it.
type LReading struct {
	T      int64
	Metric string
	Value  float64
	// Valid is false for readings the server must reject (the simulator
	// sends those on purpose); they must never be stored.
	Valid bool
}

// SentBatch is one version of a batch: the readings a device sent under a
// seq. A seq normally has one version; a device that lost its counter and
// ring in a reboot may send new readings under a seq it used before.
type SentBatch struct {
	Seq      uint64
	Readings []LReading
	// Acked: a non-duplicate ack for this very batch arrived (on the
	// connection it was sent on), so exactly these readings were stored.
	Acked bool
	// DupAcked: a duplicate ack arrived: some version of this seq was
	// stored earlier.
	DupAcked bool
	// Accepted and Rejected are the counts of the non-duplicate ack.
	Accepted, Rejected int
	// Abandoned: the device lost this batch unacked (a reboot cleared its
	// RAM ring). It may or may not have been committed, and a later
	// watermark above its seq proves nothing: the device skipped past it.
	Abandoned bool
}

func (b *SentBatch) valid() int {
	n := 0
	for i := range b.Readings {
		if b.Readings[i].Valid {
			n++
		}
	}
	return n
}

// DeviceLedger records what one device sent and what the server confirmed.
// It is written only by the device's goroutine and read by Check after the
// device stopped.
type DeviceLedger struct {
	Device string
	seqs   map[uint64][]*SentBatch
	// covered is the highest seq known to be at or below the device's
	// durable watermark (from hello.acked or any ack): every seq up to it
	// that the device sent had one of its versions stored.
	covered uint64
	// ackMismatch counts non-duplicate acks whose accepted/rejected counts
	// differ from what the simulator predicted.
	ackMismatch int
	mismatchMsg string
}

// NewDeviceLedger returns an empty ledger for device.
func NewDeviceLedger(device string) *DeviceLedger {
	return &DeviceLedger{Device: device, seqs: make(map[uint64][]*SentBatch)}
}

// Sent records a new batch version.
func (l *DeviceLedger) Sent(seq uint64, rs wire.Readings) *SentBatch {
	b := &SentBatch{Seq: seq, Readings: make([]LReading, len(rs))}
	for i := range rs {
		r := &rs[i]
		b.Readings[i] = LReading{T: r.T, Metric: r.Metric, Value: r.Value, Valid: validReading(r)}
	}
	l.seqs[seq] = append(l.seqs[seq], b)
	return b
}

// Ack records an ack for batch b (sent on the connection the ack came on).
func (l *DeviceLedger) Ack(b *SentBatch, a *wire.Ack) {
	l.Cover(a.Seq)
	if b == nil {
		return
	}
	if a.Duplicate {
		b.DupAcked = true
		return
	}
	b.Acked = true
	b.Accepted, b.Rejected = a.Accepted, a.Rejected
	if v := b.valid(); a.Accepted != v || a.Rejected != len(b.Readings)-v {
		l.ackMismatch++
		if l.mismatchMsg == "" {
			l.mismatchMsg = fmt.Sprintf("seq %d: ack accepted %d rejected %d, expected %d and %d (errors %v)",
				a.Seq, a.Accepted, a.Rejected, v, len(b.Readings)-v, a.Errors)
		}
	}
}

// Abandon records that the device lost b without an ack.
func (l *DeviceLedger) Abandon(b *SentBatch) {
	if b != nil {
		b.Abandoned = true
	}
}

// Cover records that the device's watermark is at least seq.
func (l *DeviceLedger) Cover(seq uint64) { l.covered = max(l.covered, seq) }

// Row is one stored reading of a device, as read back from the store.
type Row struct {
	Metric string
	T      int64
	Value  float64
}

// Counts are the verification figures; every field but the first five and
// OptionalStored/Ignored must be zero for a pass.
type Counts struct {
	Devices int `json:"devices"`
	// Sent is every reading sent (valid or not), Required the valid readings
	// known to be stored (acked), Stored those found exactly once.
	Sent     int `json:"sent"`
	Required int `json:"required"`
	Stored   int `json:"stored"`
	// Rejected readings sent on purpose (must be absent).
	Rejected int `json:"rejected"`
	// OptionalStored: sent, never acked (in flight at the end), yet stored
	// once: allowed. Ignored: rows from before this run (older than the
	// device's first reading of the run).
	OptionalStored int `json:"optional_stored"`
	Ignored        int `json:"ignored"`

	Missing        int `json:"missing"`
	Duplicated     int `json:"duplicated"`
	Phantom        int `json:"phantom"`
	RejectedStored int `json:"rejected_stored"`
	ValueMismatch  int `json:"value_mismatch"`
	// Superseded: readings of a version that lost to another (acked) version
	// of the same seq, yet stored.
	Superseded int `json:"superseded"`
	// PartialBatches: batches of which some but not all valid readings were
	// stored (a batch commits atomically or not at all).
	PartialBatches int `json:"partial_batches"`
	// AmbiguousFailed: a seq with several versions, known stored, where not
	// exactly one version is stored whole.
	AmbiguousFailed int `json:"ambiguous_failed"`
	AckMismatch     int `json:"ack_mismatch"`
}

// Failed reports whether any failure count is non-zero.
func (c Counts) Failed() bool {
	return c.Missing+c.Duplicated+c.Phantom+c.RejectedStored+c.ValueMismatch+c.Superseded+
		c.PartialBatches+c.AmbiguousFailed+c.AckMismatch > 0
}

func (c *Counts) add(o Counts) {
	c.Devices += o.Devices
	c.Sent += o.Sent
	c.Required += o.Required
	c.Stored += o.Stored
	c.Rejected += o.Rejected
	c.OptionalStored += o.OptionalStored
	c.Ignored += o.Ignored
	c.Missing += o.Missing
	c.Duplicated += o.Duplicated
	c.Phantom += o.Phantom
	c.RejectedStored += o.RejectedStored
	c.ValueMismatch += o.ValueMismatch
	c.Superseded += o.Superseded
	c.PartialBatches += o.PartialBatches
	c.AmbiguousFailed += o.AmbiguousFailed
	c.AckMismatch += o.AckMismatch
}

type rkey struct {
	metric string
	t      int64
}

type class uint8

const (
	optional class = iota
	required
	rejected
	superseded
	grouped
)

type expect struct {
	value float64
	class class
	ver   *SentBatch
	count int
}

// Check compares the device's ledger with the rows the store holds for it.
// detail describes the first few failures for a human.
func (l *DeviceLedger) Check(rows []Row) (c Counts, detail []string) {
	c.Devices = 1
	c.AckMismatch = l.ackMismatch
	if l.mismatchMsg != "" {
		detail = append(detail, l.mismatchMsg)
	}
	note := func(format string, args ...any) {
		if len(detail) < 5 {
			detail = append(detail, fmt.Sprintf(format, args...))
		}
	}
	exp, minT, groups := l.expectations(&c)
	matchRows(rows, exp, minT, &c, note)
	present := l.tally(exp, &c, note)
	l.countPartial(present, &c, note)
	countGroups(groups, present, &c, note)
	return c, detail
}

// noteFunc records a failure for a human (Check keeps the first few).
type noteFunc func(format string, args ...any)

// expectations classifies every reading the device sent, counting Sent,
// Rejected and Required into c. minT is the earliest reading of the run;
// groups are the ambiguous seqs: several versions, none acked, yet one of
// them known stored.
func (l *DeviceLedger) expectations(c *Counts) (exp map[rkey]*expect, minT int64, groups [][]*SentBatch) {
	exp = make(map[rkey]*expect)
	minT = int64(math.MaxInt64)
	for seq, vers := range l.seqs {
		var acked *SentBatch
		known := false
		for _, v := range vers {
			if v.Acked {
				acked = v
			}
			// The watermark proves "stored" only for seqs the device still
			// held: there were no gaps below them.
			known = known || v.DupAcked || v.Acked || (seq <= l.covered && !v.Abandoned)
		}
		ambiguous := acked == nil && known && len(vers) > 1
		if ambiguous {
			groups = append(groups, vers)
		}
		for _, v := range vers {
			cl := optional
			switch {
			case acked != nil && v == acked, acked == nil && known && len(vers) == 1:
				cl = required
			case acked != nil:
				cl = superseded
			case ambiguous:
				cl = grouped
			}
			for _, r := range v.Readings {
				c.Sent++
				minT = min(minT, r.T)
				e := &expect{value: r.Value, class: cl, ver: v}
				if !r.Valid {
					e.class = rejected
					c.Rejected++
				} else if cl == required {
					c.Required++
				}
				exp[rkey{r.Metric, r.T}] = e
			}
		}
	}
	return exp, minT, groups
}

// matchRows counts each stored row against its expectation. A row nobody
// sent is a phantom, unless it predates the run (older than minT).
func matchRows(rows []Row, exp map[rkey]*expect, minT int64, c *Counts, note noteFunc) {
	for _, row := range rows {
		e, ok := exp[rkey{row.Metric, row.T}]
		if !ok {
			if row.T < minT {
				c.Ignored++
				continue
			}
			c.Phantom++
			note("phantom: %s t=%d value=%v was never sent", row.Metric, row.T, row.Value)
			continue
		}
		e.count++
		if e.class != rejected && row.Value != e.value {
			c.ValueMismatch++
			note("value: %s t=%d stored %v, sent %v", row.Metric, row.T, row.Value, e.value)
		}
	}
}

// tally judges every expected reading by its class, in time order, and
// returns per version how many of its valid readings are present.
func (l *DeviceLedger) tally(exp map[rkey]*expect, c *Counts, note noteFunc) (present map[*SentBatch]int) {
	present = make(map[*SentBatch]int)
	keys := make([]rkey, 0, len(exp))
	for k := range exp {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].t < keys[j].t })
	for _, k := range keys {
		e := exp[k]
		if e.count > 0 && e.class != rejected {
			present[e.ver]++
		}
		if e.count > 1 && e.class != rejected {
			c.Duplicated += e.count - 1
			note("duplicate: %s t=%d stored %d times (seq %d)", k.metric, k.t, e.count, e.ver.Seq)
		}
		switch e.class {
		case required:
			if e.count == 0 {
				c.Missing++
				note("missing: %s t=%d (seq %d, %s)", k.metric, k.t, e.ver.Seq, l.why(e.ver))
			} else {
				c.Stored++
			}
		case rejected:
			if e.count > 0 {
				c.RejectedStored += e.count
				note("rejected reading stored: %q t=%d", k.metric, k.t)
			}
		case superseded:
			if e.count > 0 {
				c.Superseded += e.count
				note("superseded version stored: %s t=%d (seq %d)", k.metric, k.t, e.ver.Seq)
			}
		case optional:
			if e.count > 0 {
				c.OptionalStored++
			}
		}
	}
	return present
}

// countPartial counts versions of which some but not all valid readings
// are stored: a batch commits atomically or not at all.
func (l *DeviceLedger) countPartial(present map[*SentBatch]int, c *Counts, note noteFunc) {
	for _, vers := range l.seqs {
		for _, v := range vers {
			if p, n := present[v], v.valid(); p > 0 && p < n {
				c.PartialBatches++
				note("partial batch: seq %d has %d of %d readings stored", v.Seq, p, n)
			}
		}
	}
}

// countGroups judges each ambiguous seq: it passes when exactly one of its
// versions is stored whole, and that version's readings then count as
// required and stored.
func countGroups(groups [][]*SentBatch, present map[*SentBatch]int, c *Counts, note noteFunc) {
	for _, vers := range groups {
		whole := 0
		for _, v := range vers {
			if n := v.valid(); present[v] == n {
				if n > 0 {
					whole++
				}
			} else if present[v] > 0 {
				whole = -100 // partial already counted; make the group fail too
			}
		}
		anyEmpty := false
		for _, v := range vers {
			anyEmpty = anyEmpty || v.valid() == 0
		}
		// Exactly one version stored whole; a version without valid
		// readings stores nothing, so "none visibly stored" is fine then.
		if whole == 1 || (whole == 0 && anyEmpty) {
			for _, v := range vers {
				if present[v] == v.valid() {
					c.Required += present[v]
					c.Stored += present[v]
				}
			}
			continue
		}
		c.AmbiguousFailed++
		note("seq %d: %d versions sent, %d stored whole (want exactly 1)", vers[0].Seq, len(vers), max(whole, 0))
	}
}

// why says what made a batch version required.
func (l *DeviceLedger) why(v *SentBatch) string {
	switch {
	case v.Acked:
		return fmt.Sprintf("acked: accepted %d", v.Accepted)
	case v.DupAcked:
		return "duplicate ack"
	}
	return fmt.Sprintf("at or below the watermark %d", l.covered)
}

// Ledger holds every device's ledger. Devices are added before the fleet
// starts; afterwards each DeviceLedger is touched only by its device.
type Ledger struct {
	mu      sync.Mutex
	devices map[string]*DeviceLedger
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{devices: make(map[string]*DeviceLedger)} }

// Device returns (creating) the device's ledger.
func (l *Ledger) Device(id string) *DeviceLedger {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.devices[id]
	if !ok {
		d = NewDeviceLedger(id)
		l.devices[id] = d
	}
	return d
}

// IDs lists the devices in order.
func (l *Ledger) IDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, 0, len(l.devices))
	for id := range l.devices {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
