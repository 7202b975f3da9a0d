package sim_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	sim "github.com/meridian-iot/meridian/firmware-sim"
)

// TestEndToEndChaos is the project's no-loss proof (issue 5): the real
// server binary on the real PostgreSQL, 200 simulated devices under chaos
// (disconnects, stalls, skewed clocks, invalid readings, malformed frames,
// reboots, a share over HTTP), one kill -9 of the server and a restart, one
// cut of every database connection; then every acked reading must be stored
// exactly once and nothing else.
func TestEndToEndChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	dbURL := newTestDB(t) // fails under CI=true without PostgreSQL
	proxy := meridiantest.NewProxy(t, pgHostPort(t, dbURL))

	srv := meridiantest.StartServer(t, meridiantest.Options{
		AdminKey: meridiantest.RandomKey(t),
		Env: []string{
			"MERIDIAN_STORAGE_URL=" + withHost(dbURL, proxy.Addr()),
			"MERIDIAN_SERVER_LOG_LEVEL=warn",
		},
	})
	base, adminKey := srv.URL(), srv.AdminKey()

	cfg := sim.DefaultConfig()
	cfg.URL = base
	cfg.Devices = 200
	cfg.Prefix = "e2e-"
	cfg.Ramp = 400
	cfg.Duration = 30 * time.Second
	cfg.Drain = 40 * time.Second
	cfg.Speed = 20
	cfg.FlushEvery = 300 * time.Millisecond
	cfg.HTTPShare = 0.1
	cfg.BackoffBase = 100 * time.Millisecond
	cfg.BackoffMax = 2 * time.Second
	cfg.TryLater = 2 * time.Second
	cfg.Policy = 2 * time.Second
	cfg.Verify = true
	cfg.Logger = testLogger()
	cfg.Chaos = sim.Chaos{
		DisconnectEvery: 10 * time.Second,
		StallEvery:      20 * time.Second, StallFor: time.Second,
		ClockSkew:      time.Minute,
		InvalidShare:   0.1,
		MalformedShare: 0.05, MalformedEvery: 10 * time.Second,
		RebootEvery: 30 * time.Second,
	}
	ctx := context.Background()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	tokens, err := sim.Provisioner{BaseURL: base, AdminKey: adminKey, Concurrency: 8}.Provision(pctx, cfg.DeviceIDs())
	cancel()
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, srv.LogTail(40))
	}
	fleet, err := sim.New(cfg, tokens, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}

	// The faults, while the fleet runs.
	faults := make(chan string, 4)
	go func() {
		defer close(faults)
		time.Sleep(10 * time.Second)
		srv.Kill()
		faults <- "server killed (SIGKILL)"
		time.Sleep(2 * time.Second)
		srv.Start(t)
		faults <- "server restarted"
		time.Sleep(6 * time.Second)
		faults <- fmt.Sprintf("cut %d database connections", proxy.Cut())
	}()
	rep, err := fleet.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for f := range faults {
		t.Log(f)
	}
	t.Logf("report:\n%s", rep.Text())

	// Read the store back directly, not through the server under test.
	vctx, vcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer vcancel()
	res, err := fleet.Verify(vctx, pgxQuery(dbURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.String())
	if !res.Pass {
		t.Errorf("verification FAILED; server log tail:\n%s", srv.LogTail(40))
	}
	if rep.Unacked != 0 {
		t.Errorf("%d batches were never acked after the drain", rep.Unacked)
	}
	if res.Required == 0 || res.Stored != res.Required {
		t.Errorf("stored %d of %d acked readings", res.Stored, res.Required)
	}
	if res.Rejected == 0 || rep.CloseCodes["1007"] == 0 || rep.Reconnects < int64(cfg.Devices) {
		t.Errorf("chaos did not bite: rejected %d, 1007 closes %d, reconnects %d", res.Rejected, rep.CloseCodes["1007"], rep.Reconnects)
	}
}
