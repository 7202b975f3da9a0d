package sim_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// BenchmarkIdleConnections measures what an idle device connection costs
// the server and how fast it accepts handshakes (issue 5, "Connections").
// The server is `meridian serve` in its own process (embedded SQLite, a
// temporary data dir) so its memory is not mixed with the clients'; this
// process is the client. b.N is ignored: one invocation provisions the
// devices once and then, for each N, runs a fresh server several times,
// reporting medians. It needs ~N+100 open files in both processes, so it
// only runs when asked:
//
//	MERIDIAN_BENCH_CONNS=1 go test -run '^$' -bench IdleConnections -benchtime 1x -timeout 30m ./firmware-sim/
//
// The server runs with the shipped defaults (embedded MQTT broker and
// dashboard on; only the listen addresses, the data dir and the admin key are
// set), because what a connection costs includes what those keep per online
// device. MERIDIAN_BENCH_CONNS_BARE=1 turns both off, as this benchmark did
// before (the connection core and the device endpoint alone).
//
// Env: MERIDIAN_BENCH_CONNS_N (default "10000,19000"), MERIDIAN_BENCH_CONNS_RUNS
// (default 3), MERIDIAN_BENCH_BIN (a prebuilt meridian binary, or several
// separated by commas: each run then starts each binary in turn, so a before
// and an after are measured in the same run, alternating; otherwise one is
// built), MERIDIAN_BENCH_GOGC (GOGC for the server, default unset),
// MERIDIAN_BENCH_CONNS_TLS=1 (the server terminates TLS itself, with a
// throwaway self-signed certificate this process trusts via SSL_CERT_FILE).
func BenchmarkIdleConnections(b *testing.B) {
	if os.Getenv("MERIDIAN_BENCH_CONNS") != "1" {
		b.Skip("set MERIDIAN_BENCH_CONNS=1 to run (opens up to 19,000 sockets per side; minutes)")
	}
	ns, err := parseInts(envOr("MERIDIAN_BENCH_CONNS_N", "10000,19000"))
	if err != nil {
		b.Fatal(err)
	}
	runs, err := strconv.Atoi(envOr("MERIDIAN_BENCH_CONNS_RUNS", "3"))
	if err != nil || runs < 1 {
		b.Fatalf("MERIDIAN_BENCH_CONNS_RUNS: want a positive integer")
	}
	limit, err := sim.RaiseFileLimit()
	if err != nil {
		b.Fatal(err)
	}
	maxN := slices.Max(ns)
	if limit < uint64(maxN)+100 {
		b.Fatalf("open-file limit %d is too low for %d connections", limit, maxN)
	}
	var bins []string
	if v := os.Getenv("MERIDIAN_BENCH_BIN"); v != "" {
		bins = strings.Split(v, ",")
	} else {
		bin := filepath.Join(b.TempDir(), "meridian")
		out, err := exec.Command("go", "build", "-o", bin, "../cmd/meridian").CombinedOutput()
		if err != nil {
			b.Fatalf("build meridian: %v\n%s", err, out)
		}
		bins = []string{bin}
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	env := connBenchEnv{bin: bins[0], dataDir: b.TempDir(), adminKey: "mak_" + hex.EncodeToString(key)}
	if os.Getenv("MERIDIAN_BENCH_CONNS_TLS") == "1" {
		env.certFile, env.keyFile = selfSignedLoopback(b, b.TempDir())
		b.Setenv("SSL_CERT_FILE", env.certFile) // read once, at the first TLS use
	}

	// Provision once; every run reuses the data dir with a fresh process.
	srv := env.start(b)
	ids := make([]string, maxN)
	for i := range ids {
		ids[i] = fmt.Sprintf("conn-%05d", i)
	}
	t0 := time.Now()
	tokens, err := sim.Provisioner{BaseURL: srv.base, AdminKey: env.adminKey, Concurrency: 8}.Provision(context.Background(), ids)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("provisioned %d devices in %v", len(tokens), time.Since(t0).Round(time.Millisecond))
	srv.stop(b)
	toks := make([]string, len(ids))
	for i, id := range ids {
		toks[i] = tokens[id]
	}

	for _, n := range ns {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			type series struct{ perConn, rssPerConn, stackPerConn, hps []float64 }
			all := make([]series, len(bins))
			for r := range runs {
				for i, bin := range bins {
					env := env
					env.bin = bin
					res := env.run(b, toks[:n])
					b.Logf("run %d %s: n=%d heap %+.0f B stack %+.0f B other %+.0f B goroutines %+d rss %+.0f B -> heap+stack %.0f B/conn (stack %.0f, other runtime %.0f), rss %.0f B/conn; connect %v = %.0f handshakes/s (%d retries); load average %s",
						r+1, filepath.Base(bin), n, res.dHeap, res.dStack, res.dOther, res.dGoroutines, res.dRSS,
						(res.dHeap+res.dStack)/float64(n), res.dStack/float64(n), res.dOther/float64(n), res.dRSS/float64(n),
						res.connect.Round(time.Millisecond), float64(n)/res.connect.Seconds(), res.retries, loadAverage())
					s := &all[i]
					s.perConn = append(s.perConn, (res.dHeap+res.dStack)/float64(n))
					s.stackPerConn = append(s.stackPerConn, res.dStack/float64(n))
					s.rssPerConn = append(s.rssPerConn, res.dRSS/float64(n))
					s.hps = append(s.hps, float64(n)/res.connect.Seconds())
				}
			}
			for i, s := range all {
				// One binary keeps the plain units; with several, each
				// metric is prefixed by its binary's file name.
				prefix := ""
				if len(bins) > 1 {
					prefix = filepath.Base(bins[i]) + ":"
				}
				b.ReportMetric(median(s.perConn), prefix+"heap+stack-B/conn")
				b.ReportMetric(median(s.stackPerConn), prefix+"stack-B/conn")
				b.ReportMetric(median(s.rssPerConn), prefix+"rss-B/conn")
				b.ReportMetric(median(s.hps), prefix+"handshakes/s")
			}
			b.ReportMetric(0, "ns/op") // one invocation of many runs: ns/op means nothing
		})
	}
}

// loadAverage is the 1-minute load average, for the log: figures from a
// loaded machine are read with it in mind.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

type connBenchEnv struct {
	bin, dataDir, adminKey string
	certFile, keyFile      string // set: serve TLS
}

// selfSignedLoopback writes a certificate for 127.0.0.1 and its key.
func selfSignedLoopback(tb testing.TB, dir string) (certFile, keyFile string) {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meridian bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

type connBenchServer struct {
	cmd  *exec.Cmd
	base string
	key  string
	done chan error
}

type connBenchResult struct {
	dHeap, dStack, dRSS float64
	// dOther is the runtime's other_sys: off-heap memory such as the
	// netpoller's descriptor per socket (runtime pollDesc).
	dOther      float64
	dGoroutines int
	connect     time.Duration
	retries     int64
}

// start runs `meridian serve` on a free loopback port and waits for /healthz.
func (e connBenchEnv) start(tb testing.TB) *connBenchServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	mqttAddr := mln.Addr().String()
	ln.Close()
	mln.Close()
	logf, err := os.OpenFile(filepath.Join(e.dataDir, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(e.bin, "serve")
	cmd.Env = append(os.Environ(),
		"MERIDIAN_SERVER_DATA_DIR="+e.dataDir,
		"MERIDIAN_SERVER_LISTEN="+addr,
		"MERIDIAN_MQTT_EMBEDDED_LISTEN="+mqttAddr, // 1884 may be taken
		"MERIDIAN_DEVICES_ADMIN_KEY="+e.adminKey,
		"MERIDIAN_DEVICES_CONNECT_PER_MINUTE=100000",
		"MERIDIAN_INGEST_MAX_CONNECTIONS=25000",
	)
	if os.Getenv("MERIDIAN_BENCH_CONNS_BARE") == "1" {
		cmd.Env = append(cmd.Env, "MERIDIAN_MQTT_EMBEDDED_ENABLED=false", "MERIDIAN_DASHBOARD_ENABLED=false")
	}
	if g := os.Getenv("MERIDIAN_BENCH_GOGC"); g != "" {
		cmd.Env = append(cmd.Env, "GOGC="+g)
	}
	scheme := "http://"
	if e.certFile != "" {
		cmd.Env = append(cmd.Env, "MERIDIAN_SERVER_TLS_CERT_FILE="+e.certFile, "MERIDIAN_SERVER_TLS_KEY_FILE="+e.keyFile)
		scheme = "https://"
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child inherits this process's raised open-file limit.
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	s := &connBenchServer{cmd: cmd, base: scheme + addr, key: e.adminKey, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			s.stop(tb)
			tb.Fatalf("server did not become healthy (see %s)", filepath.Join(e.dataDir, "serve.log"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop asks for a graceful stop and kills after 20 s.
func (s *connBenchServer) stop(tb testing.TB) {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		tb.Log("server did not stop in 20 s; killing it")
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	http.DefaultClient.CloseIdleConnections()
}

type connBenchSample struct {
	heap, stack, other, rss float64
	goroutines              int
}

// sample reads heap in use, stack in use, other_sys and goroutines from
// /metrics and VmRSS from /proc.
func (s *connBenchServer) sample(tb testing.TB) (m connBenchSample) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("/metrics: status %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_memstats_heap_inuse_bytes":
			m.heap = v
		case "go_memstats_stack_inuse_bytes":
			m.stack = v
		case "go_memstats_other_sys_bytes":
			m.other = v
		case "go_goroutines":
			m.goroutines = int(v)
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				m.rss = kb * 1024
			}
		}
	}
	return m
}

// run starts a fresh server, samples it idle, connects one device per token
// with 32 handshakes in flight (ingest.max_handshakes), lets the connections
// sit idle, samples again, and tears everything down.
func (e connBenchEnv) run(tb testing.TB, tokens []string) connBenchResult {
	tb.Helper()
	srv := e.start(tb)
	defer srv.stop(tb)
	time.Sleep(3 * time.Second)
	m0 := srv.sample(tb)

	url := "ws" + strings.TrimPrefix(srv.base, "http") + "/v1/device"
	var (
		next    atomic.Int64
		retries atomic.Int64
		mu      sync.Mutex
		conns   = make([]net.Conn, 0, len(tokens))
		readers sync.WaitGroup
		workers sync.WaitGroup
		failed  atomic.Value
	)
	t0 := time.Now()
	for range 32 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) || failed.Load() != nil {
					return
				}
				conn, rd, err := dialDevice(url, tokens[i], &retries)
				if err != nil {
					failed.Store(err)
					return
				}
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
				readers.Add(1)
				go func() {
					defer readers.Done()
					// Answers pings (wsutil's control handler) until closed.
					rw := struct {
						io.Reader
						io.Writer
					}{rd, conn}
					for {
						if _, _, err := wsutil.ReadServerData(rw); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	workers.Wait()
	connect := time.Since(t0)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
		readers.Wait()
	}()
	if err, _ := failed.Load().(error); err != nil {
		tb.Fatalf("connect: %v (after %d connections)", err, len(conns))
	}
	// Let handshake garbage age and any per-connection timers settle.
	time.Sleep(10 * time.Second)
	m1 := srv.sample(tb)
	return connBenchResult{
		dHeap: m1.heap - m0.heap, dStack: m1.stack - m0.stack, dOther: m1.other - m0.other,
		dRSS: m1.rss - m0.rss, dGoroutines: m1.goroutines - m0.goroutines,
		connect: connect, retries: retries.Load(),
	}
}

// dialDevice connects one device and reads its hello; a 503 (handshake cap)
// is retried after a short pause.
func dialDevice(url, token string, retries *atomic.Int64) (net.Conn, io.Reader, error) {
	d := ws.Dialer{
		Protocols: []string{wire.Subprotocol},
		Header:    ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}}),
		Timeout:   15 * time.Second,
	}
	for attempt := 0; ; attempt++ {
		conn, br, _, err := d.Dial(context.Background(), url)
		if err != nil {
			if attempt < 50 {
				retries.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			return nil, nil, fmt.Errorf("dial: %w", err)
		}
		var rd io.Reader = conn
		if br != nil {
			rd = io.MultiReader(br, conn)
		}
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, _, err := wsutil.ReadServerData(struct {
			io.Reader
			io.Writer
		}{rd, conn}); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("read hello: %w", err)
		}
		_ = conn.SetReadDeadline(time.Time{})
		return conn, rd, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("want positive integers separated by commas, got %q", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
