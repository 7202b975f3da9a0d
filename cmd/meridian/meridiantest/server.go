package meridiantest

import (
	"encoding/json"
	"errors"
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
	"syscall"
	"testing"
	"time"
)

// Options say how to run `meridian serve`. The zero value is the embedded
// store in a fresh data dir on a free loopback port, with a generated admin
// key.
type Options struct {
	// Bin is the binary to run; "" is Bin(tb).
	Bin string
	// Listen is server.listen. "" picks a free loopback port once, so a
	// restarted server keeps its address. A port of 0 lets the server pick
	// one at every start; the address is then read from its log (which
	// needs server.log_level info or lower).
	Listen string
	// DataDir is server.data_dir; "" is a fresh temp dir.
	DataDir string
	// AdminKey is devices.admin_key; "" lets the first start generate a key,
	// which serve prints once on stdout and the Server reads from there.
	AdminKey string
	// Env holds further settings as MERIDIAN_* variables (or anything else
	// the child needs, e.g. GOGC). They come after the ones above and win
	// over them; server.listen, server.data_dir and devices.admin_key set
	// here count as the fields above. A setting of
	// MERIDIAN_SERVER_TLS_CERT_FILE makes URL https.
	Env []string
	// ReadyTimeout bounds each start's wait for readiness; 0 is 60 s.
	ReadyTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before it kills the
	// process; 0 is 20 s (above serve's default shutdown grace).
	StopTimeout time.Duration
	// Respawn runs serve under a supervisor process, a shell loop that
	// starts it again the moment it exits (as systemd's Restart= does,
	// without RestartSec). Crash then kills serve alone and the supervisor
	// restarts it; Stop and Kill end both. A restart benchmark needs this:
	// the test process, busy with thousands of device goroutines woken by
	// the kill, reaped the old process and executed the new one 1-3 s late,
	// which no supervisor would.
	Respawn bool
}

// Server is one `meridian serve` child process, started again (Start) on
// the same address, data dir and settings after Stop or Kill. Its output,
// every start's, is kept; the tail is logged when the test fails.
type Server struct {
	opts   Options
	bin    string
	addr   string // host:port, known once listening
	scheme string
	key    string
	logs   *Buffer
	hc     *http.Client

	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has been reaped
	err  error         // cmd.Wait's result, set before done closes
}

// NewServer prepares a server without starting it; StartServer does both.
// At cleanup the process is stopped if it still runs.
func NewServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	// The same settings given as variables in Env count as given.
	for _, o := range []struct {
		field *string
		name  string
	}{
		{&opts.Listen, "MERIDIAN_SERVER_LISTEN"},
		{&opts.DataDir, "MERIDIAN_SERVER_DATA_DIR"},
		{&opts.AdminKey, "MERIDIAN_DEVICES_ADMIN_KEY"},
	} {
		if v, ok := lookup(opts.Env, o.name); ok && *o.field == "" {
			*o.field = v
		}
	}
	s := &Server{opts: opts, bin: opts.Bin, addr: opts.Listen, scheme: "http://", key: opts.AdminKey, logs: &Buffer{}}
	if s.bin == "" {
		s.bin = Bin(tb)
	}
	if s.addr == "" {
		s.addr = FreeAddr(tb)
	}
	if s.opts.DataDir == "" {
		s.opts.DataDir = filepath.Join(tb.TempDir(), "data")
	}
	if s.opts.ReadyTimeout == 0 {
		s.opts.ReadyTimeout = 60 * time.Second
	}
	if s.opts.StopTimeout == 0 {
		s.opts.StopTimeout = 20 * time.Second
	}
	if v, _ := lookup(opts.Env, "MERIDIAN_SERVER_TLS_CERT_FILE"); v != "" {
		s.scheme = "https://"
	}
	// Its own transport, so no idle keep-alive connection outlives the test
	// (goleak) and TLS roots are read from SSL_CERT_FILE as set by then.
	s.hc = &http.Client{Timeout: 10 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	tb.Cleanup(func() {
		_ = s.Stop()
		s.hc.CloseIdleConnections()
		if tb.Failed() {
			tb.Logf("meridian serve output (tail):\n%s", s.LogTail(100))
		}
	})
	return s
}

// lookup finds the last setting of name in env, as exec does.
func lookup(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// StartServer starts `meridian serve` and returns once it is ready.
func StartServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s := NewServer(tb, opts)
	s.Start(tb)
	return s
}

// Start runs the process and waits until it is ready (WaitReady).
func (s *Server) Start(tb testing.TB) {
	tb.Helper()
	s.Launch(tb)
	s.WaitReady(tb)
}

// Launch runs the process without waiting for anything but, when the
// server picks its port, the address in its log. A benchmark that times
// the way to readiness polls on its own.
func (s *Server) Launch(tb testing.TB) {
	tb.Helper()
	if s.running() {
		tb.Fatal("meridian serve is already running")
	}
	_, port, _ := net.SplitHostPort(s.opts.Listen)
	listen := s.addr
	if port == "0" {
		listen = s.opts.Listen // a port of the server's choosing, each start
	}
	env := []string{
		"MERIDIAN_SERVER_LISTEN=" + listen,
		"MERIDIAN_SERVER_DATA_DIR=" + s.opts.DataDir,
		// The default 127.0.0.1:1884 can be bound only once on a machine
		// running tests in parallel.
		"MERIDIAN_MQTT_EMBEDDED_LISTEN=127.0.0.1:0",
	}
	if s.opts.AdminKey != "" {
		env = append(env, "MERIDIAN_DEVICES_ADMIN_KEY="+s.opts.AdminKey)
	}
	cmd := exec.Command(s.bin, "serve")
	if s.opts.Respawn {
		cmd = exec.Command("/bin/sh", "-c", respawnScript, "meridian-supervisor", s.bin, "serve")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	cmd.Env = CleanEnv(append(env, s.opts.Env...)...)
	cmd.Dir = filepath.Dir(s.opts.DataDir) // relative paths stay in the test's dir
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start meridian serve: %v", err)
	}
	done := make(chan struct{})
	s.cmd, s.done, s.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		s.err = err
		close(done)
	}()
	if port == "0" {
		m := s.waitLog(tb, listenLine, "the listen address")
		s.addr = m[1]
	}
}

// respawnScript is the supervisor of Options.Respawn: it restarts "$@"
// whenever it exits, except with status 2 (serve's "bad configuration",
// which a restart cannot fix); SIGTERM is passed on and ends the loop.
const respawnScript = `trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit $?' TERM
while :; do
	"$@" & pid=$!
	wait "$pid"
	st=$?
	[ "$st" -eq 2 ] && exit 2
done`

// CleanEnv is the environment for a child meridian: this process's
// environment without any MERIDIAN_* variable (a developer's settings must
// not leak into a test), plus extra.
func CleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MERIDIAN_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

var (
	listenLine = regexp.MustCompile(`meridian serving.* listen=(127\.0\.0\.1:\d+)`)
	// serve prints a generated admin key alone on an indented line.
	keyLine = regexp.MustCompile(`(?m)^\s+(mak_\S+)$`)
)

// waitLog waits for re in the output; it fails when the process exits or
// ReadyTimeout passes first.
func (s *Server) waitLog(tb testing.TB, re *regexp.Regexp, what string) []string {
	tb.Helper()
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	for {
		if m := re.FindStringSubmatch(s.logs.String()); m != nil {
			return m
		}
		select {
		case <-s.done:
			tb.Fatalf("meridian serve exited (%v) before printing %s:\n%s", s.err, what, s.LogTail(40))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("meridian serve printed no %s within %v:\n%s", what, s.opts.ReadyTimeout, s.LogTail(40))
		}
	}
}

// WaitReady waits, up to ReadyTimeout, until /readyz answers 200 (the
// store is reachable and the admin key registered), the admin key is known
// and it authenticates. It fails at once when the process exits.
func (s *Server) WaitReady(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	var last error
	for {
		last = s.check("/readyz", "")
		if last == nil && s.key == "" {
			if m := keyLine.FindStringSubmatch(s.logs.String()); m != nil {
				s.key = m[1]
			} else {
				last = errors.New("no admin key printed (a data dir from an earlier run needs Options.AdminKey)")
			}
		}
		if last == nil {
			if last = s.check("/v1/admin/devices", s.key); last == nil {
				return
			}
		}
		select {
		case <-s.done:
			tb.Fatalf("meridian serve exited (%v) before it was ready:\n%s", s.err, s.LogTail(40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("meridian serve not ready on %s within %v (%v):\n%s", s.addr, s.opts.ReadyTimeout, last, s.LogTail(40))
		}
	}
}

// check GETs path and wants 200.
func (s *Server) check(path, key string) error {
	req, err := http.NewRequest(http.MethodGet, s.URL()+path, nil)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return nil
}

func (s *Server) running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop asks for a graceful stop (SIGTERM) and kills the process after
// StopTimeout. It returns the exit error: nil when serve exited with status
// 0, also when it had stopped before.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	if s.running() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(s.opts.StopTimeout):
			s.Kill()
			return fmt.Errorf("meridian serve still running %v after SIGTERM: killed", s.opts.StopTimeout)
		}
	}
	s.hc.CloseIdleConnections()
	return s.err
}

// Kill stops the process with SIGKILL: no chance to drain or ack.
func (s *Server) Kill() {
	if !s.running() {
		return
	}
	if s.opts.Respawn {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // the whole process group
	} else {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
	s.hc.CloseIdleConnections()
}

// Crash kills serve with SIGKILL and returns at once; the supervisor
// (Options.Respawn, which Crash needs) starts it again as soon as the
// kernel has reaped it. It returns the killed process's PID.
func (s *Server) Crash(tb testing.TB) int {
	tb.Helper()
	if !s.opts.Respawn {
		tb.Fatal("meridiantest: Crash needs Options.Respawn")
	}
	pid := s.PID()
	if pid == 0 {
		tb.Fatal("meridiantest: no meridian serve running under the supervisor")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tb.Fatalf("kill meridian serve: %v", err)
	}
	return pid
}

// Signal sends sig to the running process.
func (s *Server) Signal(sig os.Signal) error {
	if s.cmd == nil {
		return errors.New("meridian serve not started")
	}
	if ss, ok := sig.(syscall.Signal); ok && s.opts.Respawn {
		if pid := s.PID(); pid != 0 {
			return syscall.Kill(pid, ss)
		}
	}
	return s.cmd.Process.Signal(sig)
}

// Wait waits up to d for the process to exit and returns its exit error
// (nil for status 0), or an error saying it still runs.
func (s *Server) Wait(d time.Duration) error {
	select {
	case <-s.done:
		return s.err
	default:
	}
	select {
	case <-s.done:
		return s.err
	case <-time.After(d):
		return fmt.Errorf("meridian serve still running after %v", d)
	}
}

// Done is closed when the current process has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// URL is the server's base URL, http://127.0.0.1:port (https with TLS).
func (s *Server) URL() string { return s.scheme + s.addr }

// Addr is the listen address, 127.0.0.1:port.
func (s *Server) Addr() string { return s.addr }

// Port is the listen port.
func (s *Server) Port() string { _, p, _ := net.SplitHostPort(s.addr); return p }

// AdminKey is the configured or generated admin API key ("" before the
// first start has printed it).
func (s *Server) AdminKey() string { return s.key }

// DataDir is server.data_dir: the SQLite store unless MERIDIAN_STORAGE_URL
// names PostgreSQL.
func (s *Server) DataDir() string { return s.opts.DataDir }

// Bin is the binary the server runs, e.g. for `meridian query` on its data.
func (s *Server) Bin() string { return s.bin }

// PID is the running (or last) process's id.
// Under a supervisor (Options.Respawn) it is serve's, the supervisor's
// child (from Linux's /proc), 0 between a crash and the restart.
func (s *Server) PID() int {
	if !s.opts.Respawn {
		return s.cmd.Process.Pid
	}
	sup := s.cmd.Process.Pid
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", sup, sup))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			return pid
		}
	}
	return 0
}

// Logs is everything the server has written, over all its starts.
func (s *Server) Logs() string { return s.logs.String() }

// LogTail is the last n lines of Logs.
func (s *Server) LogTail(n int) string { return Tail(s.logs.String(), n) }

// AddDevice registers a device through the admin API and returns its token.
func (s *Server) AddDevice(tb testing.TB, id string) string {
	tb.Helper()
	return AddDevice(tb, s.URL(), s.key, id)
}

// AddDevice registers device id at the server at base through its admin API
// with adminKey and returns the device's token. It retries for up to 30 s:
// a server started in-process may register a printed admin key a moment
// after it is printed.
func AddDevice(tb testing.TB, base, adminKey, id string) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]string{"id": id})
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/admin/devices", strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var added struct {
				Token string `json:"token"`
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated && json.Unmarshal(b, &added) == nil && added.Token != "" {
				return added.Token
			}
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("add device %s: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
