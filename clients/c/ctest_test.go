// Package ctest drives the C device library (clients/c) from `go test`: its
// unit tests plain and under AddressSanitizer/UBSan, and its Linux example
// against a real `meridian serve` built from ./cmd/meridian, with the
// connection cut and the server killed mid-stream. The store must then hold
// every reading the example saw acked exactly once.
//
// It needs a C compiler and make: without them it skips, except under
// CI=true, where it fails.
package ctest

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
)

const sanitize = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"make", cc()} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: the C client tests need it in CI", tool)
			}
			t.Skipf("%s not found: skipping the C client tests", tool)
		}
	}
}

func cc() string {
	if c := os.Getenv("CC"); c != "" {
		return c
	}
	return "cc"
}

func runMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory"}, args...)...)
	cmd.Env = append(os.Environ(), "CC="+cc())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCUnit builds the library under -Wall -Wextra -Werror and runs its
// unit tests, plain and with AddressSanitizer + UBSan.
func TestCUnit(t *testing.T) {
	needTools(t)
	out := runMake(t, "-j2", "OUT="+t.TempDir(), "check")
	for _, want := range []string{"test_mp: ok", "test_client: ok"} {
		if strings.Count(out, want) != 2 {
			t.Errorf("make check output lacks two %q:\n%s", want, out)
		}
	}
}

// TestStreamCutAndRestart: the example streams 4000 readings over the
// WebSocket through a proxy and answers a command sent through the admin
// API; the proxy cuts every connection, later the
// server is killed with SIGKILL and restarted on the same data. The example
// must finish with nothing pending, and the store must hold every reading
// exactly once.
func TestStreamCutAndRestart(t *testing.T) {
	_, example, srv, token := startEndToEnd(t, "c-ws")
	proxy := meridiantest.NewProxy(t, srv.Addr())

	const count = 4000
	ex := startExample(t, example, token, "--host", "127.0.0.1", "--port", proxy.Port(),
		"--count", strconv.Itoa(count), "--rate", "400", "--backoff", "100", "--drain", "90")

	ex.waitAcked(t, 600)
	sendCommand(t, srv, "c-ws")
	if n := proxy.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	ex.waitAcked(t, 1600)
	srv.Kill()
	srv.Start(t)
	code := ex.wait(t, 120*time.Second)
	out := ex.out.String()
	if code != 0 || !strings.Contains(out, fmt.Sprintf("done produced=%d pending=0", count)) {
		t.Fatalf("example exit %d\nstdout tail:\n%s\nstderr:\n%s\nserver:\n%s", code, tail(out, 30), ex.errOut.String(), srv.LogTail(40))
	}
	if !strings.Contains(out, "command id=c-17 name=reboot") {
		t.Error("the example did not log the command")
	}
	if strings.Count(out, "closed code=1006") < 2 {
		t.Errorf("expected the cut and the kill to show as lost connections (1006):\n%s", grepLines(out, "closed "))
	}
	_ = srv.Stop()

	acked := ackedValues(out)
	stored := storedCounts(t, srv, "c-ws")
	checkExactlyOnce(t, acked, stored, 1, count+1)
	if len(acked) != count {
		t.Errorf("acked %d distinct readings, want all %d", len(acked), count)
	}
}

// TestHTTPFallbackReboot: the example posts over the HTTP fallback with the
// ring persisted in files. Run 1 streams and exits cleanly; run 2 cannot
// reach the server (a port nobody listens on), so its batches pile up in
// the ring, and it "loses power" after 300 readings; run 3, on the same
// state, must send what run 2 left behind, under seqs above run 1's.
func TestHTTPFallbackReboot(t *testing.T) {
	dir, example, srv, token := startEndToEnd(t, "c-http")
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	_, nobody, _ := net.SplitHostPort(meridiantest.FreeAddr(t))
	common := []string{"--host", "127.0.0.1", "--http", "--state", state, "--batch", "20", "--rate", "500", "--backoff", "100"}
	run := func(name string, want int, args ...string) string {
		t.Helper()
		p := startExample(t, example, token, append(append([]string{}, common...), args...)...)
		if code := p.wait(t, 60*time.Second); code != want {
			t.Fatalf("%s: exit %d, want %d\n%s\n%s", name, code, want, tail(p.out.String(), 20), p.errOut.String())
		}
		return p.out.String()
	}
	out1 := run("run 1", 0, "--port", srv.Port(), "--count", "200", "--start", "1")
	out2 := run("run 2 (offline, power cut)", 3, "--port", nobody, "--count", "400", "--start", "1000", "--exit-after", "300")
	out3 := run("run 3 (after the reboot)", 0, "--port", srv.Port(), "--count", "200", "--start", "100000")
	_ = srv.Stop()

	if !strings.Contains(out3, "restored pending=") {
		t.Errorf("run 3 restored nothing from the ring:\n%s", tail(out3, 5))
	}
	if strings.Contains(out2, "\nacked ") {
		t.Errorf("run 2 had no server, yet saw acks:\n%s", tail(out2, 5))
	}
	acked := ackedValues(out1 + out3)
	stored := storedCounts(t, srv, "c-http")
	checkExactlyOnce(t, acked, stored, 1, 100200)
	restored := 0
	for v := int64(1000); v < 1300; v++ {
		if acked[v] {
			restored++
		}
	}
	if restored == 0 {
		t.Error("none of run 2's readings was acked after the reboot")
	}
	for _, r := range [][2]int64{{1, 201}, {100000, 100200}} {
		for v := r[0]; v < r[1]; v++ {
			if !acked[v] {
				t.Errorf("reading %d not acked", v)
				break
			}
		}
	}
	t.Logf("%d of run 2's 300 readings were sealed in the ring at the power cut and acked after the reboot", restored)
}

// startEndToEnd builds the example and starts a server with device
// registered on it.
func startEndToEnd(t *testing.T, device string) (dir, example string, srv *meridiantest.Server, token string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	needTools(t)
	dir = t.TempDir()
	example = buildExample(t, dir)
	srv = startServer(t, dir)
	return dir, example, srv, srv.AddDevice(t, device)
}

// checkExactlyOnce: every acked value is stored once, nothing is stored
// twice, and nothing is stored that was never produced.
func checkExactlyOnce(t *testing.T, acked map[int64]bool, stored map[int64]int, lo, hi int64) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatal("no reading was acked")
	}
	bad := 0
	for v := range acked {
		if stored[v] != 1 && bad < 10 {
			t.Errorf("acked reading %d stored %d times", v, stored[v])
			bad++
		}
	}
	for v, n := range stored {
		if (n != 1 || v < lo || v >= hi) && bad < 10 {
			t.Errorf("stored reading %d: %d times (produced range [%d, %d))", v, n, lo, hi)
			bad++
		}
	}
}

var ackedLine = regexp.MustCompile(`(?m)^acked (-?\d+)$`)

func ackedValues(out string) map[int64]bool {
	m := map[int64]bool{}
	for _, s := range ackedLine.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseInt(s[1], 10, 64)
		m[v] = true
	}
	return m
}

// storedCounts runs `meridian query` on the stopped server's data dir.
func storedCounts(t *testing.T, s *meridiantest.Server, device string) map[int64]int {
	t.Helper()
	cmd := exec.Command(s.Bin(), "query", "--data-dir", s.DataDir(), "--format", "csv", "--max-rows", "1000000",
		fmt.Sprintf("SELECT CAST(value AS INTEGER) AS v, count(*) AS n FROM telemetry WHERE device = '%s' GROUP BY value", device))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("meridian query: %v\n%s", err, out)
	}
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("query output: %v\n%s", err, out)
	}
	m := map[int64]int{}
	for _, r := range rows[1:] {
		v, err1 := strconv.ParseInt(r[0], 10, 64)
		n, err2 := strconv.Atoi(r[1])
		if err1 != nil || err2 != nil {
			t.Fatalf("query row %q", r)
		}
		m[v] += n
	}
	return m
}

// ---- the C example ----------------------------------------------------------

func buildExample(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "c")
	runMake(t, "OUT="+out, "EXTRA="+sanitize, out+"/meridian-stream")
	return filepath.Join(out, "meridian-stream")
}

type exampleProc struct {
	cmd         *exec.Cmd
	out, errOut *meridiantest.Buffer
	done        chan struct{}
}

func startExample(t *testing.T, bin, token string, args ...string) *exampleProc {
	t.Helper()
	p := &exampleProc{out: &meridiantest.Buffer{}, errOut: &meridiantest.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), "MERIDIAN_TOKEN="+token)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *exampleProc) waitAcked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(p.out.String(), "\nacked ") >= n {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("example exited early:\n%s\n%s", tail(p.out.String(), 20), p.errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("fewer than %d readings acked after 60s:\n%s", n, tail(p.out.String(), 20))
}

func (p *exampleProc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("example did not finish in %s:\n%s", limit, tail(p.out.String(), 20))
	}
	if s := p.errOut.String(); strings.Contains(s, "runtime error") || strings.Contains(s, "Sanitizer") {
		t.Errorf("sanitizer report:\n%s", s)
	}
	return p.cmd.ProcessState.ExitCode()
}

// ---- the server ---------------------------------------------------------

// startServer runs `meridian serve` on the embedded store in dir/data; the
// admin key is the one its first start generates and prints.
func startServer(t *testing.T, dir string) *meridiantest.Server {
	t.Helper()
	return meridiantest.StartServer(t, meridiantest.Options{
		DataDir: filepath.Join(dir, "data"),
		Env:     []string{"MERIDIAN_SERVER_LOG_LEVEL=warn"},
	})
}

// sendCommand goes through the admin API to the connected example, which
// answers ok with a nil payload.
func sendCommand(t *testing.T, s *meridiantest.Server, device string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/admin/devices/"+device+"/commands",
		strings.NewReader(`{"id":"c-17","name":"reboot","payload":{"delay_s":5}}`))
	req.Header.Set("Authorization", "Bearer "+s.AdminKey())
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var res struct {
		ID string `json:"id"`
		OK bool   `json:"ok"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &res) != nil || res.ID != "c-17" || !res.OK {
		t.Errorf("command: status %d, body %s", resp.StatusCode, body)
	}
}

// ---- small helpers --------------------------------------------------------

func tail(s string, n int) string { return meridiantest.Tail(s, n) }

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
