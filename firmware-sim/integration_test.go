package sim_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage/postgres"
)

// inProcess is a real ingest server on a real PostgreSQL store, reached
// through a TCP proxy so tests can cut its database connections.
type inProcess struct {
	srv   *ingest.Server
	url   string
	store *postgres.Store
	db    *meridiantest.Proxy
	http  *httptest.Server
}

func startInProcess(t testing.TB, mut func(*ingest.Config), opts ...func(*ingest.Options)) *inProcess {
	t.Helper()
	dbURL := newTestDB(t)
	proxy := meridiantest.NewProxy(t, pgHostPort(t, dbURL))
	store := openPostgres(t, withHost(dbURL, proxy.Addr()))
	p := serveIngest(t, store, mut, opts...)
	p.store, p.db = store, proxy
	return p
}

// openPostgres opens and readies the postgres backend at url.
func openPostgres(t testing.TB, url string) *postgres.Store {
	t.Helper()
	return meridiantest.OpenPostgres(t, url, testLogger())
}

// serveIngest runs a real ingest server on store behind an httptest server.
func serveIngest(t testing.TB, store ingest.Store, mut func(*ingest.Config), opts ...func(*ingest.Options)) *inProcess {
	t.Helper()
	cfg := ingest.DefaultConfig()
	cfg.Linger = 0 // group commit: commit at once
	cfg.Heartbeat = 3 * time.Second
	cfg.ShutdownGrace = 5 * time.Second
	s := meridiantest.StartIngest(t, store, cfg, mut, ingest.Options{Logger: testLogger()}, opts...)
	return &inProcess{srv: s.Server, url: s.URL, http: s.HTTP}
}

// fastConfig is a fleet that runs for seconds: sped-up sampling, short
// flushes and backoffs.
func fastConfig(url string, devices int) sim.Config {
	cfg := sim.DefaultConfig()
	cfg.URL = url
	cfg.Devices = devices
	cfg.Prefix = "it-"
	cfg.Ramp = 0
	cfg.Speed = 20
	cfg.FlushEvery = 250 * time.Millisecond
	cfg.Drain = 20 * time.Second
	cfg.BackoffBase = 20 * time.Millisecond
	cfg.BackoffMax = 500 * time.Millisecond
	cfg.TryLater = time.Second
	cfg.Policy = time.Second
	cfg.ProgressEvery = 0
	cfg.Verify = true
	return cfg
}

func TestFleetAgainstServerUnderChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	var results atomic.Int64
	s := startInProcess(t, nil, func(o *ingest.Options) {
		o.Results = func(r telemetry.CommandResult) {
			if r.OK && r.Error == "" {
				results.Add(1)
			}
		}
	})
	cfg := fastConfig(s.url, 50)
	cfg.Duration = 5 * time.Second
	cfg.HTTPShare = 0.2
	cfg.Chaos = sim.Chaos{
		DisconnectEvery: 2 * time.Second,
		StallEvery:      4 * time.Second, StallFor: 500 * time.Millisecond,
		ClockSkew:      5 * time.Minute,
		InvalidShare:   0.3,
		MalformedShare: 0.2, MalformedEvery: 2 * time.Second,
		RebootEvery: 6 * time.Second,
	}
	f, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Cut the server's database connections once mid-run: commits fail,
	// the pipeline retries, devices wait for late acks.
	go func() {
		time.Sleep(2500 * time.Millisecond)
		t.Logf("cut %d database connections", s.db.Cut())
	}()
	// Operators send commands now and then; online devices answer.
	stopCmds := make(chan struct{})
	cmdsDone := make(chan struct{})
	go func() {
		defer close(cmdsDone)
		ids := cfg.DeviceIDs()
		for i := 0; ; i++ {
			select {
			case <-stopCmds:
				return
			case <-time.After(100 * time.Millisecond):
			}
			_ = s.srv.SendCommand(ids[i%len(ids)], telemetry.Command{ID: fmt.Sprint(i), Name: "blink"})
		}
	}()
	rep, err := f.Run(ctx)
	close(stopCmds)
	<-cmdsDone
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", rep.Text())
	if rep.Commands == 0 || results.Load() == 0 {
		t.Errorf("no command answered: device count %d, server saw %d results", rep.Commands, results.Load())
	}
	res, err := f.Verify(ctx, storeQuery(s.store.Query))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.String())
	if !res.Pass {
		t.Fatalf("verification failed")
	}
	if rep.Unacked != 0 {
		t.Errorf("%d batches still unacked after the drain", rep.Unacked)
	}
	if res.Required == 0 || res.Stored != res.Required {
		t.Errorf("stored %d of %d required readings", res.Stored, res.Required)
	}
	if rep.ReadingsRej == 0 || res.Rejected == 0 {
		t.Errorf("no invalid readings were rejected (report %d, ledger %d)", rep.ReadingsRej, res.Rejected)
	}
	if rep.CloseCodes["1007"] == 0 {
		t.Errorf("no malformed frame was answered with 1007: %v", rep.CloseCodes)
	}
	if rep.Reconnects == 0 || rep.ChaosEvents == 0 {
		t.Errorf("chaos did not happen: reconnects %d, events %d", rep.Reconnects, rep.ChaosEvents)
	}
	if rep.HTTPDevices == 0 {
		t.Errorf("no HTTP fallback device")
	}
}

// A naive firmware that reuses seqs after a reboot still never makes the
// server store a batch twice or half; the verifier must resolve seqs that
// carried two different batches.
func TestFleetNaiveReboots(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	s := startInProcess(t, nil)
	cfg := fastConfig(s.url, 20)
	cfg.Prefix = "naive-"
	cfg.Duration = 4 * time.Second
	cfg.Chaos = sim.Chaos{RebootEvery: time.Second, NaiveReboot: true}
	f, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.Verify(context.Background(), storeQuery(s.store.Query))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s%s", rep.Text(), res.String())
	if !res.Pass {
		t.Fatal("verification failed")
	}
}

// The file-backed ring survives a simulator restart: a second fleet with
// the same state directory resends what the first left unacked.
func TestStateDirSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	s := startInProcess(t, nil)
	dir := t.TempDir()
	cfg := fastConfig(s.url, 10)
	cfg.Prefix = "state-"
	cfg.StateDir = dir
	cfg.Duration = 2 * time.Second
	cfg.Drain = 0 // stop at once: leave batches unacked in the rings
	f1, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The database goes away before the first run ends: its last batches
	// stay unacked in the rings (and in the state files).
	go func() {
		time.Sleep(1500 * time.Millisecond)
		s.db.SetDown(true)
	}()
	rep1, err := f1.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first run: sent %d, acked %d, unacked batches %d", rep1.ReadingsSent, rep1.ReadingsAcked, rep1.Unacked)
	if rep1.Unacked == 0 {
		t.Fatal("the first run left nothing unacked: the test proves nothing")
	}
	s.db.SetDown(false)

	cfg.Drain = 20 * time.Second
	cfg.Duration = time.Second
	f2, err := sim.New(cfg, meridiantest.Tokens(cfg.DeviceIDs()), nil)
	if err != nil {
		t.Fatal(err)
	}
	rep2, err := f2.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Unacked != 0 {
		t.Fatalf("second run left %d batches unacked", rep2.Unacked)
	}
	// The restored entries were committed by the server's retries once the
	// database was back (dropped at hello) or resent by the second run.
	if rep2.HelloDropped+rep2.ReadingsResent == 0 {
		t.Errorf("the second run neither dropped nor resent restored batches")
	}
	// Every reading of the first run, acked then or resent now, is stored
	// exactly once: the second ledger includes the resent batches.
	res, err := f2.Verify(context.Background(), storeQuery(s.store.Query))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.String())
	if !res.Pass {
		t.Fatal("verification failed")
	}
	var total int64
	q := storeQuery(s.store.Query)
	rows, err := q(context.Background(), "SELECT count(*) FROM telemetry WHERE device LIKE 'state-%'")
	if err != nil {
		t.Fatal(err)
	}
	total, _ = rows[0][0].(int64)
	if want := rep1.ReadingsSent + rep2.ReadingsSent - rep1.ReadingsRej - rep2.ReadingsRej; total != want {
		t.Errorf("store holds %d readings, the two runs sent %d valid ones", total, want)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
