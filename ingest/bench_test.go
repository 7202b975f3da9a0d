package ingest_test

import (
	"flag"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// Group commit against the fixed flush interval it replaced, on the real
// stores, in one run so the two are compared on the same (noisy) machine:
// linger=0 is group commit (the default), linger=100ms behaves like the old
// ingest.flush_interval of 100 ms.
//
//	go test -run '^$' -bench Pipeline -benchtime 1x -count 5 ./ingest/
//
// max: 100 WebSocket devices, each with up to 32 batches of benchBatch
// readings unacked (ingest.session_queue), send benchMaxReadings readings as
// fast as they are acked: readings/s is the ceiling with group commit,
// linger100ms-readings/s the old behaviour's, ratio the first over the
// second within the same op. paced: the same devices offer 20% of the
// group-commit ceiling last measured in this run, in batches of the same
// size, each device at a steady interval, for benchPacedWarmup (not
// counted) and then benchPacedFor. Both use the
// same batch size (50 readings, the load shape issue 12 was measured with),
// so "20% of the maximum rate" is 20% of the same work: with smaller paced
// batches (10 readings, before) the paced run sent twice the ceiling's
// batches per second and measured a saturated machine, not a 20% load; p50-ms and p99-ms are
// the ack latencies (send to ack) the devices see, linger100ms-* the same
// with the old behaviour; commit-ms is the mean duration of one store commit
// and flush-readings the mean readings per commit during the group-commit
// run, so the latency can be read against the commits it waited for (an
// ack waits for the rest of a commit in flight, then its own).
//
// To compare two builds on a noisy machine, offer both the same load instead
// of 20% of a ceiling each measured for itself, and run them alternately:
//
//	go test -c -o new.test ./ingest/
//	./new.test -test.run '^$' -test.bench 'Pipeline/postgres/paced' -test.benchtime 1x -pipeline.rate 30000

const (
	benchDevices     = 100
	benchMaxReadings = 200_000
	benchBatch       = 50
	benchPacedFor    = 3 * time.Second
	// benchPacedWarmup is offered before latencies count: each paced run
	// starts a fresh server, so its first commits prepare statements on new
	// pool connections and its first frames grow buffers; that start-up
	// cost is not the steady-state latency the target is about (it put a
	// run's p99 at 40-70 ms where the same run's second half was 15-25).
	benchPacedWarmup = 500 * time.Millisecond
)

var (
	benchRate = flag.Float64("pipeline.rate", 0,
		"readings/s BenchmarkPipeline's paced load offers; 0: 20% of the ceiling measured in the run")
	benchWriters = flag.Int("pipeline.writers", 0, "ingest.writers for BenchmarkPipeline; 0: the default")
)

// benchCeiling is the readings/s measured by max with linger=0, per backend,
// which paced offers 20% of.
var (
	benchMu      sync.Mutex
	benchCeiling = map[string]float64{}
	benchWarm    sync.Once
	benchOps     int // max ops run so far, for alternating the order
)

func BenchmarkPipeline(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			// Each op runs both lingers back to back, so their ratio is
			// measured under the same background load. The first run in a
			// process is slower (heap growth, connection pools), so one
			// unmeasured run goes first and the order alternates per op.
			b.Run("max", func(b *testing.B) {
				benchWarm.Do(func() { benchMax(b, be, 0) })
				for range b.N {
					var group, fixed float64
					if benchOps++; benchOps%2 == 0 {
						group = benchMax(b, be, 0)
						fixed = benchMax(b, be, 100*time.Millisecond)
					} else {
						fixed = benchMax(b, be, 100*time.Millisecond)
						group = benchMax(b, be, 0)
					}
					b.ReportMetric(group, "readings/s")
					b.ReportMetric(fixed, "linger100ms-readings/s")
					b.ReportMetric(group/fixed, "ratio")
					benchMu.Lock()
					benchCeiling[be.name] = group
					benchMu.Unlock()
				}
			})
			b.Run("paced", func(b *testing.B) {
				rate := *benchRate
				if rate == 0 {
					benchMu.Lock()
					ceiling := benchCeiling[be.name]
					benchMu.Unlock()
					if ceiling == 0 {
						ceiling = benchMax(b, be, 0)
					}
					rate = ceiling / 5
				}
				for range b.N {
					group := benchPaced(b, be, 0, rate)
					fixed := benchPaced(b, be, 100*time.Millisecond, rate)
					b.ReportMetric(rate, "offered-readings/s")
					b.ReportMetric(group.p50, "p50-ms")
					b.ReportMetric(group.p99, "p99-ms")
					b.ReportMetric(group.commitMs, "commit-ms")
					b.ReportMetric(group.flushReadings, "flush-readings")
					b.ReportMetric(fixed.p50, "linger100ms-p50-ms")
					b.ReportMetric(fixed.p99, "linger100ms-p99-ms")
				}
			})
		})
	}
}

func benchServer(b *testing.B, be backend, linger time.Duration) *ingestServer {
	b.StopTimer()
	defer b.StartTimer()
	store, _ := be.open(b)
	return startIngest(b, store, func(c *ingest.Config) {
		c.Linger = linger
		if *benchWriters > 0 {
			c.Writers = *benchWriters
		}
	})
}

// benchMax returns acked readings per second with every device keeping its
// session queue full.
func benchMax(b *testing.B, be backend, linger time.Duration) float64 {
	s := benchServer(b, be, linger)
	devs := benchFleet(b, s)
	perDevice := benchMaxReadings / benchDevices / benchBatch
	values := make([]float64, benchBatch)
	start := time.Now()
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(2)
		window := make(chan struct{}, 32)
		go func() {
			defer wg.Done()
			for seq := 1; seq <= perDevice; seq++ {
				window <- struct{}{}
				if err := d.send(batchOf(uint64(seq), values...)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range perDevice {
				if typ, _, err := d.read(); err != nil || typ != wire.TypeAck {
					b.Errorf("got %q %v, want an ack", typ, err)
					return
				}
				<-window
			}
		}()
	}
	wg.Wait()
	rate := float64(perDevice*benchDevices*benchBatch) / time.Since(start).Seconds()
	if testing.Verbose() {
		b.Logf("linger=%s: %.0f readings/s, %.0f readings per flush", linger, rate, s.histMean(b, "meridian_flush_readings"))
	}
	return rate
}

// histMean is the mean of the histogram name.
func (s *ingestServer) histMean(tb testing.TB, name string) float64 {
	mfs, err := s.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleSum() / float64(max(h.GetSampleCount(), 1))
		}
	}
	return 0
}

// pacedResult is what one paced run measured: ack latencies (send to ack,
// ms), the mean commit duration (ms) and the mean readings per commit.
type pacedResult struct {
	p50, p99, commitMs, flushReadings float64
}

// benchPaced offers rate readings/s spread evenly over the devices.
func benchPaced(b *testing.B, be backend, linger time.Duration, rate float64) pacedResult {
	s := benchServer(b, be, linger)
	devs := benchFleet(b, s)
	interval := time.Duration(float64(time.Second) * benchBatch * benchDevices / rate)
	values := make([]float64, benchBatch)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		lat []float64
	)
	start := time.Now()
	measureFrom := start.Add(benchPacedWarmup)
	for i, d := range devs {
		wg.Add(2)
		sent := make(chan time.Time, 1024)
		go func() {
			defer wg.Done()
			defer close(sent)
			// Devices start spread over one interval, as a real fleet is.
			time.Sleep(interval * time.Duration(i) / benchDevices)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			end := start.Add(benchPacedWarmup + benchPacedFor)
			for seq := uint64(1); time.Now().Before(end); seq++ {
				sent <- time.Now()
				if err := d.send(batchOf(seq, values...)); err != nil {
					b.Error(err)
					return
				}
				<-tick.C
			}
		}()
		go func() {
			defer wg.Done()
			for at := range sent {
				if typ, _, err := d.read(); err != nil || typ != wire.TypeAck {
					b.Errorf("got %q %v, want an ack", typ, err)
					return
				}
				if at.Before(measureFrom) {
					continue // warm-up: see benchPacedWarmup
				}
				ms := float64(time.Since(at)) / float64(time.Millisecond)
				mu.Lock()
				lat = append(lat, ms)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) == 0 {
		b.Fatal("no acks")
	}
	return pacedResult{
		p50:           lat[len(lat)/2],
		p99:           lat[len(lat)*99/100],
		commitMs:      s.histMean(b, "meridian_flush_seconds") * 1e3,
		flushReadings: s.histMean(b, "meridian_flush_readings"),
	}
}

func benchFleet(b *testing.B, s *ingestServer) []*device {
	b.StopTimer()
	defer b.StartTimer()
	devs := make([]*device, benchDevices)
	for i := range devs {
		devs[i], _ = dialDevice(b, s.ws, fmt.Sprintf("bench-%03d", i))
	}
	return devs
}
