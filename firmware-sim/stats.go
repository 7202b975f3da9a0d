package sim

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// histogram counts latencies in log-spaced buckets (5% wide) from 10 µs to
// about an hour: lock-free to record from thousands of devices, and
// quantiles within 5% are what a p99 needs.
type histogram struct {
	b [histBuckets]atomic.Int64
}

const (
	histBuckets = 400
	histMin     = 10 * time.Microsecond
	histGrowth  = 1.05
)

var logGrowth = math.Log(histGrowth)

func bucketOf(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	i := int(math.Log(float64(d)/float64(histMin))/logGrowth) + 1
	return min(i, histBuckets-1)
}

// bucketUpper is the upper bound of bucket i.
func bucketUpper(i int) time.Duration {
	return time.Duration(float64(histMin) * math.Pow(histGrowth, float64(i)))
}

func (h *histogram) record(d time.Duration) { h.b[bucketOf(d)].Add(1) }

// snapshot copies the counts (and resets them when reset is set).
func (h *histogram) snapshot(reset bool) []int64 {
	out := make([]int64, histBuckets)
	for i := range h.b {
		if reset {
			out[i] = h.b[i].Swap(0)
		} else {
			out[i] = h.b[i].Load()
		}
	}
	return out
}

// quantile returns the q-quantile (0..1) of counts, 0 when empty.
func quantile(counts []int64, q float64) time.Duration {
	var total int64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			return bucketUpper(i)
		}
	}
	return bucketUpper(len(counts) - 1)
}

// stats are the fleet's live counters, updated by every device goroutine.
type stats struct {
	connected      atomic.Int64
	readingsSent   atomic.Int64 // first sends only
	readingsResent atomic.Int64
	readingsAcked  atomic.Int64 // readings of batches acked (duplicate or not)
	readingsRej    atomic.Int64 // rejected per acks
	readingsSkip   atomic.Int64 // samples skipped because the ring was full
	batchesSent    atomic.Int64
	batchesAcked   atomic.Int64
	dupAcks        atomic.Int64
	helloDropped   atomic.Int64 // ring entries found durable via hello.acked
	reconnects     atomic.Int64
	connects       atomic.Int64
	commands       atomic.Int64
	chaosEvents    atomic.Int64
	errors         atomic.Int64
	inRing         atomic.Int64 // batches in device rings (sent or about to be, unacked)

	lat      histogram // since start
	latTick  histogram // since the last progress line
	mu       sync.Mutex
	errKinds map[string]int64 // guarded by mu
	closes   map[int]int64    // close codes received; guarded by mu
}

func newStats() *stats {
	return &stats{errKinds: make(map[string]int64), closes: make(map[int]int64)}
}

// fail counts an error by kind (a short, stable label, never a token).
func (s *stats) fail(kind string) {
	s.errors.Add(1)
	s.mu.Lock()
	s.errKinds[kind]++
	s.mu.Unlock()
}

// event counts an expected occurrence by kind without calling it an error.
func (s *stats) event(kind string) {
	s.mu.Lock()
	s.errKinds["(expected) "+kind]++
	s.mu.Unlock()
}

func (s *stats) closed(code int) {
	s.mu.Lock()
	s.closes[code]++
	s.mu.Unlock()
}

func (s *stats) ackLatency(d time.Duration) {
	s.lat.record(d)
	s.latTick.record(d)
}

// progress writes one line per tick until stop is closed.
func (s *stats) progress(w io.Writer, every time.Duration, devices int, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	last := start
	var lastSent, lastAcked int64
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			sent, acked := s.readingsSent.Load(), s.readingsAcked.Load()
			secs := now.Sub(last).Seconds()
			tick := s.latTick.snapshot(true)
			fmt.Fprintf(w, "sim %5.0fs  connected %d/%d  sent %.0f/s  acked %.0f/s  ack p50 %s p99 %s  reconnects %d  errors %d  unacked batches %d\n",
				now.Sub(start).Seconds(), s.connected.Load(), devices,
				float64(sent-lastSent)/secs, float64(acked-lastAcked)/secs,
				fmtDur(quantile(tick, 0.5)), fmtDur(quantile(tick, 0.99)),
				s.reconnects.Load(), s.errors.Load(), s.inRing.Load())
			last, lastSent, lastAcked = now, sent, acked
		}
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(100 * time.Millisecond).String()
}

// Latency summarises ack latency (send to ack of a batch on one connection).
type Latency struct {
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// Report is the run's final account.
type Report struct {
	Devices        int     `json:"devices"`
	HTTPDevices    int     `json:"http_devices"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	ReadingsSent   int64   `json:"readings_sent"`
	ReadingsResent int64   `json:"readings_resent"`
	ReadingsAcked  int64   `json:"readings_acked"`
	ReadingsRej    int64   `json:"readings_rejected"`
	ReadingsSkip   int64   `json:"readings_skipped"`
	BatchesSent    int64   `json:"batches_sent"`
	BatchesAcked   int64   `json:"batches_acked"`
	DuplicateAcks  int64   `json:"duplicate_acks"`
	HelloDropped   int64   `json:"hello_dropped"`
	// Unacked is batches still in device rings when the run ended.
	Unacked        int64            `json:"unacked_batches"`
	SentPerSecond  float64          `json:"sent_per_second"`
	AckedPerSecond float64          `json:"acked_per_second"`
	AckLatency     Latency          `json:"ack_latency"`
	Connects       int64            `json:"connects"`
	Reconnects     int64            `json:"reconnects"`
	Commands       int64            `json:"commands_answered"`
	ChaosEvents    int64            `json:"chaos_events"`
	Errors         int64            `json:"errors"`
	ErrorKinds     map[string]int64 `json:"error_kinds"`
	CloseCodes     map[string]int64 `json:"close_codes"`
	Verify         *VerifyResult    `json:"verify,omitempty"`
}

func (s *stats) report(devices, httpDevices int, elapsed time.Duration, unacked int64) Report {
	all := s.lat.snapshot(false)
	maxB := 0
	for i, c := range all {
		if c > 0 {
			maxB = i
		}
	}
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)) / 1000 }
	r := Report{
		Devices: devices, HTTPDevices: httpDevices, ElapsedSeconds: elapsed.Seconds(),
		ReadingsSent: s.readingsSent.Load(), ReadingsResent: s.readingsResent.Load(),
		ReadingsAcked: s.readingsAcked.Load(), ReadingsRej: s.readingsRej.Load(), ReadingsSkip: s.readingsSkip.Load(),
		BatchesSent: s.batchesSent.Load(), BatchesAcked: s.batchesAcked.Load(), DuplicateAcks: s.dupAcks.Load(),
		HelloDropped: s.helloDropped.Load(), Unacked: unacked,
		AckLatency: Latency{P50Ms: ms(quantile(all, 0.5)), P90Ms: ms(quantile(all, 0.9)), P99Ms: ms(quantile(all, 0.99))},
		Connects:   s.connects.Load(), Reconnects: s.reconnects.Load(), Commands: s.commands.Load(),
		ChaosEvents: s.chaosEvents.Load(), Errors: s.errors.Load(),
		ErrorKinds: map[string]int64{}, CloseCodes: map[string]int64{},
	}
	if r.ReadingsAcked > 0 || r.BatchesAcked > 0 {
		r.AckLatency.MaxMs = ms(bucketUpper(maxB))
	}
	if secs := elapsed.Seconds(); secs > 0 {
		r.SentPerSecond = float64(r.ReadingsSent) / secs
		r.AckedPerSecond = float64(r.ReadingsAcked) / secs
	}
	s.mu.Lock()
	for k, v := range s.errKinds {
		r.ErrorKinds[k] = v
	}
	for k, v := range s.closes {
		r.CloseCodes[fmt.Sprint(k)] = v
	}
	s.mu.Unlock()
	return r
}

// Text renders the report for a terminal.
func (r Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devices %d (%d over HTTP), %.1fs\n", r.Devices, r.HTTPDevices, r.ElapsedSeconds)
	fmt.Fprintf(&b, "readings: sent %d (%.0f/s), acked %d (%.0f/s), rejected %d, resent %d, skipped (ring full) %d\n",
		r.ReadingsSent, r.SentPerSecond, r.ReadingsAcked, r.AckedPerSecond, r.ReadingsRej, r.ReadingsResent, r.ReadingsSkip)
	fmt.Fprintf(&b, "batches: sent %d, acked %d (%d duplicate), durable per hello %d, unacked at end %d\n",
		r.BatchesSent, r.BatchesAcked, r.DuplicateAcks, r.HelloDropped, r.Unacked)
	fmt.Fprintf(&b, "ack latency: p50 %.1fms  p90 %.1fms  p99 %.1fms  max %.1fms\n", r.AckLatency.P50Ms, r.AckLatency.P90Ms, r.AckLatency.P99Ms, r.AckLatency.MaxMs)
	fmt.Fprintf(&b, "connections: %d, reconnects %d, commands answered %d, chaos events %d, errors %d\n",
		r.Connects, r.Reconnects, r.Commands, r.ChaosEvents, r.Errors)
	if len(r.CloseCodes) > 0 {
		fmt.Fprintf(&b, "close codes received: %s\n", fmtMap(r.CloseCodes))
	}
	if len(r.ErrorKinds) > 0 {
		fmt.Fprintf(&b, "errors and events: %s\n", fmtMap(r.ErrorKinds))
	}
	if r.Verify != nil {
		b.WriteString(r.Verify.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func fmtMap(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
