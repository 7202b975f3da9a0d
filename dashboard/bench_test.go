package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// BenchmarkLiveLatency measures Publish → browser-side receive latency on
// /v1/live: 50 WebSocket clients (gobwas, reading and decoding JSON like a
// page), each watching 10 devices, while 20,000 readings/s are published
// (1000 devices × 4 metrics × 5 batches/s, every device's batch of 4). One
// iteration is 10 ms of ingest (200 readings); run it with
//
//	go test -run '^$' -bench LiveLatency -benchtime 500x ./dashboard/
//
// for 5 s of load. A reading's value carries its publish time, so every
// received update gives one latency sample (for a coalesced update, the age
// of its newest reading).
func BenchmarkLiveLatency(b *testing.B) {
	const (
		devices       = 1000
		metrics       = 4
		clients       = 50
		subsPerClient = 10
		tick          = 10 * time.Millisecond
		batchesPerTik = devices * 5 / 100 // 5 batches/s per device, 100 ticks/s
	)
	e := newTestEnv(b, func(_ *Config, d *Deps) { d.Now = time.Now })
	start := time.Now()

	type sample struct{ lat []time.Duration }
	samples := make([]sample, clients)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make([]*wsClient, clients)
	for i := range clients {
		c, err := wsDial(b, e.srv.URL, http.Header{"Authorization": {"Bearer " + viewerKey}})
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		for s := range subsPerClient {
			dev := fmt.Sprintf("d%04d", (i*subsPerClient+s*37)%devices)
			b, _ := json.Marshal(clientMsg{Type: "subscribe", Device: dev})
			_ = wsutil.WriteClientText(c.conn, b)
		}
		wg.Add(1)
		go func(i int, c *wsClient) {
			defer wg.Done()
			rw := struct {
				io.Reader
				io.Writer
			}{c.r, c.conn}
			var m struct {
				Type    string `json:"type"`
				Updates []struct {
					Last float64 `json:"last"`
				} `json:"updates"`
			}
			for ctx.Err() == nil {
				_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				data, op, err := wsutil.ReadServerData(rw)
				if err != nil {
					if ctx.Err() == nil {
						b.Errorf("client %d: %v", i, err)
					}
					return
				}
				now := time.Since(start)
				if op != ws.OpText {
					continue
				}
				m.Updates = m.Updates[:0]
				if json.Unmarshal(data, &m) != nil || m.Type != "updates" {
					continue
				}
				for _, u := range m.Updates {
					samples[i].lat = append(samples[i].lat, now-time.Duration(u.Last))
				}
			}
		}(i, c)
	}
	time.Sleep(200 * time.Millisecond) // subscriptions in place

	names := make([]string, devices)
	for d := range devices {
		names[d] = fmt.Sprintf("d%04d", d)
	}
	metricNames := []string{"temp_c", "humidity_pct", "supply_v", "rpm"}
	seq := make([]uint64, devices)
	next := 0
	b.ResetTimer()
	t0 := time.Now()
	for n := 0; n < b.N; n++ {
		// Pace: iteration n starts at t0 + n*tick.
		if d := time.Until(t0.Add(time.Duration(n) * tick)); d > 0 {
			time.Sleep(d)
		}
		for range batchesPerTik {
			d := next % devices
			next++
			seq[d]++
			nowMs := time.Now().UnixMilli()
			v := float64(time.Since(start))
			rs := make([]telemetry.Reading, metrics)
			for m := range metrics {
				rs[m] = telemetry.Reading{Time: nowMs, Metric: metricNames[m], Value: v}
			}
			e.d.Publish(telemetry.Batch{Device: names[d], Seq: seq[d], Readings: rs})
		}
	}
	elapsed := time.Since(t0)
	b.StopTimer()
	time.Sleep(300 * time.Millisecond) // let the last updates arrive
	cancel()
	for _, c := range conns {
		c.conn.Close()
	}
	wg.Wait()

	var all []time.Duration
	for _, s := range samples {
		all = append(all, s.lat...)
	}
	if len(all) == 0 {
		b.Fatal("no updates received")
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration { return all[min(len(all)-1, int(float64(len(all))*p))] }
	readings := float64(b.N*batchesPerTik*metrics) / elapsed.Seconds()
	b.ReportMetric(readings, "readings/s")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "updates/s")
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(0, "ns/op")
	dropped := 0.0
	for _, r := range []string{reasonSlow, reasonWrite} {
		dropped += counterValue(b, e.d.m.disconnects.WithLabelValues(r))
	}
	if dropped > 0 {
		b.Errorf("%v clients were disconnected during the benchmark", dropped)
	}
	if n := counterValue(b, e.d.m.publishDropped.WithLabelValues("hub_full")); n > 0 {
		b.Errorf("the hub dropped %v batches", n)
	}
}
