package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/tinylib/msgp/msgp"
	"go.uber.org/goleak"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of http.DefaultClient (shared by the
		// process) may outlive the test that opened them.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

type testEnv struct {
	d     *Dashboard
	srv   *httptest.Server
	auth  *fakeAuth
	cmds  *fakeCommands
	store *readingStore
	clock *fakeClock
}

func newTestEnv(t testing.TB, mut func(*Config, *Deps)) *testEnv {
	t.Helper()
	e := &testEnv{auth: &fakeAuth{}, cmds: &fakeCommands{}, store: newReadingStore(), clock: newFakeClock()}
	e.clock.t = time.Now()
	reg := &fakeRegistry{}
	for i := 0; i < 120; i++ {
		site := "north"
		if i%3 == 0 {
			site = "south"
		}
		reg.devices = append(reg.devices, storage.Device{ID: fmt.Sprintf("dev-%03d", i), Name: fmt.Sprintf("Pump %d", i), Labels: map[string]string{"site": site}, Enabled: true})
	}
	reg.devices = append(reg.devices, storage.Device{ID: "boiler-7", Name: "Boiler 7", Labels: map[string]string{"site": "north"}, Enabled: true})
	cfg := DefaultConfig()
	deps := Deps{Auth: e.auth, Registry: reg, Series: e.store.Series, Commands: e.cmds, Now: e.clock.now,
		Stats: func() map[string]any {
			return map[string]any{"storage": map[string]any{"mode": "sqlite"}, "broker": "connected"}
		}}
	if mut != nil {
		mut(&cfg, &deps)
	}
	d, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	e.srv = httptest.NewServer(d.Handler())
	t.Cleanup(func() {
		cancel()
		<-done
		e.srv.CloseClientConnections()
		e.srv.Close()
	})
	return e
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func (e *testEnv) client() *http.Client {
	return &http.Client{CheckRedirect: noRedirect, Timeout: 10 * time.Second}
}

// login posts the key and returns the session cookie and CSRF token.
func (e *testEnv) login(t *testing.T, key string) (*http.Cookie, string) {
	t.Helper()
	res, err := e.client().PostForm(e.srv.URL+"/login", url.Values{"key": {key}, "next": {"/"}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", res.StatusCode)
	}
	var c *http.Cookie
	for _, ck := range res.Cookies() {
		if ck.Name == sessionCookie {
			c = ck
		}
	}
	if c == nil {
		t.Fatal("no session cookie")
	}
	body := e.get(t, "/", c, http.StatusOK)
	i := strings.Index(body, `"csrf":"`)
	if i < 0 {
		t.Fatalf("no csrf token in page")
	}
	rest := body[i+8:]
	return c, rest[:strings.IndexByte(rest, '"')]
}

func (e *testEnv) get(t *testing.T, path string, c *http.Cookie, want int) string {
	t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
	if c != nil {
		req.AddCookie(c)
	}
	res, err := e.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d: %s", path, res.StatusCode, want, b)
	}
	return string(b)
}

func TestConfigValidate(t *testing.T) {
	cases := map[string]struct {
		mut  func(*Config)
		want string
	}{
		"default":         {func(*Config) {}, ""},
		"queue zero":      {func(c *Config) { c.ClientQueue = 0 }, "dashboard.client_queue: must be >= 1, got 0"},
		"queue huge":      {func(c *Config) { c.ClientQueue = 1 << 20 }, "dashboard.client_queue: must be <= 65536, got 1048576"},
		"rate zero":       {func(c *Config) { c.MaxUpdatesPerSecond = 0 }, "dashboard.max_updates_per_second: must be between 1 and 1000, got 0"},
		"ttl short":       {func(c *Config) { c.SessionTTL = time.Second }, "dashboard.session_ttl: must be >= 1m, got 1s"},
		"ttl long":        {func(c *Config) { c.SessionTTL = 1000 * time.Hour }, "dashboard.session_ttl: must be <= 720h, got 1000h0m0s"},
		"origin path":     {func(c *Config) { c.AllowedOrigins = []string{"https://ops.example.com/x"} }, `dashboard.allowed_origins[0]: must be an origin like https://ops.example.com (scheme and host, no path), got "https://ops.example.com/x"`},
		"origin scheme":   {func(c *Config) { c.AllowedOrigins = []string{"https://ok.example", "ftp://x"} }, `dashboard.allowed_origins[1]:`},
		"origin ok":       {func(c *Config) { c.AllowedOrigins = []string{"https://ops.example.com:8443"} }, ""},
		"several at once": {func(c *Config) { c.ClientQueue = 0; c.MaxUpdatesPerSecond = 0 }, "dashboard.max_updates_per_second: must be between 1 and 1000, got 0\ndashboard.client_queue: must be >= 1, got 0"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mut(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNewRequiresDeps(t *testing.T) {
	_, err := New(DefaultConfig(), Deps{})
	if err == nil || !strings.Contains(err.Error(), "Deps.Auth") || !strings.Contains(err.Error(), "Deps.Series") {
		t.Fatalf("got %v", err)
	}
}

func TestLoginFlow(t *testing.T) {
	e := newTestEnv(t, nil)
	c := e.client()

	res, _ := c.Get(e.srv.URL + "/ui/devices/boiler-7")
	res.Body.Close()
	if loc := res.Header.Get("Location"); res.StatusCode != http.StatusSeeOther || loc != "/login?next=%2Fui%2Fdevices%2Fboiler-7" {
		t.Fatalf("unauthenticated page: %d %q", res.StatusCode, loc)
	}

	res, _ = c.PostForm(e.srv.URL+"/login", url.Values{"key": {"mak_wrong"}})
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "not valid") || len(res.Cookies()) != 0 {
		t.Fatalf("bad key: %d %s", res.StatusCode, body)
	}
	res, _ = c.PostForm(e.srv.URL+"/login", url.Values{"key": {"mak_down"}})
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("store down: %d", res.StatusCode)
	}

	// Login CSRF: a cross-site form post is refused.
	req, _ := http.NewRequest("POST", e.srv.URL+"/login", strings.NewReader("key="+adminKey))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	res, _ = c.Do(req)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site login: %d", res.StatusCode)
	}

	req, _ = http.NewRequest("POST", e.srv.URL+"/login", strings.NewReader(url.Values{"key": {adminKey}, "next": {"//evil.example/x"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-Proto", "https")
	res, _ = c.Do(req)
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/" {
		t.Fatalf("login: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	ck := res.Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || !ck.Secure || ck.Path != "/" || len(ck.Value) < 40 {
		t.Fatalf("cookie %+v", ck)
	}

	cookie, csrf := e.login(t, viewerKey)
	if cookie.Secure {
		t.Fatal("Secure cookie over plain http makes login impossible")
	}
	page := e.get(t, "/ui/devices/boiler-7", cookie, http.StatusOK)
	if strings.Contains(page, `id="command"`) {
		t.Fatal("viewer sees the command form")
	}
	e.get(t, "/ui/devices/nope", cookie, http.StatusNotFound)

	// Logout needs the CSRF token.
	logout := func(token string) int {
		req, _ := http.NewRequest("POST", e.srv.URL+"/logout", strings.NewReader(url.Values{"csrf": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(cookie)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if got := logout("wrong"); got != http.StatusForbidden {
		t.Fatalf("logout without token: %d", got)
	}
	if got := logout(csrf); got != http.StatusSeeOther {
		t.Fatalf("logout: %d", got)
	}
	e.get(t, "/ui/system", cookie, http.StatusSeeOther)
}

func TestSessionExpiryAndRevocation(t *testing.T) {
	e := newTestEnv(t, func(c *Config, _ *Deps) { c.SessionTTL = time.Hour })
	cookie, _ := e.login(t, viewerKey)
	e.clock.add(50 * time.Minute)
	e.get(t, "/ui/system", cookie, http.StatusOK) // renews
	e.clock.add(50 * time.Minute)
	e.get(t, "/ui/system", cookie, http.StatusOK)
	e.clock.add(61 * time.Minute)
	e.get(t, "/ui/system", cookie, http.StatusSeeOther)

	cookie, _ = e.login(t, viewerKey)
	e.auth.revoke(viewerKey)
	e.get(t, "/ui/system", cookie, http.StatusOK) // checked less than a minute ago
	e.clock.add(recheckEvery)
	e.get(t, "/ui/system", cookie, http.StatusSeeOther)
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/ui/devices/x?a=1": "/ui/devices/x?a=1",
		"":                  "/",
		"//evil.example":    "/",
		"/\\evil.example":   "/",
		"https://evil":      "/",
		"/ok\r\nSet-Cookie": "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCommandAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	adminC, adminCSRF := e.login(t, adminKey)
	viewerC, viewerCSRF := e.login(t, viewerKey)
	cases := map[string]struct {
		device, body, csrf, bearer, origin string
		cookie                             *http.Cookie
		want                               int
		wantBody                           string
	}{
		"admin":             {device: "boiler-7", body: `{"name":"reboot","payload":{"delay_s":5,"f":1.5}}`, cookie: adminC, csrf: adminCSRF, want: 200, wantBody: `"payload":{"ok":true}`},
		"admin no csrf":     {device: "boiler-7", body: `{"name":"reboot"}`, cookie: adminC, want: 403, wantBody: "csrf"},
		"admin wrong csrf":  {device: "boiler-7", body: `{"name":"reboot"}`, cookie: adminC, csrf: viewerCSRF, want: 403},
		"cross origin":      {device: "boiler-7", body: `{"name":"reboot"}`, cookie: adminC, csrf: adminCSRF, origin: "https://evil.example", want: 403},
		"viewer":            {device: "boiler-7", body: `{"name":"reboot"}`, cookie: viewerC, csrf: viewerCSRF, want: 403, wantBody: "admin key"},
		"bearer admin":      {device: "boiler-7", body: `{"name":"reboot"}`, bearer: adminKey, want: 200},
		"anonymous":         {device: "boiler-7", body: `{"name":"reboot"}`, want: 401},
		"offline":           {device: "off-1", body: `{"name":"reboot"}`, bearer: adminKey, want: 409, wantBody: `"error":"offline"`},
		"bad name":          {device: "boiler-7", body: `{"name":"re boot"}`, bearer: adminKey, want: 400, wantBody: "name:"},
		"bad payload":       {device: "boiler-7", body: `{"name":"x","payload":{"a":}`, bearer: adminKey, want: 400},
		"unknown field":     {device: "boiler-7", body: `{"name":"x","queue":true}`, bearer: adminKey, want: 400, wantBody: "unknown field"},
		"bad device":        {device: "Bad%20Id", body: `{"name":"x"}`, bearer: adminKey, want: 400},
		"store unreachable": {device: "boiler-7", body: `{"name":"x"}`, bearer: "mak_down", want: 503},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.srv.URL+"/ui/api/devices/"+tc.device+"/commands", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			if tc.cookie != nil {
				req.AddCookie(tc.cookie)
			}
			if tc.csrf != "" {
				req.Header.Set("X-CSRF-Token", tc.csrf)
			}
			if tc.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			res, err := e.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.want || !strings.Contains(string(b), tc.wantBody) {
				t.Fatalf("%d %s, want %d containing %q", res.StatusCode, b, tc.want, tc.wantBody)
			}
		})
	}
	// The payload reached the device as MessagePack with an integer.
	e.cmds.mu.Lock()
	defer e.cmds.mu.Unlock()
	var first telemetry.Command
	for _, c := range e.cmds.sent {
		if len(c.Payload) > 0 {
			first = c
		}
	}
	if !strings.HasPrefix(first.ID, "ui-") || first.Name != "reboot" {
		t.Fatalf("command %+v", first)
	}
	v, _, err := msgp.ReadMapStrIntfBytes(first.Payload, nil)
	if err != nil || v["delay_s"] != int64(5) || v["f"] != 1.5 {
		t.Fatalf("payload %#v %v", v, err)
	}
}

func TestDevicesAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	e.d.Publish(telemetry.Batch{Device: "dev-005", Seq: 1, Readings: []telemetry.Reading{{Time: 1, Metric: "temp_c", Value: 20.5}}})
	cookie, _ := e.login(t, viewerKey)
	type page struct {
		Total   int `json:"total"`
		Devices []struct {
			ID     string            `json:"id"`
			Online bool              `json:"online"`
			Latest map[string]Latest `json:"latest"`
		} `json:"devices"`
	}
	cases := map[string]struct {
		query     string
		want      int
		total     int
		n         int
		first     string
		errSubstr string
	}{
		"first page":    {query: "", want: 200, total: 121, n: 50, first: "boiler-7"},
		"third page":    {query: "offset=100&limit=50", want: 200, total: 121, n: 21, first: "dev-099"},
		"search":        {query: "q=PUMP%2011", want: 200, total: 11, n: 11, first: "dev-011"},
		"label":         {query: "label=site%3Dsouth", want: 200, total: 40, n: 40, first: "dev-000"},
		"label+search":  {query: "label=site%3Dnorth&q=boiler", want: 200, total: 1, n: 1, first: "boiler-7"},
		"bad limit":     {query: "limit=0", want: 400, errSubstr: "limit: must be an integer between 1 and 500"},
		"bad label":     {query: "label=site", want: 400, errSubstr: "label: must be key=value"},
		"past the end":  {query: "offset=500", want: 200, total: 121, n: 0},
		"live stats in": {query: "q=dev-005", want: 200, total: 1, n: 1, first: "dev-005"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			body := e.get(t, "/ui/api/devices?"+tc.query, cookie, tc.want)
			if tc.want != 200 {
				if !strings.Contains(body, tc.errSubstr) {
					t.Fatalf("%s, want %q", body, tc.errSubstr)
				}
				return
			}
			var p page
			if err := json.Unmarshal([]byte(body), &p); err != nil {
				t.Fatal(err)
			}
			if p.Total != tc.total || len(p.Devices) != tc.n || (tc.n > 0 && p.Devices[0].ID != tc.first) {
				t.Fatalf("total %d n %d first %v", p.Total, len(p.Devices), p.Devices)
			}
		})
	}
	// The hub is asynchronous: wait for the published batch to show.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var p page
		_ = json.Unmarshal([]byte(e.get(t, "/ui/api/devices?q=dev-005", cookie, 200)), &p)
		if l := p.Devices[0].Latest["temp_c"]; l.V == 20.5 && p.Devices[0].Online {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("live stats not in the device list: %+v", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSeriesAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	now := time.Now().UnixMilli()
	e.store.add(telemetry.Batch{Device: "boiler-7", Readings: []telemetry.Reading{{Time: now - 2000, Metric: "t", Value: 1}, {Time: now - 1000, Metric: "t", Value: 2}, {Time: now, Metric: "t", Value: 3}}})
	cookie, _ := e.login(t, viewerKey)
	cases := map[string]struct {
		query string
		want  int
		sub   string
	}{
		"seam is exclusive": {fmt.Sprintf("device=boiler-7&metric=t&from=%d&to=%d", now-2000, now), 200, `"last":2,"count":1}]`},
		"rfc3339":           {"device=boiler-7&metric=t&from=" + url.QueryEscape(time.UnixMilli(now-1500).UTC().Format(time.RFC3339Nano)) + "&to=" + url.QueryEscape(time.UnixMilli(now+1).UTC().Format(time.RFC3339Nano)), 200, `"last":3`},
		"no from":           {"device=boiler-7&metric=t", 400, "from: must be Unix milliseconds or RFC 3339"},
		"bad device":        {"device=Boiler&metric=t&from=1", 400, "device: must match"},
		"bad metric":        {"device=boiler-7&metric=a%20b&from=1", 400, "metric: must be"},
		"backwards":         {fmt.Sprintf("device=boiler-7&metric=t&from=%d&to=%d", now, now-1), 400, "from must be before to"},
		"too many points":   {fmt.Sprintf("device=boiler-7&metric=t&from=%d&points=99999", now-1000), 400, "points: must be an integer between 1 and 5000"},
		"too long":          {"device=boiler-7&metric=t&from=1", 400, "at most 400 days"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if body := e.get(t, "/ui/api/series?"+tc.query, cookie, tc.want); !strings.Contains(body, tc.sub) {
				t.Fatalf("%s, want %q", body, tc.sub)
			}
		})
	}
}

// TestMountedBesideAPI mounts the handler as cmd does: API routes first,
// the dashboard at "/". The dashboard must not answer for them.
func TestMountedBesideAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	mux := http.NewServeMux()
	for _, p := range []string{"/v1/device", "/v1/device/", "/v1/admin/", "/v1/query", "/v1/series", "GET /healthz", "GET /readyz", "GET /metrics"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "api") })
	}
	mux.Handle("/", e.d.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cases := map[string]int{
		"/v1/series?device=x": 200, "/v1/admin/devices": 200, "/healthz": 200, "/metrics": 200, "/v1/device": 200,
		"/": 303, "/login": 200, "/nope": 404, "/ui/nope": 404, "/assets/README.md": 404, "/assets/": 404,
		"/v1/live": 401, "/v1/live/sse?device=x": 401,
	}
	for path, want := range cases {
		res, err := (&http.Client{CheckRedirect: noRedirect}).Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, res.StatusCode, want)
		}
		if want == 200 && path != "/login" && string(b) != "api" {
			t.Errorf("GET %s answered by the dashboard", path)
		}
	}
	if e.d.pages.bundle.built {
		res, _ := http.Get(srv.URL + "/assets/dist/app.js?v=" + e.d.pages.bundle.version)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(res.Header.Get("Cache-Control"), "immutable") {
			t.Errorf("bundle: %d %q", res.StatusCode, res.Header.Get("Cache-Control"))
		}
	}
}

// wsDial opens /v1/live with the given headers.
func wsDial(t testing.TB, base string, h http.Header) (*wsClient, error) {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second, Header: ws.HandshakeHeaderHTTP(h)}
	conn, br, _, err := d.Dial(context.Background(), "ws"+strings.TrimPrefix(base, "http")+"/v1/live")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	var r io.Reader = conn
	if br != nil {
		r = br
	}
	return &wsClient{t: t, conn: conn, r: r}, nil
}

type wsClient struct {
	t    testing.TB
	conn interface {
		io.ReadWriteCloser
		SetReadDeadline(time.Time) error
	}
	r io.Reader
}

func (c *wsClient) send(v any) {
	b, _ := json.Marshal(v)
	if err := wsutil.WriteClientText(c.conn, b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsClient) next() liveMsg {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rw := struct {
		io.Reader
		io.Writer
	}{c.r, c.conn}
	b, op, err := wsutil.ReadServerData(rw)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if op != ws.OpText {
		c.t.Fatalf("opcode %v", op)
	}
	return decode(c.t, b)
}

func TestLiveWebSocket(t *testing.T) {
	e := newTestEnv(t, func(c *Config, _ *Deps) { c.AllowedOrigins = []string{"https://ops.example.com"} })
	cookie, _ := e.login(t, viewerKey)
	host := strings.TrimPrefix(e.srv.URL, "http://")
	cases := map[string]struct {
		h      http.Header
		status string // substring of the handshake error; "" = accepted
	}{
		"anonymous":        {http.Header{}, "401"},
		"bad key":          {http.Header{"Authorization": {"Bearer mak_nope"}}, "401"},
		"bearer":           {http.Header{"Authorization": {"Bearer " + viewerKey}}, ""},
		"cookie same host": {http.Header{"Cookie": {cookie.String()}, "Origin": {"http://" + host}}, ""},
		"cookie evil":      {http.Header{"Cookie": {cookie.String()}, "Origin": {"https://evil.example"}}, "403"},
		"cookie allowed":   {http.Header{"Cookie": {cookie.String()}, "Origin": {"https://ops.example.com"}}, ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := wsDial(t, e.srv.URL, tc.h)
			if tc.status != "" {
				if err == nil || !strings.Contains(err.Error(), tc.status) {
					t.Fatalf("got %v, want %s", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m := c.next(); m.Type != "hello" {
				t.Fatalf("first message %+v", m)
			}
		})
	}

	c, err := wsDial(t, e.srv.URL, http.Header{"Authorization": {"Bearer " + viewerKey}})
	if err != nil {
		t.Fatal(err)
	}
	c.next() // hello
	c.send(map[string]any{"type": "subscribe", "device": "Bad Id"})
	if m := c.next(); m.Type != "error" || !strings.Contains(m.Error, "device") {
		t.Fatalf("bad subscribe: %+v", m)
	}
	c.send(map[string]any{"type": "subscribe", "device": "boiler-7", "metrics": []string{"temp_c"}})
	m := c.next()
	if m.Type != "subscribed" || m.Device != "boiler-7" || m.Seam == 0 {
		t.Fatalf("subscribed: %+v", m)
	}
	e.d.Publish(telemetry.Batch{Device: "boiler-7", Seq: 1, Readings: []telemetry.Reading{
		{Time: m.Seam, Metric: "temp_c", Value: 21}, {Time: m.Seam, Metric: "rpm", Value: 900},
	}})
	e.d.Presence(telemetry.Presence{Device: "boiler-7", Online: true, At: m.Seam})
	got := map[string]bool{}
	for len(got) < 2 {
		m := c.next()
		switch m.Type {
		case "updates":
			if len(m.Updates) != 1 || m.Updates[0].Metric != "temp_c" || m.Updates[0].Last != 21 {
				t.Fatalf("updates %+v", m)
			}
		case "presence":
			if !m.Online {
				t.Fatalf("presence %+v", m)
			}
		}
		got[m.Type] = true
	}
	// A frame over the limit closes with 1009.
	if err := wsutil.WriteClientText(c.conn, make([]byte, maxClientMessage+1)); err != nil {
		t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		if f.Header.OpCode == ws.OpClose {
			code, _ := ws.ParseCloseFrameData(f.Payload)
			if code != ws.StatusMessageTooBig {
				t.Fatalf("close code %d", code)
			}
			break
		}
	}
}

func TestLiveSSE(t *testing.T) {
	e := newTestEnv(t, nil)
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/live/sse?device=boiler-7&metric=temp_c,rpm", nil)
	req.Header.Set("Authorization", "Bearer "+viewerKey)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(res.Body)
	next := func() liveMsg {
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				return decode(t, []byte(line))
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return liveMsg{}
	}
	if m := next(); m.Type != "hello" {
		t.Fatalf("%+v", m)
	}
	m := next()
	if m.Type != "subscribed" {
		t.Fatalf("%+v", m)
	}
	e.d.Publish(telemetry.Batch{Device: "boiler-7", Seq: 1, Readings: []telemetry.Reading{{Time: m.Seam + 5, Metric: "rpm", Value: 1200}, {Time: m.Seam + 5, Metric: "other", Value: 1}}})
	if m := next(); m.Type != "updates" || len(m.Updates) != 1 || m.Updates[0].Last != 1200 {
		t.Fatalf("%+v", m)
	}

	for q, want := range map[string]int{"device=Bad": 400, "device=x&metric=a%20b": 400} {
		req, _ := http.NewRequest("GET", e.srv.URL+"/v1/live/sse?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+viewerKey)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s: %d", q, res.StatusCode)
		}
	}
}

func TestSystemAPI(t *testing.T) {
	e := newTestEnv(t, nil)
	body := e.get(t, "/ui/api/system", nil, 401)
	_ = body
	req, _ := http.NewRequest("GET", e.srv.URL+"/ui/api/system", nil)
	req.Header.Set("Authorization", "Bearer "+viewerKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(res.Body).Decode(&v)
	if v["server"].(map[string]any)["broker"] != "connected" || v["hub_queue_cap"] != float64(inboxSize) {
		t.Fatalf("%v", v)
	}
}
