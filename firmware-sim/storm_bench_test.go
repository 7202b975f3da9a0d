package sim_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
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
	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/ingest/wire"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// BenchmarkReconnectStorm measures how fast a whole fleet is back after its
// server dies (issue 13): N devices connected to `meridian serve` (its own
// process, under a supervisor that restarts it), the server SIGKILLed and
// started again on the same address, every device reconnecting with the
// protocol's backoff and honouring Retry-After on 503, as firmware and the
// Go client do (stormFleet). Reported: seconds from SIGKILL and from the restarted
// server's first accept until every device has its hello again, handshakes/s
// over that time, 503s answered, the slowest /metrics scrape during the
// storm, and session-open records lost (handshakes the restarted server
// completed minus device_sessions rows it added). b.N is ignored.
//
//	MERIDIAN_BENCH_STORM=1 go test -run '^$' -bench ReconnectStorm -benchtime 1x -timeout 30m ./firmware-sim/
//
// Env: MERIDIAN_BENCH_STORM_N (devices, default 5000, at most 19000: both
// processes need N+100 open files), MERIDIAN_BENCH_STORM_RUNS (default 3),
// MERIDIAN_BENCH_STORM_BACKENDS (default "sqlite,postgres"),
// MERIDIAN_BENCH_STORM_BACKOFF (the fleet's reconnect backoff base,max;
// default 50ms,1s; 1s,1m is the Go client's), MERIDIAN_BENCH_BIN (a prebuilt meridian
// binary, e.g. an older commit's, to compare; otherwise one is built from
// this tree).
func BenchmarkReconnectStorm(b *testing.B) {
	if os.Getenv("MERIDIAN_BENCH_STORM") != "1" {
		b.Skip("set MERIDIAN_BENCH_STORM=1 to run (up to 19,000 sockets per side; minutes)")
	}
	n, err := strconv.Atoi(envOr("MERIDIAN_BENCH_STORM_N", "5000"))
	if err != nil || n < 1 || n > 19_000 {
		b.Fatalf("MERIDIAN_BENCH_STORM_N: want 1..19000")
	}
	runs := benchRuns(b, "MERIDIAN_BENCH_STORM_RUNS", n)
	for _, backend := range strings.Split(envOr("MERIDIAN_BENCH_STORM_BACKENDS", "sqlite,postgres"), ",") {
		b.Run(fmt.Sprintf("%s/devices=%d", backend, n), func(b *testing.B) {
			var fromKill, fromAccept, hps, refused, slowMetrics, lost []float64
			for r := range runs {
				res := runStorm(b, backend, n)
				b.Logf("run %d: %d devices re-helloed %.2f s after SIGKILL (%.2f s after the first accept) = %.0f handshakes/s; %d answered 503; slowest /metrics %.0f ms; %d of %d session opens not recorded",
					r+1, n, res.fromKill.Seconds(), res.fromAccept.Seconds(), float64(n)/res.fromAccept.Seconds(),
					res.refused, float64(res.slowMetrics.Milliseconds()), res.lost, res.opened)
				fromKill = append(fromKill, res.fromKill.Seconds())
				fromAccept = append(fromAccept, res.fromAccept.Seconds())
				hps = append(hps, float64(n)/res.fromAccept.Seconds())
				refused = append(refused, float64(res.refused))
				slowMetrics = append(slowMetrics, float64(res.slowMetrics.Milliseconds()))
				lost = append(lost, float64(res.lost))
			}
			b.ReportMetric(median(fromKill), "s-from-kill")
			b.ReportMetric(median(fromAccept), "s-from-accept")
			b.ReportMetric(median(hps), "handshakes/s")
			b.ReportMetric(median(refused), "503s")
			b.ReportMetric(median(slowMetrics), "max-metrics-ms")
			b.ReportMetric(median(lost), "lost-opens")
			b.ReportMetric(0, "ns/op")
		})
	}
}

type stormResult struct {
	fromKill, fromAccept time.Duration
	refused              int64
	slowMetrics          time.Duration
	opened, lost         int64
}

// waitOK polls path (/healthz: accepting; /readyz: the admin key works too)
// until it answers 200; it returns when.
func waitOK(tb testing.TB, base, path string) time.Time {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + path)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now()
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("server did not answer %s within 60 s", path)
	return time.Time{}
}

func runStorm(b *testing.B, backend string, n int) stormResult {
	env := benchServerEnv()
	pgURL := ""
	switch backend {
	case "sqlite":
	case "postgres":
		pgURL = storagetest.NewPostgresDB(b)
		env = append(env, "MERIDIAN_STORAGE_URL="+pgURL)
	default:
		b.Fatalf("unknown backend %q (sqlite, postgres)", backend)
	}
	// One fixed address: the restarted server takes the killed one's place.
	srv := meridiantest.NewServer(b, meridiantest.Options{AdminKey: meridiantest.RandomKey(b), Env: env, Respawn: true})
	base, adminKey := srv.URL(), srv.AdminKey()
	srv.Launch(b)
	defer srv.Kill()
	waitOK(b, base, "/readyz")
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("storm-%05d", i)
	}
	tokens, err := sim.Provisioner{BaseURL: base, AdminKey: adminKey, Concurrency: 8}.Provision(context.Background(), ids)
	if err != nil {
		b.Fatal(err)
	}

	fleet := newStormFleet("ws"+strings.TrimPrefix(base, "http")+"/v1/device", n, stormBackoff(b))
	ctx, stop := context.WithCancel(context.Background())
	defer func() { stop(); fleet.wg.Wait() }()
	for i, id := range ids {
		fleet.wg.Add(1)
		go fleet.device(ctx, i, tokens[id])
	}
	if !fleet.waitPhase(0, 5*time.Minute) {
		b.Fatalf("initial connect: only %d of %d devices got hello", fleet.count(0), n)
	}
	// Let the session log catch up, then count rows before the kill.
	time.Sleep(2 * time.Second)
	rowsBefore := countSessions(b, base, adminKey, pgURL)

	fleet.refused.Store(0)
	logged := len(srv.Logs())
	fleetCPU0 := processCPU()
	killed := time.Now()
	oldPID := srv.Crash(b) // the supervisor restarts serve once the kernel has reaped it
	fleet.phase.Store(1)   // every hello from now on is the second server's
	accepting := waitOK(b, base, "/healthz")
	if srv.PID() == oldPID {
		b.Fatal("/healthz answered by the killed server")
	}
	healthz := accepting
	// Scrape /metrics through the storm, as Prometheus would.
	var slowest atomic.Int64
	scrapeCtx, stopScrape := context.WithCancel(ctx)
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for scrapeCtx.Err() == nil {
			t0 := time.Now()
			if _, err := scrapeMetrics(scrapeCtx, base, adminKey); err == nil {
				if d := int64(time.Since(t0)); d > slowest.Load() {
					slowest.Store(d)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	ok := fleet.waitPhase(1, 5*time.Minute)
	done := time.Now()
	fleetCPU, serverCPU := processCPU()-fleetCPU0, childCPU(srv.PID())
	peak := procStatusKiB(srv.PID(), "VmHWM")
	stopScrape()
	<-scraped
	if !ok {
		b.Fatalf("after restart only %d of %d devices got hello within 5 min", fleet.count(1), n)
	}
	first := fleet.firstHello(1)
	b.Logf("restart: /healthz 200 %.0f ms, first hello %.0f ms after SIGKILL; %s", ms(healthz.Sub(killed)), ms(first.Sub(killed)), startTimeline(srv.Logs()[logged:], killed))
	b.Logf("hellos by second after SIGKILL: %v", fleet.perSecond(1, killed))
	b.Logf("the slowest 5%%: %s", fleet.tail(killed, 0.05))
	b.Logf("CPU until the last hello: restarted server %.2f s, this process (the fleet) %.2f s, of %.2f s wall on %d cores; server peak RSS %.0f MiB",
		serverCPU.Seconds(), fleetCPU.Seconds(), done.Sub(killed).Seconds(), runtime.NumCPU(), float64(peak)/1024)
	if first.Before(accepting) {
		accepting = first // the first hello can beat our /healthz poll
	}
	time.Sleep(2 * time.Second) // the session log flushes
	m, err := scrapeMetrics(context.Background(), base, adminKey)
	if err != nil {
		b.Fatal(err)
	}
	opened := int64(m[`meridian_device_handshakes_total{result="ok"}`])
	added := countSessions(b, base, adminKey, pgURL) - rowsBefore
	return stormResult{
		fromKill: done.Sub(killed), fromAccept: done.Sub(accepting),
		refused: fleet.refused.Load(), slowMetrics: time.Duration(slowest.Load()),
		opened: opened, lost: opened - added,
	}
}

// childCPU is the CPU time (user+system) process pid has used, from
// /proc/pid/stat (clock ticks of 10 ms); 0 if unreadable.
func childCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name: state is the 3rd field
	// of the line, utime and stime the 14th and 15th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// procStatusKiB reads a "kB" field of /proc/pid/status (VmHWM: peak RSS);
// 0 if unreadable.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// startTimeline says when the restarted server logged its first line,
// "meridian serving" (listening) and "storage ready" (PostgreSQL: set up in
// the background, handshakes get 503 until then), from its log (text
// format, time=...).
func startTimeline(logs string, killed time.Time) string {
	var first, serving, ready time.Time
	for _, line := range strings.Split(logs, "\n") {
		v, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, strings.Fields(v)[0])
		if err != nil {
			continue
		}
		if first.IsZero() {
			first = t
		}
		if strings.Contains(line, `msg="meridian serving"`) {
			serving = t
		}
		if strings.Contains(line, `msg="storage ready"`) {
			ready = t
		}
	}
	if serving.IsZero() {
		return "no start logged"
	}
	out := fmt.Sprintf("first log line %.0f ms, serving %.0f ms after SIGKILL", ms(first.Sub(killed)), ms(serving.Sub(killed)))
	if !ready.IsZero() {
		out += fmt.Sprintf(", storage ready %.0f ms", ms(ready.Sub(killed)))
	}
	return out
}

// stormFleet runs one goroutine per device and reconnects the way the
// protocol recommends and the Go client does (docs/protocol.md 7.4,
// clients/go/meridian): before every attempt, including the first after
// the connection drops, wait uniform in [0, min(max, base*2^n)] (full
// jitter), n counting attempts since the last hello; after a 503 with
// Retry-After, wait that plus uniform in [0, base], n unchanged. Then read hello, note it for the current phase, read
// until the connection drops. The default base and max, 50 ms and 1 s, make
// a harsher fleet than firmware following the protocol: it reconnects at
// once and hammers a restarting server with refused connects (the figures
// in docs/benchmarks.md use it); MERIDIAN_BENCH_STORM_BACKOFF=1s,1m is the
// Go client's own backoff.
type stormFleet struct {
	url     string
	backoff [2]time.Duration // base, max
	wg      sync.WaitGroup
	refused atomic.Int64
	phase   atomic.Int32 // 0: first connect, 1: after the SIGKILL
	mu      sync.Mutex
	n       int
	hellos  [2]map[int]time.Time // phase → device → its first hello in that phase
	// lastFail is, for each device's first hello after the kill, what its
	// last failed attempt before it met and when: tail() explains the
	// storm's slowest devices with it.
	lastFail map[int]stormFail
	cond     *sync.Cond
}

// stormBackoff reads MERIDIAN_BENCH_STORM_BACKOFF ("base,max").
func stormBackoff(tb testing.TB) [2]time.Duration {
	v := envOr("MERIDIAN_BENCH_STORM_BACKOFF", "50ms,1s")
	b, m, ok := strings.Cut(v, ",")
	base, err1 := time.ParseDuration(b)
	max, err2 := time.ParseDuration(m)
	if !ok || err1 != nil || err2 != nil || base <= 0 || max < base {
		tb.Fatalf("MERIDIAN_BENCH_STORM_BACKOFF: want base,max such as 1s,1m; got %q", v)
	}
	return [2]time.Duration{base, max}
}

func newStormFleet(url string, n int, backoff [2]time.Duration) *stormFleet {
	f := &stormFleet{url: url, n: n, backoff: backoff, hellos: [2]map[int]time.Time{{}, {}}, lastFail: map[int]stormFail{}}
	f.cond = sync.NewCond(&f.mu)
	return f
}

func (f *stormFleet) device(ctx context.Context, i int, token string) {
	defer f.wg.Done()
	attempts := -1 // the fleet's first connect is at once
	var retryAfter time.Duration
	var fail stormFail
	for ctx.Err() == nil {
		if attempts >= 0 {
			ceil := min(f.backoff[0]<<min(attempts, 16), f.backoff[1])
			if retryAfter > 0 { // as the Go client: Retry-After plus one base of jitter
				ceil = f.backoff[0]
			}
			pause := retryAfter + time.Duration(mrand.Int64N(int64(ceil)+1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
		if retryAfter == 0 {
			attempts++
		}
		conn, rd, ra, err := dialHello(ctx, f.url, token, stormSource(i))
		retryAfter = ra
		if err != nil {
			if ra > 0 {
				f.refused.Add(1)
			}
			fail = stormFail{kind: failKind(err, ra), at: time.Now()}
			continue
		}
		// A connection that got its hello counts as healthy: the fleet
		// had been up long before the kill.
		attempts = 0
		f.mu.Lock()
		if p := f.phase.Load(); f.hellos[p][i].IsZero() {
			f.hellos[p][i] = time.Now()
			if p == 1 {
				f.lastFail[i] = fail
			}
			f.cond.Broadcast()
		}
		f.mu.Unlock()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		readUntilClosed(rd, conn)
		stop()
		conn.Close()
	}
}

// stormFail is a failed attempt: what failed, and when.
type stormFail struct {
	kind string
	at   time.Time
}

// failKind names a failed attempt for the tail summary.
func failKind(err error, retryAfter time.Duration) string {
	var ne net.Error
	switch {
	case retryAfter > 0:
		return fmt.Sprintf("503 Retry-After %.0fs", retryAfter.Seconds())
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection reset or closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.HasPrefix(err.Error(), "read hello"):
		return "read hello"
	default:
		return "other: " + err.Error()
	}
}

// tail summarises the last share of the fleet to get hello after t0: how
// many, from when, and what each one's last failed attempt was, with the
// median time from that failure to the hello.
func (f *stormFleet) tail(t0 time.Time, share float64) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := slices.Collect(maps.Keys(f.hellos[1]))
	slices.SortFunc(ids, func(a, b int) int { return f.hellos[1][a].Compare(f.hellos[1][b]) })
	ids = ids[len(ids)-max(1, int(float64(len(ids))*share)):]
	kinds := map[string]int{}
	var gaps []time.Duration
	for _, i := range ids {
		lf := f.lastFail[i]
		if lf.at.IsZero() {
			kinds["no failure"]++
			continue
		}
		kinds[lf.kind]++
		gaps = append(gaps, f.hellos[1][i].Sub(lf.at))
	}
	out := fmt.Sprintf("%d devices, hello %.2f-%.2f s after SIGKILL; last failure before it:", len(ids),
		f.hellos[1][ids[0]].Sub(t0).Seconds(), f.hellos[1][ids[len(ids)-1]].Sub(t0).Seconds())
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		out += fmt.Sprintf(" %s %d;", k, kinds[k])
	}
	if len(gaps) > 0 {
		slices.Sort(gaps)
		out += fmt.Sprintf(" median %.2f s from it to hello", gaps[len(gaps)/2].Seconds())
	}
	return out
}

// waitPhase waits until every device has had a hello in phase.
func (f *stormFleet) waitPhase(phase int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	defer t.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.hellos[phase]) < f.n && time.Now().Before(deadline) {
		f.cond.Wait()
	}
	return len(f.hellos[phase]) >= f.n
}

func (f *stormFleet) count(phase int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.hellos[phase])
}

func (f *stormFleet) firstHello(phase int) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.MinFunc(slices.Collect(maps.Values(f.hellos[phase])), time.Time.Compare)
}

// perSecond counts phase's hellos by whole second since t0.
func (f *stormFleet) perSecond(phase int, t0 time.Time) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for _, t := range f.hellos[phase] {
		s := int(t.Sub(t0) / time.Second)
		for len(out) <= s {
			out = append(out, 0)
		}
		out[s]++
	}
	return out
}

// stormSources is how many loopback source addresses the fleet connects
// from. A real fleet arrives from many addresses; from 127.0.0.1 alone,
// 19,000 connections plus the TIME_WAIT of every refused handshake fill
// most of the 28,232 ephemeral ports, and the kernel's search for a free
// one (__inet_hash_connect, __inet_check_established) took a third of
// this 2-core machine during a storm: a cost of the test rig, not of the
// server.
const stormSources = 64

// stormSource is device i's dialer: from 127.0.0.(2+i%stormSources), its
// port chosen at connect (IP_BIND_ADDRESS_NO_PORT), where the kernel needs
// the 4-tuple, not the address and port alone, to be free.
func stormSource(i int) *net.Dialer {
	return &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%stormSources))},
		KeepAlive: -1, // firmware's heartbeat is the protocol's ping; and 4 syscalls fewer
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return cmp.Or(err, serr)
		},
	}
}

// dialHello connects one device from nd and reads its hello. A 503 returns
// the server's Retry-After (at least 1 s when the header is missing).
func dialHello(ctx context.Context, url, token string, nd *net.Dialer) (net.Conn, io.Reader, time.Duration, error) {
	var retryAfter time.Duration
	d := ws.Dialer{
		NetDial:   nd.DialContext,
		Protocols: []string{wire.Subprotocol},
		Header:    ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}}),
		Timeout:   15 * time.Second,
		OnStatusError: func(status int, _ []byte, resp io.Reader) {
			if status != http.StatusServiceUnavailable {
				return
			}
			retryAfter = time.Second
			if r, err := http.ReadResponse(bufio.NewReader(resp), nil); err == nil {
				if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil && s > 0 {
					retryAfter = time.Duration(s) * time.Second
				}
			}
		},
	}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, nil, retryAfter, err
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
		return nil, nil, 0, fmt.Errorf("read hello: %w", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, rd, 0, nil
}

// scrapeMetrics reads /metrics into name{labels} → value.
func scrapeMetrics(ctx context.Context, base, key string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				out[line[:i]] = v
			}
		}
	}
	return out, sc.Err()
}

// countSessions counts device_sessions rows: on SQLite through /v1/query,
// on PostgreSQL (pgURL set) straight from the test database, because
// /v1/query refuses to run as the service's (superuser) role.
func countSessions(tb testing.TB, base, key, pgURL string) int64 {
	tb.Helper()
	if pgURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pgURL)
		if err != nil {
			tb.Fatalf("count sessions: %v", err)
		}
		defer c.Close(ctx)
		var n int64
		if err := c.QueryRow(ctx, "SELECT count(*) FROM device_sessions").Scan(&n); err != nil {
			tb.Fatalf("count sessions: %v", err)
		}
		return n
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/query?format=csv&sql="+url.QueryEscape("SELECT count(*) AS n FROM device_sessions"), nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	lines := strings.Fields(strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK || len(lines) < 2 {
		tb.Fatalf("count sessions: %d %s", resp.StatusCode, body)
	}
	v, err := strconv.ParseFloat(lines[len(lines)-1], 64)
	if err != nil || math.IsNaN(v) {
		tb.Fatalf("count sessions: %q", body)
	}
	return int64(v)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
