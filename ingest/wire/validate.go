package wire

import (
	"fmt"
	"math"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// MaxMetricLen is the longest metric name, in bytes.
const MaxMetricLen = 128

// MaxErrors is how many distinct rejection reasons an ack carries.
const MaxErrors = 5

// Limits are the per-reading and per-batch rules of protocol v1.
type Limits struct {
	MaxBatch  int
	MaxFuture time.Duration
	MaxPast   time.Duration
}

// MaxSeq is the largest seq a batch may carry (docs/protocol.md, 5.1): the
// stores keep watermarks in signed 64-bit columns (PostgreSQL bigint, SQLite
// INTEGER). Refusing a larger seq here, where the frame is decoded, answers
// the one device that sent it; reaching the store it would fail the whole
// flush it was in.
const MaxSeq = math.MaxInt64

// CheckBatch applies the frame-level rules (1 <= seq <= MaxSeq,
// 1..MaxBatch readings). Breaking them is a protocol violation that closes
// the connection (1002), unlike a bad reading, which is rejected alone.
func CheckBatch(b *Batch, lim Limits) error {
	if b.Seq == 0 || b.Seq > MaxSeq {
		// Erased flash reads as all ones: firmware that takes its counter
		// from it sends exactly 2^64-1.
		return Protocol("bad_seq", "seq must be between 1 and 2^63-1, got %d", b.Seq)
	}
	if len(b.Readings) == 0 {
		return Protocol("empty_batch", "a batch must carry at least 1 reading")
	}
	if len(b.Readings) > lim.MaxBatch {
		return Protocol("batch_too_large", "batch carries %d readings, max_batch is %d", len(b.Readings), lim.MaxBatch)
	}
	return nil
}

// Validate turns a decoded batch into the readings to store. Each invalid
// reading is rejected on its own; errs holds up to MaxErrors distinct
// reasons. now stamps readings whose t was nil and anchors the time window.
// onReject, if not nil, is called with the reason of every rejected reading
// (for metrics). The returned slice is freshly allocated and owned by the
// caller.
func Validate(readings Readings, now time.Time, lim Limits, onReject func(reason string)) (ok []telemetry.Reading, rejected int, errs []string) {
	nowMs := now.UnixMilli()
	maxT := nowMs + lim.MaxFuture.Milliseconds()
	minT := nowMs - lim.MaxPast.Milliseconds()
	ok = make([]telemetry.Reading, 0, len(readings))
	for i := range readings {
		r := &readings[i]
		reason := r.Err
		t := r.T
		if !r.HasT {
			t = nowMs
		}
		switch {
		case reason != "":
		case !ValidMetric(r.Metric):
			reason = fmt.Sprintf("metric must be 1-%d bytes of [A-Za-z0-9_.:/-]", MaxMetricLen)
		case t > maxT:
			reason = fmt.Sprintf("t more than max_future (%s) ahead of server time", lim.MaxFuture)
		case t < minT:
			reason = fmt.Sprintf("t more than max_past (%s) behind server time", lim.MaxPast)
		}
		if reason != "" {
			rejected++
			if onReject != nil {
				onReject(reason)
			}
			errs = addReason(errs, reason)
			continue
		}
		ok = append(ok, telemetry.Reading{Time: t, Metric: r.Metric, Value: r.Value})
	}
	return ok, rejected, errs
}

func addReason(errs []string, reason string) []string {
	if len(errs) >= MaxErrors {
		return errs
	}
	for _, e := range errs {
		if e == reason {
			return errs
		}
	}
	return append(errs, reason)
}

// ValidMetric reports whether s is 1..MaxMetricLen bytes of [A-Za-z0-9_.:/-].
func ValidMetric(s string) bool {
	if len(s) == 0 || len(s) > MaxMetricLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_', c == '.', c == ':', c == '/', c == '-':
		default:
			return false
		}
	}
	return true
}
