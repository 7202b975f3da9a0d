package sim_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	sim "github.com/meridian-iot/meridian/firmware-sim"
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
// dashboard on), because what a connection costs includes what those keep
// per online device. MERIDIAN_BENCH_CONNS_BARE=1 turns both off, as this
// benchmark did before (the connection core and the device endpoint alone).
//
// Env: MERIDIAN_BENCH_CONNS_N (default "10000,19000"), MERIDIAN_BENCH_CONNS_RUNS
// (default 3), MERIDIAN_BENCH_BIN (a prebuilt meridian binary; otherwise one
// is built), MERIDIAN_BENCH_CONNS_BINS (several binaries separated by commas:
// each run starts each in turn, so a before and an after are measured in the
// same run, alternating), MERIDIAN_BENCH_GOGC (GOGC for the server, default unset),
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
	maxN := slices.Max(ns)
	runs := benchRuns(b, "MERIDIAN_BENCH_CONNS_RUNS", maxN)
	env := connRoomEnv()
	if os.Getenv("MERIDIAN_BENCH_CONNS_BARE") == "1" {
		env = append(env, bareEnv()...)
	}
	if g := os.Getenv("MERIDIAN_BENCH_GOGC"); g != "" {
		env = append(env, "GOGC="+g)
	}
	if os.Getenv("MERIDIAN_BENCH_CONNS_TLS") == "1" {
		certFile, keyFile := selfSignedLoopback(b, b.TempDir())
		env = append(env, "MERIDIAN_SERVER_TLS_CERT_FILE="+certFile, "MERIDIAN_SERVER_TLS_KEY_FILE="+keyFile)
		b.Setenv("SSL_CERT_FILE", certFile) // read once, at the first TLS use
	}
	// Every run reuses the data dir with a fresh process (of each binary).
	bins := []string{meridiantest.Bin(b)}
	if v := os.Getenv("MERIDIAN_BENCH_CONNS_BINS"); v != "" {
		bins = strings.Split(v, ",")
	}
	opts := meridiantest.Options{AdminKey: meridiantest.RandomKey(b), DataDir: b.TempDir(), Env: env}
	servers := make([]*meridiantest.Server, len(bins))
	for i, bin := range bins {
		o := opts
		o.Bin = bin
		servers[i] = meridiantest.NewServer(b, o)
	}
	srv := servers[0]

	// Provision once.
	srv.Start(b)
	ids := make([]string, maxN)
	for i := range ids {
		ids[i] = fmt.Sprintf("conn-%05d", i)
	}
	t0 := time.Now()
	tokens, err := sim.Provisioner{BaseURL: srv.URL(), AdminKey: srv.AdminKey(), Concurrency: 8}.Provision(context.Background(), ids)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("provisioned %d devices in %v", len(tokens), time.Since(t0).Round(time.Millisecond))
	stopServer(b, srv)
	toks := make([]string, len(ids))
	for i, id := range ids {
		toks[i] = tokens[id]
	}

	for _, n := range ns {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			type series struct{ perConn, rssPerConn, stackPerConn, hps []float64 }
			all := make([]series, len(servers))
			for r := range runs {
				for i, srv := range servers {
					res := connRun(b, srv, toks[:n])
					b.Logf("run %d %s: n=%d heap %+.0f B stack %+.0f B other %+.0f B goroutines %+d rss %+.0f B -> heap+stack %.0f B/conn (stack %.0f, other runtime %.0f), rss %.0f B/conn; connect %v = %.0f handshakes/s (%d retries); load average %s",
						r+1, filepath.Base(bins[i]), n, res.dHeap, res.dStack, res.dOther, res.dGoroutines, res.dRSS,
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

type connBenchResult struct {
	dHeap, dStack, dRSS float64
	// dOther is the runtime's other_sys: off-heap memory such as the
	// netpoller's descriptor per socket (runtime pollDesc).
	dOther      float64
	dGoroutines int
	connect     time.Duration
	retries     int64
}

// benchRuns reads how many runs to make from runsVar (default 3) and makes
// sure this process may open conns connections (and a hundred files more).
func benchRuns(b *testing.B, runsVar string, conns int) int {
	b.Helper()
	runs, err := strconv.Atoi(envOr(runsVar, "3"))
	if err != nil || runs < 1 {
		b.Fatalf("%s: want a positive integer", runsVar)
	}
	limit, err := sim.RaiseFileLimit()
	if err != nil {
		b.Fatal(err)
	}
	if limit < uint64(conns)+100 {
		b.Fatalf("open-file limit %d is too low for %d connections", limit, conns)
	}
	return runs
}

// readUntilClosed reads the server's frames, answering pings (wsutil's
// control handler), until the connection fails or is closed.
func readUntilClosed(rd io.Reader, conn net.Conn) {
	rw := struct {
		io.Reader
		io.Writer
	}{rd, conn}
	for {
		if _, _, err := wsutil.ReadServerData(rw); err != nil {
			return
		}
	}
}

// benchServerEnv is the server of the connection benchmarks: devices only
// (no MQTT broker, no dashboard), with room for every connection and
// handshake they make. The child inherits this process's raised open-file
// limit.
func benchServerEnv() []string { return append(bareEnv(), connRoomEnv()...) }

// bareEnv turns the embedded MQTT broker and the dashboard off.
func bareEnv() []string {
	return []string{"MERIDIAN_MQTT_EMBEDDED_ENABLED=false", "MERIDIAN_DASHBOARD_ENABLED=false"}
}

// connRoomEnv makes room for every connection and handshake.
func connRoomEnv() []string {
	return []string{"MERIDIAN_DEVICES_CONNECT_PER_MINUTE=100000", "MERIDIAN_INGEST_MAX_CONNECTIONS=25000"}
}

// stopServer asks for a graceful stop (killing after 20 s) and drops this
// process's idle connections to it.
func stopServer(tb testing.TB, s *meridiantest.Server) {
	if err := s.Stop(); err != nil {
		tb.Logf("stop server: %v", err)
	}
	http.DefaultClient.CloseIdleConnections()
}

type connBenchSample struct {
	heap, stack, other, rss float64
	goroutines              int
}

// sample reads heap in use, stack in use, other_sys and goroutines from
// /metrics and VmRSS from /proc.
func sample(tb testing.TB, s *meridiantest.Server) (m connBenchSample) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.AdminKey())
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
	m.rss = float64(procStatusKiB(s.PID(), "VmRSS")) * 1024
	return m
}

// connRun starts a fresh server, samples it idle, connects one device per token
// with 32 handshakes in flight (ingest.max_handshakes), lets the connections
// sit idle, samples again, and tears everything down.
func connRun(tb testing.TB, srv *meridiantest.Server, tokens []string) connBenchResult {
	tb.Helper()
	srv.Start(tb)
	defer stopServer(tb, srv)
	time.Sleep(3 * time.Second)
	m0 := sample(tb, srv)

	url := "ws" + strings.TrimPrefix(srv.URL(), "http") + "/v1/device"
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
					readUntilClosed(rd, conn)
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
	m1 := sample(tb, srv)
	return connBenchResult{
		dHeap: m1.heap - m0.heap, dStack: m1.stack - m0.stack, dOther: m1.other - m0.other,
		dRSS: m1.rss - m0.rss, dGoroutines: m1.goroutines - m0.goroutines,
		connect: connect, retries: retries.Load(),
	}
}

// dialDevice connects one device and reads its hello; a failure (a 503 at
// the handshake cap) is retried after a short pause.
func dialDevice(url, token string, retries *atomic.Int64) (net.Conn, io.Reader, error) {
	for attempt := 0; ; attempt++ {
		conn, rd, _, err := dialHello(context.Background(), url, token, &net.Dialer{})
		if err != nil && attempt < 50 {
			retries.Add(1)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return conn, rd, err
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
