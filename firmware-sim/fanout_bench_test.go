package sim_test

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/meridian-iot/meridian/bridge"
	"github.com/meridian-iot/meridian/dashboard"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// BenchmarkIngestFanout is BenchmarkIngestPostgres with the committed-batch
// fan-out as `meridian serve` wires it: "off" (mqtt.embedded.enabled and
// dashboard.enabled false), "defaults" (MQTT bridge on the embedded broker
// and the dashboard hub, nobody listening) and "subscriber" (defaults plus
// one MQTT client on <prefix>/+/telemetry, which must receive every
// batch). cpu-ns/reading is the whole process's CPU (the simulated devices
// run in it too) per reading. Compare the sub-benchmarks of one run.
//
//	go test -p 1 -run '^$' -bench IngestFanout -benchtime 1x -count 5 ./firmware-sim/
func BenchmarkIngestFanout(b *testing.B) {
	for _, mode := range []string{"off", "defaults", "subscriber"} {
		b.Run(mode, func(b *testing.B) {
			var br *bridge.Bridge
			var dash *dashboard.Dashboard
			var committed atomic.Int64
			hooks := func(o *ingest.Options) {
				if mode == "off" {
					return
				}
				o.Committed = func(bt telemetry.Batch) {
					committed.Add(1)
					br.Committed(bt)
					dash.Publish(bt)
				}
				o.Presence = func(p telemetry.Presence) {
					br.Presence(p)
					dash.Presence(p)
				}
				o.Results = func(r telemetry.CommandResult) { br.Result(r) }
			}
			s := serveIngest(b, openPostgres(b, newTestDB(b)), nil, hooks)
			var got atomic.Int64
			if mode != "off" {
				ctx, cancel := context.WithCancel(context.Background())
				var err error
				dash, err = dashboard.New(dashboard.DefaultConfig(), dashboard.Deps{
					Auth: noOperators{}, Registry: noRegistry{},
					Series: func(context.Context, storage.SeriesRequest) (storage.Series, error) { return storage.Series{}, nil },
				})
				if err != nil {
					b.Fatal(err)
				}
				mcfg := bridge.DefaultConfig()
				mcfg.Embedded.Listen = "127.0.0.1:0"
				mcfg.Node = "bench"
				const key = "mak_bench_key"
				br, err = bridge.New(mcfg, s.srv, bridge.Options{
					Authenticate: func(_ context.Context, _, p string) bridge.Access {
						if p == key {
							return bridge.AccessRead
						}
						return bridge.AccessNone
					},
				})
				if err != nil {
					b.Fatal(err)
				}
				br.OnRemoteBatch(dash.Publish)
				done := make(chan struct{}, 2)
				go func() { _ = dash.Run(ctx); done <- struct{}{} }()
				go func() { _ = br.Run(ctx); done <- struct{}{} }()
				b.Cleanup(func() { cancel(); <-done; <-done })
				for br.BrokerAddr() == "" {
					time.Sleep(time.Millisecond)
				}
				if mode == "subscriber" {
					c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + br.BrokerAddr()).SetClientID("bench-sub").
						SetUsername("ops").SetPassword(key).SetAutoReconnect(false))
					if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
						b.Fatalf("subscriber connect: %v", tok.Error())
					}
					b.Cleanup(func() { c.Disconnect(50) })
					tok := c.Subscribe(mcfg.TopicPrefix+"/+/telemetry", 1, func(paho.Client, paho.Message) { got.Add(1) })
					if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
						b.Fatalf("subscribe: %v", tok.Error())
					}
				}
			}
			cpu0 := processCPU()
			benchIngest(b, s.url)
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*benchReadings), "cpu-ns/reading")
			if mode == "subscriber" {
				deadline := time.Now().Add(30 * time.Second)
				for got.Load() < committed.Load() && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if got.Load() != committed.Load() {
					b.Fatalf("subscriber received %d of %d committed batches", got.Load(), committed.Load())
				}
			}
		})
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// noOperators and noRegistry stand in for the device registry: the
// benchmark uses no pages.
type noOperators struct{}

func (noOperators) AuthenticateOperator(context.Context, string) (storage.APIKey, error) {
	return storage.APIKey{}, errors.New("no operators in this benchmark")
}

type noRegistry struct{}

func (noRegistry) ListDevices(context.Context, map[string]string) ([]storage.Device, error) {
	return nil, nil
}

func (noRegistry) Device(context.Context, string) (storage.Device, []storage.Session, error) {
	return storage.Device{}, nil, storage.ErrNotFound
}
