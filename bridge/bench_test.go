package bridge

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// benchBatch is a committed batch shaped like issue 12's load: 50 readings
// of a few metrics.
func benchBatch(device string, seq uint64) telemetry.Batch {
	rs := make([]telemetry.Reading, 50)
	for i := range rs {
		rs[i] = telemetry.Reading{Time: 1732700000000 + int64(i), Metric: "m" + strconv.Itoa(i%5), Value: float64(i) / 3}
	}
	return telemetry.Batch{Device: device, Seq: seq, Readings: rs}
}

// cpuTime is the process's user+system CPU time: it counts every goroutine
// the path runs on (publisher, paho, the broker), not just the caller's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCommittedPath measures the bridge's share of the committed-batch
// path with the shipped defaults (embedded broker): one op is one committed
// 50-reading batch of one of 1,000 devices, from Committed until the bridge
// has dealt with it (published, or skipped because nobody listens) and, in
// "one-subscriber", until an MQTT client on <prefix>/+/telemetry has
// received it. cpu-ns/batch is the whole process's CPU per batch.
//
//	go test -run '^$' -bench CommittedPath -benchtime 20000x -count 5 ./bridge/
func BenchmarkCommittedPath(b *testing.B) {
	cases := []struct {
		name      string
		dashboard bool // OnRemoteBatch registered, as serve does with the dashboard on
		subs      int
	}{
		{"nobody/dashboard-off", false, 0},
		{"nobody/dashboard-on", true, 0}, // the shipped defaults
		{"one-subscriber/dashboard-on", true, 1},
	}
	for _, tc := range cases {
		subs := tc.subs
		b.Run(tc.name, func(b *testing.B) {
			br := newEmbedded(b, func(c *Config) { c.QueueSize = 100_000 }) // measure the path, not drops (b.N stays below)
			if tc.dashboard {
				br.OnRemoteBatch(func(telemetry.Batch) {})
			}
			runBridge(b, br)
			var got atomic.Int64
			if subs == 1 {
				subscribeFunc(b, br, br.cfg.TopicPrefix+"/+/telemetry", func([]byte) { got.Add(1) })
			}
			batches := make([]telemetry.Batch, 1000)
			for i := range batches {
				batches[i] = benchBatch(fmt.Sprintf("dev-%04d", i), 1)
			}
			handled := func() int64 {
				return int64(counterValue(br.m.published.WithLabelValues("telemetry")) + counterValue(br.m.skipped))
			}
			base, baseGot := handled(), got.Load()
			runtime.GC()
			cpu0 := cpuTime()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				bt := batches[i%len(batches)]
				bt.Seq = uint64(i + 1)
				br.Committed(bt)
			}
			deadline := time.Now().Add(time.Minute)
			for handled()-base < int64(b.N) || (subs == 1 && got.Load()-baseGot < int64(b.N)) {
				if time.Now().After(deadline) {
					b.Fatalf("handled %d, received %d of %d", handled()-base, got.Load()-baseGot, b.N)
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/batch")
		})
	}
}

// BenchmarkPresenceMemory measures what device presence costs in memory
// with the shipped defaults (embedded broker, bridge on): the heap growth
// while 10,000 devices come online, after the bridge has published their
// status (and whatever records it keeps), divided by the device count.
//
//	go test -run '^$' -bench PresenceMemory -benchtime 1x -count 5 ./bridge/
func BenchmarkPresenceMemory(b *testing.B) {
	const n = 10_000
	for i := 0; i < b.N; i++ {
		br := newEmbedded(b, nil)
		_, stop := runBridge(b, br)
		devs := make([]string, n)
		for j := range devs {
			devs[j] = fmt.Sprintf("device-%06d", j)
		}
		status := br.m.published.WithLabelValues("status")
		base := counterValue(status)
		before := heapInUse()
		for _, d := range devs {
			br.Presence(telemetry.Presence{Device: d, Online: true, At: 1})
		}
		deadline := time.Now().Add(time.Minute)
		for counterValue(status)-base < n || len(br.inbound) > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("only %v statuses published", counterValue(status)-base)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // let the last echoes settle
		after := heapInUse()
		b.ReportMetric(float64(after-before)/n, "B/device")
		runtime.KeepAlive(devs)
		stop()
	}
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// BenchmarkSubscriberLatency measures Committed → an MQTT subscriber on
// <prefix>/+/telemetry receiving the batch, on the embedded broker with
// the shipped defaults, at 10 batches/s (issue 12's latency target; the
// device → commit part is ingest's ack latency, docs/benchmarks.md). One op
// is 100 batches, 10 s.
//
//	go test -run '^$' -bench SubscriberLatency -benchtime 1x -count 3 ./bridge/
func BenchmarkSubscriberLatency(b *testing.B) {
	const n = 100
	br := newEmbedded(b, nil)
	br.OnRemoteBatch(func(telemetry.Batch) {}) // dashboard on
	runBridge(b, br)
	var sent [n]atomic.Int64
	lat := make(chan time.Duration, n)
	var idx atomic.Int64
	subscribeFunc(b, br, br.cfg.TopicPrefix+"/+/telemetry", func([]byte) {
		i := idx.Add(1) - 1
		if i < n {
			lat <- time.Duration(time.Now().UnixNano() - sent[i].Load())
		}
	})
	var all []time.Duration
	for i := 0; i < b.N; i++ {
		idx.Store(0)
		tick := time.NewTicker(100 * time.Millisecond)
		for j := 0; j < n; j++ {
			<-tick.C
			sent[j].Store(time.Now().UnixNano())
			br.Committed(benchBatch("dev-0001", uint64(i*n+j+1)))
		}
		tick.Stop()
		for j := 0; j < n; j++ {
			select {
			case d := <-lat:
				all = append(all, d)
			case <-time.After(5 * time.Second):
				b.Fatalf("received %d of %d batches", j, n)
			}
		}
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
}
