package sim_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sim "github.com/meridian-iot/meridian/firmware-sim"
)

// serverProc is a `meridian serve` child process.
type serverProc struct {
	t      *testing.T
	bin    string
	listen string
	env    []string
	logs   *bytes.Buffer // every start's output, appended
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
}

func (s *serverProc) start() {
	s.t.Helper()
	dataDir := filepath.Join(filepath.Dir(s.bin), "data")
	cmd := exec.Command(s.bin, "serve", "--listen", s.listen, "--data-dir", dataDir)
	cmd.Env = append(os.Environ(), s.env...)
	w := &lockedWriter{mu: &s.mu, b: s.logs}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	s.waitReady(60 * time.Second)
}

// kill9 kills the server without any chance to drain or ack.
func (s *serverProc) kill9() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

func (s *serverProc) stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.kill9()
	}
}

func (s *serverProc) waitReady(limit time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			s.t.Fatalf("server exited during start:\n%s", s.logTail())
		default:
		}
		resp, err := http.Get("http://" + s.listen + "/readyz")
		if err == nil {
			var r struct {
				Ready bool `json:"ready"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if r.Ready {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("server not ready after %s:\n%s", limit, s.logTail())
}

func (s *serverProc) logTail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(s.logs.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// waitAdminKey waits until the configured admin key authenticates: serve
// registers it in the background once the store is ready, which may be
// just after /readyz first says ready.
func waitAdminKey(t *testing.T, base, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/admin/devices", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin key not accepted after 30s (last: %v %v)", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// buildMeridian builds the binary users get (plain `go build`) into dir.
func buildMeridian(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "meridian")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/meridian")
	cmd.Dir = ".." // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/meridian: %v\n%s", err, out)
	}
	return bin
}

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
	dir := t.TempDir()
	bin := buildMeridian(t, dir)
	proxy := newTCPProxy(t, pgHostPort(t, dbURL))

	var kb [32]byte
	_, _ = rand.Read(kb[:])
	adminKey := "mak_" + hex.EncodeToString(kb[:])
	srv := &serverProc{
		t: t, bin: bin, listen: freePort(t), logs: &bytes.Buffer{},
		env: []string{
			"MERIDIAN_STORAGE_URL=" + withHost(dbURL, proxy.addr()),
			"MERIDIAN_DEVICES_ADMIN_KEY=" + adminKey,
			"MERIDIAN_SERVER_LOG_LEVEL=warn",
		},
	}
	srv.start()
	t.Cleanup(srv.stop)
	base := "http://" + srv.listen
	waitAdminKey(t, base, adminKey)

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
		t.Fatalf("provision: %v\n%s", err, srv.logTail())
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
		srv.kill9()
		faults <- "server killed (SIGKILL)"
		time.Sleep(2 * time.Second)
		srv.start()
		faults <- "server restarted"
		time.Sleep(6 * time.Second)
		faults <- fmt.Sprintf("cut %d database connections", proxy.cut())
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
		t.Errorf("verification FAILED; server log tail:\n%s", srv.logTail())
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
