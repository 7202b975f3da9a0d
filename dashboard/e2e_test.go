package dashboard

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"
	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
	"github.com/meridian-iot/meridian/storage"
)

// ---- a real ingest server on an in-memory store ----

// memStore is the ingest.Store of the end-to-end test: watermarks for the
// duplicate check, and every committed reading kept for Series.
type memStore struct {
	mu         sync.Mutex
	watermarks map[string]uint64
	readings   *readingStore
}

func (m *memStore) Commit(_ context.Context, batches []telemetry.Batch) ([]telemetry.Outcome, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]telemetry.Outcome, len(batches))
	for i, b := range batches {
		if b.Seq <= m.watermarks[b.Device] {
			out[i].Duplicate = true
			continue
		}
		m.watermarks[b.Device] = b.Seq
		m.readings.add(b)
	}
	return out, nil
}

func (m *memStore) Watermark(_ context.Context, device string) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.watermarks[device], nil
}

func (m *memStore) Ping(context.Context) error { return nil }

// ingestCommands delivers commands through ingest's SendCommand and waits
// for the device's result, as the bridge does on one node.
type ingestCommands struct {
	srv     *ingest.Server
	mu      sync.Mutex
	waiters map[string]chan telemetry.CommandResult
}

func (c *ingestCommands) result(r telemetry.CommandResult) {
	c.mu.Lock()
	ch := c.waiters[r.Device+"/"+r.ID]
	c.mu.Unlock()
	if ch != nil {
		select {
		case ch <- r:
		default:
		}
	}
}

func (c *ingestCommands) Send(ctx context.Context, device string, cmd telemetry.Command, wait time.Duration) (telemetry.CommandResult, error) {
	ch := make(chan telemetry.CommandResult, 1)
	k := device + "/" + cmd.ID
	c.mu.Lock()
	c.waiters[k] = ch
	c.mu.Unlock()
	defer func() { c.mu.Lock(); delete(c.waiters, k); c.mu.Unlock() }()
	if err := c.srv.SendCommand(device, cmd); err != nil {
		if errors.Is(err, telemetry.ErrOffline) {
			return telemetry.CommandResult{Device: device, ID: cmd.ID, Error: "offline"}, nil
		}
		return telemetry.CommandResult{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-time.After(wait):
		return telemetry.CommandResult{Device: device, ID: cmd.ID, Error: "timeout"}, nil
	case <-ctx.Done():
		return telemetry.CommandResult{}, ctx.Err()
	}
}

// device is a firmware stand-in on the real device WebSocket.
type device struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex
	acks chan wire.Ack
	cmds chan wire.Command
}

func dialDevice(t *testing.T, base, token string) *device {
	t.Helper()
	d := ws.Dialer{Protocols: []string{wire.Subprotocol}, Timeout: 5 * time.Second,
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}})}
	conn, br, _, err := d.Dial(context.Background(), "ws"+strings.TrimPrefix(base, "http")+"/v1/device")
	if err != nil {
		t.Fatalf("device dial: %v", err)
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	dv := &device{t: t, conn: conn, br: br, acks: make(chan wire.Ack, 16), cmds: make(chan wire.Command, 4)}
	hello := make(chan struct{})
	go dv.readLoop(hello)
	select {
	case <-hello:
	case <-time.After(5 * time.Second):
		t.Fatal("no hello from ingest")
	}
	t.Cleanup(func() { conn.Close() })
	return dv
}

func (dv *device) write(op ws.OpCode, p []byte) error {
	dv.wmu.Lock()
	defer dv.wmu.Unlock()
	_ = dv.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return ws.WriteFrame(dv.conn, ws.MaskFrame(ws.NewFrame(op, true, p)))
}

func (dv *device) readLoop(hello chan struct{}) {
	for {
		f, err := ws.ReadFrame(dv.br)
		if err != nil {
			return
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			_ = dv.write(ws.OpPong, f.Payload)
			continue
		case ws.OpClose:
			return
		}
		typ, err := wire.TypeOf(f.Payload)
		if err != nil {
			continue
		}
		switch typ {
		case wire.TypeHello:
			close(hello)
		case wire.TypeAck:
			var a wire.Ack
			if _, err := a.UnmarshalMsg(f.Payload); err == nil {
				dv.acks <- a
			}
		case wire.TypeCommand:
			var c wire.Command
			if _, err := c.UnmarshalMsg(f.Payload); err != nil {
				continue
			}
			dv.cmds <- c
			// Answer like firmware would: {"accepted": true, "name": ...}.
			payload := msgp.AppendString(msgp.AppendString(msgp.AppendBool(msgp.AppendString(msgp.AppendMapHeader(nil, 2), "accepted"), true), "name"), c.Name)
			res, _ := (&wire.Result{Type: wire.TypeResult, ID: c.ID, OK: true, Payload: msgp.Raw(payload)}).MarshalMsg(nil)
			_ = dv.write(ws.OpBinary, res)
		}
	}
}

// send sends a batch and waits for its ack.
func (dv *device) send(seq uint64, rs ...wire.Reading) {
	dv.t.Helper()
	b, err := (&wire.Batch{Type: wire.TypeBatch, Seq: seq, Readings: rs}).MarshalMsg(nil)
	if err != nil {
		dv.t.Fatal(err)
	}
	if err := dv.write(ws.OpBinary, b); err != nil {
		dv.t.Fatal(err)
	}
	select {
	case a := <-dv.acks:
		if a.Seq != seq || a.Accepted != len(rs) {
			dv.t.Fatalf("ack %+v for seq %d with %d readings", a, seq, len(rs))
		}
	case <-time.After(5 * time.Second):
		dv.t.Fatalf("no ack for seq %d", seq)
	}
}

func wr(t int64, metric string, v float64) wire.Reading {
	return wire.Reading{T: t, HasT: true, Metric: metric, Value: v}
}

// ---- the browser ----

func artifactDir(t *testing.T) string {
	dir := os.Getenv("MERIDIAN_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newBrowser(t *testing.T) context.Context {
	t.Helper()
	return meridiantest.Browser(t, 90*time.Second, chromedp.Flag("hide-scrollbars", true))
}

// watchConsole collects every console error and uncaught exception of the
// pages until the test ends; the function returns those seen so far.
func watchConsole(t *testing.T, bctx context.Context) func() []string {
	var (
		mu   sync.Mutex
		errs []string
	)
	done := make(chan struct{})
	messages := chromedp.Console(bctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s: %s (%s:%d)", m.Type, m.Text, m.URL, m.Line))
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { chromedp.Cancel(bctx); <-done })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), errs...)
	}
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// pollJS waits until the JavaScript expression is true.
func pollJS(expr string, timeout time.Duration) chromedp.Action[chromedp.Void] {
	p := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(50*time.Millisecond))
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		if _, err := p(ctx, t); err != nil {
			return chromedp.Void{}, fmt.Errorf("wait for %s: %w", expr, err)
		}
		return chromedp.Void{}, nil
	}
}

// TestBrowserEndToEnd drives the real pages in headless Chromium against a
// real ingest server: a device sends over its WebSocket, the page (logged in
// with an admin key) shows the value live, and a command goes to the device
// and its result back to the page.
func TestBrowserEndToEnd(t *testing.T) {
	if !loadBundle().built {
		if os.Getenv("CI") == "true" {
			t.Fatal("the dashboard bundle is not built (CI=true): run `make dashboard` first")
		}
		t.Skip("SKIPPING the browser end-to-end test: the front end is not built; run `make dashboard`")
	}
	bctx := newBrowser(t)
	dir := artifactDir(t)

	// Server: ingest + dashboard on one mux, as `meridian serve` mounts them.
	readings := newReadingStore()
	store := &memStore{watermarks: map[string]uint64{}, readings: readings}
	var dash *Dashboard
	cmds := &ingestCommands{waiters: map[string]chan telemetry.CommandResult{}}
	icfg := ingest.DefaultConfig()
	icfg.Linger = 0 // group commit: commit at once
	ing, err := ingest.New(icfg, store, meridiantest.TokenAuth{}, ingest.Options{
		Logger:    slog.New(slog.DiscardHandler),
		Committed: func(b telemetry.Batch) { dash.Publish(b) },
		Presence:  func(p telemetry.Presence) { dash.Presence(p) },
		Results:   cmds.result,
	})
	if err != nil {
		t.Fatal(err)
	}
	cmds.srv = ing
	reg := &fakeRegistry{devices: []storage.Device{
		{ID: "boiler-7", Name: "Boiler 7", Labels: map[string]string{"site": "north", "floor": "2"}, Enabled: true, Acked: 2},
		{ID: "chiller-2", Name: "Chiller 2", Labels: map[string]string{"site": "south"}, Enabled: true},
	}}
	dash, err = New(DefaultConfig(), Deps{
		Auth: &fakeAuth{}, Registry: reg, Series: readings.Series, Commands: cmds,
		Stats: func() map[string]any {
			return map[string]any{"storage": map[string]any{"backend": "sqlite", "mode": storage.ModeSQLite}, "mqtt": map[string]any{"connected": true}, "ingest_queue": 0}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = ing.Run(ctx) }()
	go func() { defer wg.Done(); _ = dash.Run(ctx) }()
	mux := http.NewServeMux()
	mux.Handle("/v1/device", ing.Handler())
	mux.Handle("/v1/device/", ing.Handler())
	mux.Handle("/", dash.Handler())
	srv := httptest.NewServer(mux)
	// The browser reaches the server through a TCP proxy, so the test can
	// cut the page's connections (and only those; the device connects
	// directly) to exercise reconnect and resume. Closing the server side's
	// hijacked net.Conn would not do: the connection core keeps its own
	// descriptor of an upgraded socket (ingest/wsconn, bare-fd mode).
	px := meridiantest.NewProxy(t, srv.Listener.Addr().String())
	pageURL := "http://" + px.Addr()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		cancel()
		wg.Wait()
	})

	// The device connects and sends ten minutes of history.
	dev := dialDevice(t, srv.URL, "tok-boiler-7")
	now := time.Now().UnixMilli()
	var hist []wire.Reading
	for i := 60; i >= 1; i-- {
		ts := now - int64(i)*10_000
		hist = append(hist,
			wr(ts, "temp_c", 21+float64(i%7)*0.3),
			wr(ts, "humidity_pct", 40+float64(i%5)),
			wr(ts, "supply_v", 12.1-float64(i%3)*0.05))
	}
	dev.send(1, hist...)

	// Every console error and uncaught exception of the pages fails the test.
	exceptions := watchConsole(t, bctx)

	// Log in (the device page redirects to /login and back).
	err = chromedp.Do(bctx,
		chromedp.Navigate(pageURL+"/ui/devices/boiler-7"),
		chromedp.WaitVisible(chromedp.CSS(`#key`)),
		chromedp.SendKeys(chromedp.CSS(`#key`), adminKey),
		chromedp.Submit(chromedp.CSS(`#key`)),
		chromedp.WaitVisible(chromedp.CSS(`#charts .chart[data-metric="temp_c"]`)),
		pollJS(`document.querySelector('#livestate')?.textContent.startsWith('live')`, 10*time.Second),
		// History loaded into the chart (60 points before the seam).
		pollJS(`document.querySelectorAll('#charts .chart').length === 3 && (document.querySelector('.chart[data-metric="temp_c"] .cval')?.textContent ?? '–') !== '–'`, 10*time.Second),
	)
	if err != nil {
		t.Fatalf("log in and open the device page: %v", err)
	}
	// Watch for layout shifts from here on: live values must not move
	// anything.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`window.__shift = 0; window.__shifted = []; new PerformanceObserver((l) => { for (const e of l.getEntries()) if (!e.hadRecentInput) { window.__shift += e.value; for (const s of e.sources || []) window.__shifted.push((s.node && (s.node.id || s.node.className || s.node.nodeName)) + ' ' + JSON.stringify(s.previousRect) + '→' + JSON.stringify(s.currentRect)); } }).observe({type: 'layout-shift'}); true`)); err != nil {
		t.Fatal(err)
	}

	// A live reading: the device sends, the page shows it.
	sent := time.Now()
	dev.send(2, wr(time.Now().UnixMilli(), "temp_c", 1042.25), wr(time.Now().UnixMilli(), "humidity_pct", 47))
	err = chromedp.Do(bctx,
		pollJS(`document.querySelector('#latest tr[data-metric="temp_c"] .v')?.textContent === '1042.3'`, 10*time.Second),
		pollJS(`document.querySelector('.chart[data-metric="temp_c"] .cval')?.textContent === '1042.3 °C'`, 10*time.Second),
	)
	if err != nil {
		t.Fatalf("live value did not show: %v", err)
	}
	t.Logf("device send → value on the page: %v (including ack wait and 50 ms polling)", time.Since(sent))
	dev.send(3, wr(time.Now().UnixMilli(), "temp_c", 22.5))
	if err := chromedp.Do(bctx, pollJS(`document.querySelector('#latest tr[data-metric="temp_c"] .v')?.textContent === '22.5'`, 10*time.Second)); err != nil {
		t.Fatalf("second live value: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	shift, err := chromedp.Run(bctx, chromedp.Evaluate[float64](`window.__shift`))
	if err != nil {
		t.Fatal(err)
	}
	if shift > 0.001 {
		shifted, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](`window.__shifted`))
		t.Errorf("live values shifted the layout: cumulative layout shift %.4f: %v", shift, shifted)
	}

	// Resume: cut the page's live socket, send a reading while it is away;
	// the page reconnects, fills the gap from history and streams again,
	// with no gap and no duplicate at the seam.
	points := func() int {
		n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`Number(document.querySelector('.chart[data-metric="temp_c"]')?.dataset.points)`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := points(); n != 62 {
		t.Fatalf("temp_c chart has %d points, want 60 of history + 2 live", n)
	}
	if px.Cut() == 0 {
		t.Fatal("no page connection to cut")
	}
	if err := chromedp.Do(bctx, pollJS(`!document.querySelector('#livestate')?.textContent.startsWith('live')`, 5*time.Second)); err != nil {
		t.Fatalf("page did not notice the cut: %v", err)
	}
	dev.send(4, wr(time.Now().UnixMilli(), "temp_c", 33.25))
	if err := chromedp.Do(bctx, pollJS(`document.querySelector('#livestate')?.textContent.startsWith('live') && document.querySelector('.chart[data-metric="temp_c"]')?.dataset.points === '63'`, 15*time.Second)); err != nil {
		t.Fatalf("page did not resume with the gap filled (%d points): %v", points(), err)
	}
	dev.send(5, wr(time.Now().UnixMilli(), "temp_c", 24))
	if err := chromedp.Do(bctx, pollJS(`document.querySelector('.chart[data-metric="temp_c"] .cval')?.textContent === '24.0 °C'`, 10*time.Second)); err != nil {
		t.Fatalf("no live value after resume: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := points(); n != 64 {
		t.Fatalf("after resume the chart has %d points, want 64 (no gap, no duplicate)", n)
	}

	// A command with a JSON payload: the device gets it, the page the result.
	err = chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.CSS(`#cmdname`), "reboot"),
		chromedp.SendKeys(chromedp.CSS(`#cmdpayload`), `{"delay_s": 5}`),
		chromedp.Click(chromedp.CSS(`#command button`)),
		pollJS(`document.querySelector('#cmdresult')?.textContent.includes('ok')`, 15*time.Second),
	)
	if err != nil {
		t.Fatalf("command: %v", err)
	}
	select {
	case c := <-dev.cmds:
		v, _, err := msgp.ReadMapStrIntfBytes(c.Payload, nil)
		if c.Name != "reboot" || err != nil || v["delay_s"] != int64(5) {
			t.Fatalf("device got %+v (%v, %v)", c, v, err)
		}
	default:
		t.Fatal("the device got no command")
	}
	result, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS(`#cmdresult`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(result, `"accepted": true`) {
		t.Fatalf("result on the page: %q", result)
	}
	screenshot(t, bctx, dir, "dashboard-device.png")

	// Fleet and system pages render with live numbers.
	err = chromedp.Do(bctx,
		chromedp.Navigate(pageURL+"/"),
		pollJS(`document.querySelectorAll('#rows tr[data-device]').length === 2`, 10*time.Second),
		pollJS(`document.querySelector('#rows tr[data-device="boiler-7"] .state.s-online') !== null`, 10*time.Second),
	)
	if err != nil {
		t.Fatalf("fleet page: %v", err)
	}
	screenshot(t, bctx, dir, "dashboard-fleet.png")
	err = chromedp.Do(bctx,
		chromedp.Navigate(pageURL+"/ui/system"),
		pollJS(`(document.querySelector('#s-clients')?.textContent ?? '–') !== '–'`, 10*time.Second),
	)
	if err != nil {
		t.Fatalf("system page: %v", err)
	}
	screenshot(t, bctx, dir, "dashboard-system.png")

	// Phone size and dark mode.
	if _, err := chromedp.Call(bctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
	}); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(bctx,
		chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(pageURL+"/ui/devices/boiler-7"),
		pollJS(`document.querySelector('#livestate')?.textContent.startsWith('live') && (document.querySelector('.chart[data-metric="temp_c"] .cval')?.textContent ?? '–') !== '–'`, 10*time.Second),
	)
	if err != nil {
		t.Fatalf("phone/dark device page: %v", err)
	}
	overflow, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		t.Error("the device page scrolls sideways on a 390 px wide phone")
	}
	screenshot(t, bctx, dir, "dashboard-device-phone-dark.png")

	if errs := exceptions(); len(errs) > 0 {
		t.Fatalf("JavaScript errors in the pages: %v", errs)
	}
}
