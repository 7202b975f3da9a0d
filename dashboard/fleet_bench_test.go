package dashboard

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// BenchmarkFleetFirstPage10k is what a browser's navigation to the fleet
// page costs the server with 10,000 devices (3,000 of them online and
// streaming): the page's HTML and its first /ui/api/devices call, sorted by
// state, with the device cache cold as on a first visit, so every
// iteration reads the whole registry. Target: well under 1 s.
//
//	go test -run '^$' -bench FleetFirstPage10k -count 5 ./dashboard/
func BenchmarkFleetFirstPage10k(b *testing.B) {
	const n = 10_000
	devs := make([]storage.Device, n)
	for i := range devs {
		devs[i] = storage.Device{ID: fmt.Sprintf("dev-%05d", i), Name: fmt.Sprintf("Pump %d", i), Labels: map[string]string{"site": "north"}, Enabled: i%50 != 0}
	}
	b.Run("registry=fake", func(b *testing.B) {
		benchFleetPage(b, &fakeRegistry{devices: devs}, devs)
	})
	b.Run("registry=sqlite", func(b *testing.B) {
		cfg := sqlite.DefaultConfig()
		cfg.Path = filepath.Join(b.TempDir(), "meridian.db")
		cfg.Synchronous = sqlite.SyncNormal // setup speed only; reads are the same
		st, err := sqlite.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = st.Close() })
		for _, d := range devs {
			d.CreatedAt = time.Now()
			if err := st.CreateDevice(context.Background(), d); err != nil {
				b.Fatal(err)
			}
		}
		benchFleetPage(b, devices.NewService(st, devices.DefaultConfig(), slog.New(slog.DiscardHandler)), devs)
	})
}

func benchFleetPage(b *testing.B, reg Registry, devs []storage.Device) {
	e := newTestEnv(b, func(_ *Config, d *Deps) { d.Registry = reg; d.Now = time.Now })
	now := time.Now().UnixMilli()
	for i := 0; i < len(devs); i += 10 {
		for j := range 3 {
			id := devs[i+j].ID
			e.d.Presence(telemetry.Presence{Device: id, Online: true, At: now})
			e.d.Publish(telemetry.Batch{Device: id, Seq: 1, Readings: []telemetry.Reading{
				{Time: now, Metric: "temp_c", Value: 21.5}, {Time: now, Metric: "humidity_pct", Value: 40}, {Time: now, Metric: "supply_v", Value: 12.1},
			}})
		}
	}
	// Let the hub take in what was published.
	for e.d.hub.QueueDepth() > 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	h := e.d.Handler()
	get := func(path string) {
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("Authorization", "Bearer "+viewerKey)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		e.d.devCache.mu.Lock()
		e.d.devCache.devices = nil // a first visit: read the registry
		e.d.devCache.mu.Unlock()
		get("/")
		get("/ui/api/devices?offset=0&limit=50&sort=state")
	}
}
