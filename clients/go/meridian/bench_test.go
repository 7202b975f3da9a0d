package meridian_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// BenchmarkClientSendAcked measures one Client streaming batches of 100
// readings over a WebSocket to a real ingest server on the embedded SQLite
// store, in one process: one op is one batch, and readings/s counts
// readings acked durable per wall second. The ring (64) lets Send pipeline;
// the figure is what a single gateway connection sustains.
//
//	go test -run '^$' -bench ClientSendAcked -count 5 ./clients/go/meridian/
func BenchmarkClientSendAcked(b *testing.B) {
	for _, tr := range []meridian.Transport{meridian.WebSocket, meridian.HTTP} {
		b.Run(string(tr), func(b *testing.B) {
			cfg := sqlite.DefaultConfig()
			cfg.Path = filepath.Join(b.TempDir(), "meridian.db")
			st, err := sqlite.Open(context.Background(), cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			srv := serve(b, st, nil)
			c, err := meridian.New(meridian.Config{URL: srv.url, Token: "tok-bench", Transport: tr})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() { cancel(); <-done }()

			rs := make([]meridian.Reading, 100)
			t0 := time.Now().Add(-time.Hour)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for j := range rs {
					rs[j] = meridian.Reading{Time: t0.Add(time.Duration(i*100+j) * time.Microsecond), Metric: "vib", Value: float64(j)}
				}
				if err := c.Send(ctx, rs); err != nil {
					b.Fatal(err)
				}
			}
			for c.Pending() > 0 {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N*len(rs))/time.Since(start).Seconds(), "readings/s")
		})
	}
}
