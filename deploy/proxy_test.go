package deploy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// The session is held past nginx's default proxy_read_timeout (60s). The
// server's heartbeat is raised above that default for this test, so the
// tunnel is entirely silent for longer than 60s: only the shipped timeouts
// (120s) keep it open. A control nginx running the same file without its
// timeout lines must cut the same kind of session, which shows the test
// can tell the difference.
const (
	nginxDefaultTimeout = 60 * time.Second
	testHeartbeat       = 65 * time.Second
	holdFor             = 75 * time.Second
)

// testCert is a self-signed certificate for 127.0.0.1, in the file forms the
// proxies want.
type testCert struct {
	cert, key, combined string
	pool                *x509.CertPool
}

func newTestCert(t *testing.T, dir string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "meridian deploy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	c := testCert{
		cert:     filepath.Join(dir, "cert.pem"),
		key:      filepath.Join(dir, "key.pem"),
		combined: filepath.Join(dir, "combined.pem"),
		pool:     x509.NewCertPool(),
	}
	for path, data := range map[string][]byte{c.cert: certPEM, c.key: keyPEM, c.combined: append(certPEM, keyPEM...)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.pool.AppendCertsFromPEM(certPEM)
	return c
}

// startServer runs `meridian serve` (the release-flagged build) on the
// embedded store, with extraEnv settings.
func startServer(t *testing.T, extraEnv ...string) *meridiantest.Server {
	t.Helper()
	env := []string{
		"MERIDIAN_SERVER_LOG_LEVEL=debug",
		// The proxies run on loopback: believe their X-Forwarded-For.
		"MERIDIAN_SERVER_TRUSTED_PROXIES=127.0.0.1",
	}
	// No embedded MQTT broker (where the binary has one): the test does not
	// need it.
	if keys, _ := knownKeys(t); keys["mqtt.embedded.enabled"] {
		env = append(env, envName("mqtt.embedded.enabled")+"=false")
	}
	return meridiantest.StartServer(t, meridiantest.Options{
		Bin:      meridianBinary(t),
		AdminKey: meridiantest.RandomKey(t),
		Env:      append(env, extraEnv...),
	})
}

// proxy is a reverse proxy under test, serving TLS on httpsAddr.
type proxy struct {
	name      string
	httpsAddr string
	httpAddr  string
	pool      *x509.CertPool
	accessLog string // nginx only
	// recorded is the client address the server should record for a device
	// that sent "X-Forwarded-For: 198.51.100.9" through this proxy: the
	// forwarded one where the proxy passes the client's list on, the proxy
	// peer's where it replaces it (Caddy, which trusts no client list by
	// default).
	recorded string
}

func (p proxy) client() *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// replaceOnce substitutes an exact line fragment of a shipped config and
// fails when it is not there exactly once: if the shipped file changes shape,
// the test must be updated rather than quietly test something else.
func replaceOnce(t *testing.T, file, text, old, new string) string {
	t.Helper()
	if n := strings.Count(text, old); n != 1 {
		t.Fatalf("%s: expected %q exactly once, found %d times; update proxy_test.go with the file", file, old, n)
	}
	return strings.Replace(text, old, new, 1)
}

// startNginx runs deploy/proxy/nginx.conf, with only the upstream address,
// listen addresses and certificate paths replaced, as a foreground nginx in
// a temp prefix. edit, if set, changes the site config further.
func startNginx(t *testing.T, nginx, upstream string, edit func(string) string) proxy {
	t.Helper()
	const rel = "deploy/proxy/nginx.conf"
	dir := t.TempDir()
	certs := newTestCert(t, dir)
	p := proxy{
		name:      "nginx",
		httpsAddr: meridiantest.FreeAddr(t),
		httpAddr:  meridiantest.FreeAddr(t),
		pool:      certs.pool,
		recorded:  "198.51.100.9",
	}
	site := readFile(t, rel)
	site = replaceOnce(t, rel, site, "server 127.0.0.1:8470;", "server "+upstream+";")
	site = replaceOnce(t, rel, site, "listen 80;", "listen "+p.httpAddr+";")
	site = replaceOnce(t, rel, site, "listen 443 ssl;", "listen "+p.httpsAddr+" ssl;")
	site = replaceOnce(t, rel, site, "/etc/ssl/meridian/fullchain.pem", certs.cert)
	site = replaceOnce(t, rel, site, "/etc/ssl/meridian/privkey.pem", certs.key)
	p.accessLog = filepath.Join(dir, "meridian.access.log")
	site = replaceOnce(t, rel, site, "/var/log/nginx/meridian.access.log", p.accessLog)
	if edit != nil {
		site = edit(site)
	}
	for _, sub := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, "tmp", sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The main config a distribution's /etc/nginx/nginx.conf would provide,
	// reduced to one foreground process writing only under dir.
	main := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 256; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    include %[1]s/meridian.conf;
}
`, dir)
	files := map[string]string{"nginx.conf": main, "meridian.conf": site}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(nginx, "-p", dir+"/", "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	out := &meridiantest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	startProcess(t, "nginx", cmd, out, filepath.Join(dir, "error.log"))
	waitProxy(t, p)
	return p
}

// startHAProxy runs deploy/proxy/haproxy.cfg with only the bind addresses,
// certificate path and server address replaced.
func startHAProxy(t *testing.T, haproxy, upstream string) proxy {
	t.Helper()
	const rel = "deploy/proxy/haproxy.cfg"
	dir := t.TempDir()
	certs := newTestCert(t, dir)
	p := proxy{
		name:      "haproxy",
		httpsAddr: meridiantest.FreeAddr(t),
		httpAddr:  meridiantest.FreeAddr(t),
		pool:      certs.pool,
		recorded:  "198.51.100.9",
	}
	cfg := readFile(t, rel)
	cfg = replaceOnce(t, rel, cfg, "bind :80\n", "bind "+p.httpAddr+"\n")
	cfg = replaceOnce(t, rel, cfg, "bind :443 ssl crt /etc/haproxy/certs/meridian.pem", "bind "+p.httpsAddr+" ssl crt "+certs.combined)
	cfg = replaceOnce(t, rel, cfg, "server meridian1 127.0.0.1:8470", "server meridian1 "+upstream)
	// A test process need not reserve descriptors for 200,000 connections.
	cfg = replaceOnce(t, rel, cfg, "maxconn 200000", "maxconn 1000")
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(haproxy, "-db", "-f", path)
	out := &meridiantest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	startProcess(t, "haproxy", cmd, out, "")
	waitProxy(t, p)
	return p
}

// startCaddy runs deploy/proxy/Caddyfile with the site address, upstream
// and certificate replaced (the shipped file gets its certificate from an
// ACME CA, which a test cannot reach) and a global block that keeps Caddy's
// admin endpoint and state out of the way.
func startCaddy(t *testing.T, caddy, upstream string) proxy {
	t.Helper()
	const rel = "deploy/proxy/Caddyfile"
	dir := t.TempDir()
	certs := newTestCert(t, dir)
	p := proxy{
		name:      "caddy",
		httpsAddr: meridiantest.FreeAddr(t),
		httpAddr:  meridiantest.FreeAddr(t),
		pool:      certs.pool,
		recorded:  "127.0.0.1",
	}
	_, httpPort, _ := net.SplitHostPort(p.httpAddr)
	_, httpsPort, _ := net.SplitHostPort(p.httpsAddr)
	cfg := readFile(t, rel)
	cfg = replaceOnce(t, rel, cfg, "meridian.example.com {\n",
		"https://"+p.httpsAddr+" {\n\ttls "+certs.cert+" "+certs.key+"\n")
	cfg = replaceOnce(t, rel, cfg, "reverse_proxy 127.0.0.1:8470 {", "reverse_proxy "+upstream+" {")
	cfg = fmt.Sprintf("{\n\tadmin off\n\thttp_port %s\n\thttps_port %s\n\tauto_https disable_redirects\n\tskip_install_trust\n\tstorage file_system %s\n}\n\n",
		httpPort, httpsPort, filepath.Join(dir, "data")) + cfg
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddy, "run", "--adapter", "caddyfile", "--config", path)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	out := &meridiantest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	startProcess(t, "caddy", cmd, out, "")
	waitProxy(t, p)
	return p
}

// startProcess starts a proxy and stops it at cleanup (SIGTERM, then KILL).
func startProcess(t *testing.T, name string, cmd *exec.Cmd, out *meridiantest.Buffer, errorLog string) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			logs := out.String()
			if errorLog != "" {
				b, _ := os.ReadFile(errorLog)
				logs += string(b)
			}
			t.Logf("%s output:\n%s", name, logs)
		}
	})
	// An immediate exit is a config error: report it with the output.
	select {
	case err := <-done:
		done <- err
		b, _ := os.ReadFile(errorLog)
		t.Fatalf("%s exited at start: %v\n%s%s", name, err, out.String(), b)
	case <-time.After(300 * time.Millisecond):
	}
}

// waitProxy waits until the proxy passes /healthz through to the server.
func waitProxy(t *testing.T, p proxy) {
	t.Helper()
	c := p.client()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.Get("https://" + p.httpsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /healthz through the proxy: %v", p.name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// addDevice registers a device through the proxy's admin API and returns its
// token.
func addDevice(t *testing.T, p proxy, s *meridiantest.Server, id string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "https://"+p.httpsAddr+"/v1/admin/devices",
		strings.NewReader(fmt.Sprintf(`{"id": %q}`, id)))
	req.Header.Set("Authorization", "Bearer "+s.AdminKey())
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client().Do(req)
	if err != nil {
		t.Fatalf("add device %s: %v", id, err)
	}
	defer resp.Body.Close()
	var body struct {
		Token string `json:"token"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusCreated || body.Token == "" {
		t.Fatalf("add device %s: status %d, error %q, decode %v", id, resp.StatusCode, body.Error, err)
	}
	return body.Token
}

// deviceSession fetches the newest session of a device from the admin API.
func deviceSession(t *testing.T, p proxy, s *meridiantest.Server, id string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+p.httpsAddr+"/v1/admin/devices/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+s.AdminKey())
	resp, err := p.client().Do(req)
	if err != nil {
		t.Fatalf("show device %s: %v", id, err)
	}
	defer resp.Body.Close()
	var body struct {
		Sessions []map[string]any `json:"sessions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Sessions) == 0 {
		t.Fatalf("show device %s: status %d, %d sessions, decode %v", id, resp.StatusCode, len(body.Sessions), err)
	}
	return body.Sessions[0]
}

// event is one thing a device connection saw.
type event struct {
	at      time.Duration // since the connection opened
	op      ws.OpCode     // OpBinary, OpPing, OpClose; 0 for a read error
	payload []byte
	err     error
}

// device is a WebSocket device session through a proxy. A reader goroutine
// answers pings (like firmware does) and reports every frame on events.
type device struct {
	conn    net.Conn
	opened  time.Time
	wmu     sync.Mutex // one writer at a time: pongs and batches
	events  chan event
	pings   int
	readErr chan struct{}
}

// dialDevice connects a device with its token in the Authorization header;
// a token prefixed with "?" goes in the query string instead, as firmware
// that cannot set headers sends it.
func dialDevice(t *testing.T, p proxy, token, forwardedFor string) *device {
	t.Helper()
	h := http.Header{}
	query := ""
	if q, ok := strings.CutPrefix(token, "?"); ok {
		query = "?token=" + q
	} else {
		h.Set("Authorization", "Bearer "+token)
	}
	if forwardedFor != "" {
		h.Set("X-Forwarded-For", forwardedFor)
	}
	d := ws.Dialer{
		Header:    ws.HandshakeHeaderHTTP(h),
		TLSConfig: &tls.Config{RootCAs: p.pool},
		Timeout:   10 * time.Second,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := d.Dial(ctx, "wss://"+p.httpsAddr+"/v1/device"+query)
	if err != nil {
		t.Fatalf("%s: dial device WebSocket: %v", p.name, err)
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	dev := &device{conn: conn, opened: time.Now(), events: make(chan event, 64)}
	t.Cleanup(func() { conn.Close() })
	go dev.read(r)
	return dev
}

func (d *device) read(r io.Reader) {
	defer close(d.events)
	var msg []byte
	for {
		h, err := ws.ReadHeader(r)
		if err != nil {
			d.events <- event{at: time.Since(d.opened), err: err}
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r, payload); err != nil {
			d.events <- event{at: time.Since(d.opened), err: err}
			return
		}
		if h.Masked {
			ws.Cipher(payload, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpPing:
			d.write(ws.NewPongFrame(payload))
			d.events <- event{at: time.Since(d.opened), op: ws.OpPing}
		case ws.OpPong:
		case ws.OpClose:
			d.events <- event{at: time.Since(d.opened), op: ws.OpClose, payload: payload}
			return
		default:
			msg = append(msg, payload...)
			if h.Fin {
				d.events <- event{at: time.Since(d.opened), op: ws.OpBinary, payload: msg}
				msg = nil
			}
		}
	}
}

// write sends one client frame (masked, as RFC 6455 requires of clients).
func (d *device) write(f ws.Frame) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_ = d.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteFrame(d.conn, ws.MaskFrameInPlace(f))
}

// next returns the next data frame, counting pings on the way; it fails on a
// close or read error, or after timeout.
func (d *device) next(t *testing.T, name string, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-d.events:
			switch {
			case !ok:
				t.Fatalf("%s: connection already ended", name)
			case ev.op == ws.OpPing:
				d.pings++
			case ev.op == ws.OpBinary:
				return ev.payload
			default:
				t.Fatalf("%s: connection ended after %v: %s", name, ev.at.Round(time.Second), describe(ev))
			}
		case <-deadline:
			t.Fatalf("%s: no frame within %v", name, timeout)
		}
	}
}

func describe(ev event) string {
	switch {
	case ev.op == ws.OpClose:
		code, reason := ws.ParseCloseFrameData(ev.payload)
		return fmt.Sprintf("close %d %q", code, reason)
	case ev.op == ws.OpBinary:
		typ, _ := wire.TypeOf(ev.payload)
		return fmt.Sprintf("a %q frame", typ)
	case ev.err != nil:
		return fmt.Sprintf("read error: %v", ev.err)
	}
	return "the end of the connection"
}

func hello(t *testing.T, name string, b []byte) wire.Hello {
	t.Helper()
	var h wire.Hello
	if _, err := h.UnmarshalMsg(b); err != nil || h.Type != wire.TypeHello {
		t.Fatalf("%s: first frame is not a hello: %+v, %v", name, h, err)
	}
	return h
}

// session is one device connection of the test and what it must show.
type session struct {
	proxy proxy
	id    string
	dev   *device
	hello wire.Hello
	// control: the proxy runs without the shipped timeouts and must cut
	// the silent session; otherwise it must keep it for holdFor.
	control bool
	err     error
}

// open registers the device through the proxy's admin API and connects it,
// as a client at 198.51.100.9 forwarded by the proxy.
func (s *session) open(t *testing.T, srv *meridiantest.Server) {
	t.Helper()
	s.dev = dialDevice(t, s.proxy, addDevice(t, s.proxy, srv, s.id), "198.51.100.9")
	s.hello = hello(t, s.proxy.name, s.dev.next(t, s.proxy.name, 10*time.Second))
	if s.hello.Heartbeat != int(testHeartbeat/time.Second) {
		t.Fatalf("hello heartbeat %ds, want %v: the server did not take MERIDIAN_INGEST_HEARTBEAT", s.hello.Heartbeat, testHeartbeat)
	}
}

// hold waits, answering pings, until holdFor has passed since the session
// opened. It runs on its own goroutine, so it reports instead of failing.
func (s *session) hold() error {
	timer := time.NewTimer(holdFor - time.Since(s.dev.opened))
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-s.dev.events:
			switch {
			case !ok:
				return fmt.Errorf("%s: connection ended during the hold", s.proxy.name)
			case ev.op == ws.OpPing:
				s.dev.pings++
			default:
				return fmt.Errorf("%s: session lost after %v of %v (nginx's default idle timeout is %v): %s",
					s.proxy.name, ev.at.Round(time.Second), holdFor, nginxDefaultTimeout, describe(ev))
			}
		case <-timer.C:
			if s.dev.pings == 0 {
				return fmt.Errorf("%s: held %v without a ping from the server (heartbeat %v)", s.proxy.name, holdFor, testHeartbeat)
			}
			return nil
		}
	}
}

// expectCut waits for a control proxy to close the silent session at its
// default idle timeout, before the server's first ping.
func (s *session) expectCut(t *testing.T) error {
	select {
	case ev, ok := <-s.dev.events:
		switch {
		case !ok:
			return fmt.Errorf("control %s: connection ended without an event", s.proxy.name)
		case ev.op == ws.OpPing:
			return fmt.Errorf("control %s kept a silent session past %v: the test would not notice missing timeouts", s.proxy.name, ev.at.Round(time.Second))
		case ev.at < nginxDefaultTimeout-5*time.Second:
			return fmt.Errorf("control %s: session ended early, after %v: %s", s.proxy.name, ev.at.Round(time.Second), describe(ev))
		}
		t.Logf("control %s: the silent session was cut after %v (%s), as nginx's default timeout predicts", s.proxy.name, ev.at.Round(time.Second), describe(ev))
		return nil
	case <-time.After(holdFor):
		return fmt.Errorf("control %s: session neither cut nor pinged within %v", s.proxy.name, holdFor)
	}
}

// batchAcked sends one batch on the held connection and checks its ack.
func (s *session) batchAcked(t *testing.T, srv *meridiantest.Server) {
	t.Helper()
	name := s.proxy.name
	seq := s.hello.Acked + 1
	batch := wire.Batch{Type: wire.TypeBatch, Seq: seq, Readings: wire.Readings{
		{T: time.Now().UnixMilli(), HasT: true, Metric: "deploy.hold_seconds", Value: holdFor.Seconds()},
	}}
	b, err := batch.MarshalMsg(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dev.write(ws.NewBinaryFrame(b)); err != nil {
		t.Fatalf("%s: send batch after %v: %v", name, time.Since(s.dev.opened).Round(time.Second), err)
	}
	var ack wire.Ack
	if _, err := ack.UnmarshalMsg(s.dev.next(t, name, 10*time.Second)); err != nil || ack.Type != wire.TypeAck {
		t.Fatalf("%s: want an ack, got %+v (%v)", name, ack, err)
	}
	if ack.Seq != seq || ack.Accepted != 1 || ack.Rejected != 0 {
		t.Fatalf("%s: ack %+v, want seq %d with 1 accepted", name, ack, seq)
	}
	t.Logf("%s: session held %v with %d ping(s) answered; batch %d acked on the same connection",
		name, time.Since(s.dev.opened).Round(time.Second), s.dev.pings, seq)

	// The server recorded the client address the proxy forwarded, because
	// the proxy is a trusted proxy.
	if addr, _ := deviceSession(t, s.proxy, srv, s.id)["remote_addr"].(string); !strings.HasPrefix(addr, s.proxy.recorded+":") {
		t.Errorf("%s: session remote_addr %q, want the forwarded client %s", name, addr, s.proxy.recorded)
	}
}

// TestDeviceSessionThroughProxies runs the real meridian binary behind the
// shipped nginx config (and HAProxy config, where installed) and holds a
// device WebSocket through each for longer than nginx's default 60s idle
// timeout, then checks a graceful stop reaches the device through nginx.
func TestDeviceSessionThroughProxies(t *testing.T) {
	if testing.Short() {
		t.Skip("holds device sessions for 75s; skipped with -short")
	}
	nginx := requireTool(t, "MERIDIAN_TEST_NGINX", "nginx", "/usr/sbin/nginx", "nginx")
	srv := startServer(t, "MERIDIAN_INGEST_HEARTBEAT="+testHeartbeat.String())

	shipped := startNginx(t, nginx, srv.Addr(), nil)
	timeoutLine := regexp.MustCompile(`(?m)^\s*proxy_(read|send)_timeout\s+[^;]+;\n`)
	control := startNginx(t, nginx, srv.Addr(), func(site string) string {
		out := timeoutLine.ReplaceAllString(site, "")
		if strings.Count(site, "\n")-strings.Count(out, "\n") != 2 {
			t.Fatal("control nginx: could not remove the two timeout lines")
		}
		return out
	})

	// Plain HTTP is redirected: devices must not send tokens in clear text.
	resp, err := shipped.client().Get("http://" + shipped.httpAddr + "/v1/device")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || !strings.HasPrefix(resp.Header.Get("Location"), "https://") {
		t.Errorf("nginx port 80: status %d Location %q, want a 301 to https", resp.StatusCode, resp.Header.Get("Location"))
	}

	// A token sent in the query string stays out of nginx's access log.
	queryToken := addDevice(t, shipped, srv, "query-token")
	qdev := dialDevice(t, shipped, "?"+queryToken, "")
	hello(t, "nginx", qdev.next(t, "nginx", 10*time.Second))
	qdev.conn.Close()

	sessions := []*session{
		{proxy: shipped, id: "hold-nginx"},
		{proxy: control, id: "control-nginx", control: true},
	}
	if haproxy, err := exec.LookPath("haproxy"); err == nil {
		sessions = append(sessions, &session{proxy: startHAProxy(t, haproxy, srv.Addr()), id: "hold-haproxy"})
	} else {
		t.Log("SKIPPING the HAProxy hold: haproxy not installed (apt-get install haproxy)")
	}
	if caddy, err := exec.LookPath("caddy"); err == nil {
		sessions = append(sessions, &session{proxy: startCaddy(t, caddy, srv.Addr()), id: "hold-caddy"})
	} else {
		t.Log("SKIPPING the Caddy hold: caddy not installed (apt-get install caddy)")
	}
	for _, s := range sessions {
		s.open(t, srv)
	}
	// The waits overlap, so the whole hold takes holdFor once.
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.control {
				s.err = s.expectCut(t)
			} else {
				s.err = s.hold()
			}
		}()
	}
	wg.Wait()
	for _, s := range sessions {
		if s.err != nil {
			t.Error(s.err)
		} else if !s.control {
			s.batchAcked(t, srv)
		}
	}

	accessLog, err := os.ReadFile(shipped.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(accessLog, []byte("GET /v1/device HTTP/1.1")) || bytes.Contains(accessLog, []byte(queryToken)) {
		t.Errorf("nginx access log must show the device requests without their query string:\n%s", accessLog)
	}

	// A graceful stop reaches a device through the proxy as close 1001, and
	// the server exits 0 within its shutdown grace.
	dev := dialDevice(t, shipped, addDevice(t, shipped, srv, "drain-nginx"), "")
	hello(t, "nginx", dev.next(t, "nginx", 10*time.Second))
	stopAt := time.Now()
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Protocol v1: an error frame saying why, then the close.
	var reason wire.Error
	if _, err := reason.UnmarshalMsg(dev.next(t, "nginx", 15*time.Second)); err != nil || reason.Type != wire.TypeError || reason.Code != "shutdown" {
		t.Errorf("after SIGTERM the device got %+v (%v), want an error frame with code shutdown", reason, err)
	}
	select {
	case ev := <-dev.events:
		code, _ := ws.ParseCloseFrameData(ev.payload)
		if ev.op != ws.OpClose || code != wire.CloseGoingAway {
			t.Errorf("after SIGTERM the device got %s, want close %d", describe(ev), wire.CloseGoingAway)
		}
	case <-time.After(15 * time.Second):
		t.Error("after SIGTERM the device got no close within 15s")
	}
	select {
	case <-srv.Done():
		if err := srv.Wait(0); err != nil {
			t.Errorf("meridian exited with %v after SIGTERM, want status 0", err)
		}
		t.Logf("meridian stopped %v after SIGTERM", time.Since(stopAt).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Error("meridian still running 20s after SIGTERM (shutdown grace is 10s)")
	}
}
