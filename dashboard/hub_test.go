package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// fakeClock is a settable clock for the hub's rate decisions.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.UnixMilli(1_700_000_000_000)} }

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func testHub(t *testing.T, mut func(*Config)) (*Hub, *fakeClock) {
	t.Helper()
	cfg := DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	return newHub(cfg, newMetrics(nil), slog.New(slog.DiscardHandler), clk.now), clk
}

// newClient attaches and subscribes synchronously, as the hub goroutine
// would (for tests that drive the hub by hand).
func (h *Hub) newClientSync(t *testing.T, subs map[string][]string) *client {
	t.Helper()
	c := &client{
		id: h.nextID.Add(1), out: make(chan []byte, h.queue), done: make(chan struct{}),
		subs: map[string]*subscription{}, windows: map[seriesKey]*Update{}, lastSent: map[seriesKey]time.Time{},
	}
	if err := h.control(ctrlMsg{kind: ctrlAttach, c: c}); err != nil {
		t.Fatal(err)
	}
	for dev, ms := range subs {
		if err := h.control(ctrlMsg{kind: ctrlSubscribe, c: c, device: dev, metrics: ms}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

type liveMsg struct {
	Type    string            `json:"type"`
	Device  string            `json:"device"`
	Seam    int64             `json:"seam"`
	Latest  map[string]Latest `json:"latest"`
	Online  bool              `json:"online"`
	Error   string            `json:"error"`
	Updates []struct {
		Device string  `json:"device"`
		Metric string  `json:"metric"`
		T      int64   `json:"t"`
		T0     int64   `json:"t0"`
		Min    float64 `json:"min"`
		Max    float64 `json:"max"`
		Last   float64 `json:"last"`
		Count  int64   `json:"count"`
	} `json:"updates"`
}

func decode(t testing.TB, b []byte) liveMsg {
	t.Helper()
	var m liveMsg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("message is not JSON: %v: %s", err, b)
	}
	return m
}

// drain returns every queued message without waiting.
func drain(t *testing.T, c *client) []liveMsg {
	t.Helper()
	var out []liveMsg
	for {
		select {
		case b := <-c.out:
			out = append(out, decode(t, b))
		default:
			return out
		}
	}
}

func updatesOf(msgs []liveMsg) map[string]int64 {
	n := map[string]int64{}
	for _, m := range msgs {
		for _, u := range m.Updates {
			n[u.Device+"/"+u.Metric] += u.Count
		}
	}
	return n
}

func batch(dev string, seq uint64, rs ...telemetry.Reading) telemetry.Batch {
	return telemetry.Batch{Device: dev, Seq: seq, Readings: rs}
}

func rd(t int64, metric string, v float64) telemetry.Reading {
	return telemetry.Reading{Time: t, Metric: metric, Value: v}
}

// TestFanOut runs the real hub goroutine: each client gets exactly the
// series it subscribed to.
func TestFanOut(t *testing.T) {
	cfg := DefaultConfig()
	h := newHub(cfg, newMetrics(nil), slog.New(slog.DiscardHandler), time.Now)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- h.Run(ctx) }()
	defer func() { cancel(); <-runDone }()

	type want struct {
		subs map[string][]string
		got  map[string]int64
	}
	cases := map[string]want{
		"all of dev1":     {map[string][]string{"dev1": nil}, map[string]int64{"dev1/temp": 1, "dev1/rpm": 1}},
		"temp of dev1":    {map[string][]string{"dev1": {"temp"}}, map[string]int64{"dev1/temp": 1}},
		"dev2 only":       {map[string][]string{"dev2": nil}, map[string]int64{"dev2/temp": 1}},
		"dev1 and dev2":   {map[string][]string{"dev1": {"rpm"}, "dev2": nil}, map[string]int64{"dev1/rpm": 1, "dev2/temp": 1}},
		"unknown devices": {map[string][]string{"dev9": nil}, map[string]int64{}},
	}
	clients := map[string]*client{}
	for name, w := range cases {
		c, err := h.attach(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for dev, ms := range w.subs {
			if err := h.subscribe(ctx, c, dev, ms); err != nil {
				t.Fatal(err)
			}
		}
		clients[name] = c
	}
	now := time.Now().UnixMilli() + 1000 // after every seam
	h.Publish(batch("dev1", 1, rd(now, "temp", 21.5), rd(now, "rpm", 900)))
	h.Publish(batch("dev2", 1, rd(now, "temp", 19)))
	h.Publish(batch("dev3", 1, rd(now, "temp", 1)))

	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			c := clients[name]
			got := map[string]int64{}
			subscribed := 0
			deadline := time.After(2 * time.Second)
			for len(got) < len(w.got) || subscribed < len(w.subs) {
				select {
				case b := <-c.out:
					m := decode(t, b)
					if m.Type == "subscribed" {
						subscribed++
						if len(m.Updates) != 0 {
							t.Fatal("subscribed carries updates")
						}
					}
					for k, v := range updatesOf([]liveMsg{m}) {
						got[k] += v
					}
				case <-deadline:
					t.Fatalf("got %v (subscribed %d), want %v", got, subscribed, w.got)
				}
			}
			time.Sleep(50 * time.Millisecond) // nothing more may come
			for k, v := range updatesOf(drain(t, c)) {
				got[k] += v
			}
			if len(got) != len(w.got) {
				t.Fatalf("got %v, want %v", got, w.got)
			}
			for k, v := range w.got {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, w.got)
				}
			}
		})
	}
	if n := h.clientCount(); n != len(cases) {
		t.Fatalf("clientCount %d, want %d", n, len(cases))
	}
	for _, c := range clients {
		h.detach(c, reasonClient)
	}
	if n := h.clientCount(); n != 0 {
		t.Fatalf("clientCount after detach %d", n)
	}
}

// TestCoalescing: the first reading of a quiet series goes out at once;
// readings inside the interval become one update keeping min, max, last and
// count, so a spike shows.
func TestCoalescing(t *testing.T) {
	h, clk := testHub(t, func(c *Config) { c.MaxUpdatesPerSecond = 10 })
	c := h.newClientSync(t, map[string][]string{"d": nil})
	if m := drain(t, c); len(m) != 1 || m[0].Type != "subscribed" {
		t.Fatalf("want subscribed first, got %+v", m)
	}
	t0 := clk.now().UnixMilli()

	h.handle(hubItem{batch: batch("d", 1, rd(t0, "temp", 20))})
	h.flushDirty(clk.now())
	msgs := drain(t, c)
	if len(msgs) != 1 || len(msgs[0].Updates) != 1 || msgs[0].Updates[0].Count != 1 || msgs[0].Updates[0].Last != 20 {
		t.Fatalf("first reading not sent at once: %+v", msgs)
	}

	clk.add(10 * time.Millisecond)
	h.handle(hubItem{batch: batch("d", 2, rd(t0+10, "temp", 21), rd(t0+20, "temp", 95), rd(t0+30, "temp", 19))})
	h.handle(hubItem{batch: batch("d", 3, rd(t0+40, "temp", 22))})
	h.flushDirty(clk.now())
	if msgs := drain(t, c); len(msgs) != 0 {
		t.Fatalf("sent before the interval passed: %+v", msgs)
	}
	clk.add(50 * time.Millisecond)
	h.flushDirty(clk.now())
	if msgs := drain(t, c); len(msgs) != 0 {
		t.Fatalf("sent before the interval passed: %+v", msgs)
	}
	clk.add(40 * time.Millisecond) // 100 ms since the last update
	h.flushDirty(clk.now())
	msgs = drain(t, c)
	if len(msgs) != 1 || len(msgs[0].Updates) != 1 {
		t.Fatalf("want one coalesced update, got %+v", msgs)
	}
	u := msgs[0].Updates[0]
	if u.Count != 4 || u.Min != 19 || u.Max != 95 || u.Last != 22 || u.T0 != t0+10 || u.T != t0+40 {
		t.Fatalf("coalesced update %+v", u)
	}

	// An out-of-order reading does not move T or Last backwards.
	clk.add(200 * time.Millisecond)
	h.handle(hubItem{batch: batch("d", 4, rd(t0+100, "temp", 1), rd(t0+50, "temp", 7))})
	h.flushDirty(clk.now())
	u = drain(t, c)[0].Updates[0]
	if u.T != t0+100 || u.Last != 1 || u.T0 != t0+50 || u.Min != 1 || u.Max != 7 {
		t.Fatalf("out-of-order window %+v", u)
	}
}

// TestUpdatesAtTheCapKeepTheirSlot: a device sending exactly at the cap,
// its readings arriving with a little jitter around their slots, gets every
// reading shown on its own and at once: a reading may be a flush tick early,
// and the series' slot advances by one interval instead of to the flush
// time, so lateness never accumulates until two readings merge (what the
// send → browser benchmark found). The rate stays at the cap.
func TestUpdatesAtTheCapKeepTheirSlot(t *testing.T) {
	h, clk := testHub(t, func(c *Config) { c.MaxUpdatesPerSecond = 10 })
	c := h.newClientSync(t, map[string][]string{"d": nil})
	drain(t, c)
	start := clk.now()
	t0 := start.UnixMilli()
	for i := range 30 {
		// Every 100 ms, ±2 ms of jitter.
		jitter := time.Duration((i%5)-2) * time.Millisecond
		clk.set(start.Add(time.Duration(i)*100*time.Millisecond + jitter))
		h.handle(hubItem{batch: batch("d", uint64(i+1), rd(t0+int64(i*100), "temp", float64(i)))})
		h.flushDirty(clk.now()) // Run flushes right after handling its inbox
		msgs := drain(t, c)
		if len(msgs) != 1 || len(msgs[0].Updates) != 1 || msgs[0].Updates[0].Count != 1 {
			t.Fatalf("reading %d not shown on its own at once: %+v", i, msgs)
		}
	}
	// Faster than the cap, readings coalesce: 10 more within 100 ms make
	// at most two updates.
	base := clk.now()
	updates := 0
	for i := range 10 {
		clk.set(base.Add(time.Duration(i+1) * 10 * time.Millisecond))
		h.handle(hubItem{batch: batch("d", uint64(100+i), rd(t0+5000+int64(i), "temp", 1))})
		h.flushDirty(clk.now())
		for _, m := range drain(t, c) {
			updates += len(m.Updates)
		}
	}
	if updates > 2 {
		t.Fatalf("%d updates for 10 readings within 100 ms at a cap of 10/s", updates)
	}
}

// TestSlowClient: a client that does not read is first downsampled (its
// windows keep coalescing, nothing is lost from min/max/count), then dropped
// after slowClientGrace with the reason counted. Publish never blocks.
func TestSlowClient(t *testing.T) {
	h, clk := testHub(t, func(c *Config) { c.ClientQueue = 4 })
	slow := h.newClientSync(t, map[string][]string{"d": nil})
	fast := h.newClientSync(t, map[string][]string{"d": nil})
	drain(t, fast)

	var seq uint64
	var fastGot int64
	step := func(d time.Duration) {
		seq++
		clk.add(d)
		h.handle(hubItem{batch: batch("d", seq, rd(clk.now().UnixMilli(), "temp", float64(seq)))})
		h.flushDirty(clk.now())
		fastGot += updatesOf(drain(t, fast))["d/temp"]
	}
	// Queue of 4: "subscribed" + 3 updates fill it (past half full the
	// client is downsampled to one update per second per series).
	for i := 0; i < 3; i++ {
		step(1100 * time.Millisecond)
	}
	if len(slow.out) != 4 {
		t.Fatalf("slow queue %d, want full (4)", len(slow.out))
	}
	if got := counterValue(t, h.m.downsampled); got != 1 {
		t.Fatalf("downsampled counter %v, want 1", got)
	}
	if !slow.downsampled {
		t.Fatal("slow client not downsampled")
	}
	// From here on the slow client's window absorbs every reading.
	for i := 0; i < 20; i++ {
		step(200 * time.Millisecond)
	}
	if w := slow.windows[seriesKey{"d", "temp"}]; w == nil || w.Count != 20 || w.Max != float64(seq) {
		t.Fatalf("slow client's window %+v, want 20 readings coalesced", w)
	}
	select {
	case <-slow.done:
		t.Fatal("dropped before slowClientGrace")
	default:
	}
	// The fast client saw every step, unaffected.
	if fastGot != 23 || fast.downsampled {
		t.Fatalf("fast client got %d readings (downsampled %v), want 23", fastGot, fast.downsampled)
	}
	for i := 0; i < int(slowClientGrace/(200*time.Millisecond))+1; i++ {
		step(200 * time.Millisecond)
	}
	select {
	case <-slow.done:
	default:
		t.Fatal("slow client not dropped after the grace period")
	}
	if slow.closeReason() != reasonSlow {
		t.Fatalf("reason %q", slow.closeReason())
	}
	if got := counterValue(t, h.m.disconnects.WithLabelValues(reasonSlow)); got != 1 {
		t.Fatalf("slow_consumer disconnects %v, want 1", got)
	}
	if _, ok := h.clients[slow]; ok {
		t.Fatal("dropped client still attached")
	}
	if _, ok := h.byDevice["d"][slow]; ok {
		t.Fatal("dropped client still subscribed")
	}

	// A hub that is not running at all: Publish returns at once and counts.
	start := time.Now()
	for i := 0; i < inboxSize+100; i++ {
		h.Publish(batch("d", uint64(i), rd(0, "temp", 1)))
	}
	if time.Since(start) > time.Second {
		t.Fatal("Publish blocked")
	}
	if got := counterValue(t, h.m.publishDropped.WithLabelValues("hub_full")); got != 100 {
		t.Fatalf("hub_full drops %v, want 100", got)
	}
}

// TestDownsampleRecovers: a client that catches up goes back to the full
// rate.
func TestDownsampleRecovers(t *testing.T) {
	h, clk := testHub(t, func(c *Config) { c.ClientQueue = 8 })
	c := h.newClientSync(t, map[string][]string{"d": nil})
	for i := 1; i <= 5; i++ {
		clk.add(time.Second)
		h.handle(hubItem{batch: batch("d", uint64(i), rd(clk.now().UnixMilli(), "temp", 1))})
		h.flushDirty(clk.now())
	}
	if !c.downsampled {
		t.Fatal("not downsampled at 6/8")
	}
	drain(t, c)
	clk.add(time.Second)
	h.handle(hubItem{batch: batch("d", 9, rd(clk.now().UnixMilli(), "temp", 1))})
	h.flushDirty(clk.now())
	if c.downsampled {
		t.Fatal("still downsampled after catching up")
	}
}

// TestResumeSeam: "subscribed" carries the seam and precedes every update;
// readings older than the seam are left to history, so a page that loads
// [from, seam) from /ui/api/series and appends live updates has neither a
// gap nor a duplicate at the seam.
func TestResumeSeam(t *testing.T) {
	h, clk := testHub(t, nil)
	// Readings that committed before the page subscribed: history has them.
	before := clk.now().UnixMilli()
	h.handle(hubItem{batch: batch("d", 1, rd(before-5, "temp", 1), rd(before-1, "temp", 2))})

	clk.add(time.Second)
	c := h.newClientSync(t, map[string][]string{"d": {"temp"}})
	msgs := drain(t, c)
	if len(msgs) != 1 || msgs[0].Type != "subscribed" {
		t.Fatalf("want subscribed, got %+v", msgs)
	}
	seam := msgs[0].Seam
	if seam != clk.now().UnixMilli() {
		t.Fatalf("seam %d, want the subscription time %d", seam, clk.now().UnixMilli())
	}
	if l := msgs[0].Latest["temp"]; l.T != before-1 || l.V != 2 {
		t.Fatalf("subscribed.latest %+v", msgs[0].Latest)
	}

	// A late batch carries one reading from before the seam (history's:
	// the page's history request, made after this, returns it) and readings
	// at and after it (live's).
	h.handle(hubItem{batch: batch("d", 2, rd(seam-1, "temp", 3), rd(seam, "temp", 4), rd(seam+1, "temp", 5))})
	h.flushDirty(clk.now())
	msgs = drain(t, c)
	if len(msgs) != 1 || len(msgs[0].Updates) != 1 {
		t.Fatalf("want one update, got %+v", msgs)
	}
	u := msgs[0].Updates[0]
	if u.T0 != seam || u.T != seam+1 || u.Count != 2 || u.Min != 4 {
		t.Fatalf("update crosses the seam: %+v", u)
	}

	// Reconnect: a new subscription gets a new seam; readings between the
	// old last point and the new seam come from history, not live.
	clk.add(5 * time.Second)
	h.handle(hubItem{batch: batch("d", 3, rd(clk.now().UnixMilli()-2000, "temp", 6))}) // while disconnected
	h.forget(c)
	c2 := h.newClientSync(t, map[string][]string{"d": {"temp"}})
	seam2 := drain(t, c2)[0].Seam
	h.handle(hubItem{batch: batch("d", 4, rd(seam2-2000, "temp", 6), rd(seam2+10, "temp", 7))}) // a resend of the gap's reading, and a new one
	h.flushDirty(clk.now())
	u = drain(t, c2)[0].Updates[0]
	if u.Count != 1 || u.T != seam2+10 || u.Last != 7 {
		t.Fatalf("after resume: %+v", u)
	}
}

func TestPresenceAndFleet(t *testing.T) {
	h, clk := testHub(t, nil)
	c := h.newClientSync(t, map[string][]string{"d": nil})
	drain(t, c)
	h.handle(hubItem{presence: telemetry.Presence{Device: "d", Online: true, At: clk.now().UnixMilli()}, isPres: true})
	msgs := drain(t, c)
	if len(msgs) != 1 || msgs[0].Type != "presence" || !msgs[0].Online {
		t.Fatalf("presence: %+v", msgs)
	}
	for i := 0; i < 10; i++ {
		clk.add(time.Second)
		h.handle(hubItem{batch: batch("d", uint64(i+1), rd(clk.now().UnixMilli(), "a", 1), rd(clk.now().UnixMilli(), "b", float64(i)))})
		h.fleet.tick(clk.now())
	}
	st, ok := h.fleet.stats("d")
	if !ok || !st.Online || st.Latest["b"].V != 9 || st.LastSeen != clk.now().UnixMilli() {
		t.Fatalf("stats %+v", st)
	}
	// EWMA of 2 readings/s after 10 s with tau 5 s: 2*(1-e^-2) ≈ 1.73.
	if st.Rate < 1.6 || st.Rate > 1.9 {
		t.Fatalf("rate %v, want ≈1.73", st.Rate)
	}
	h.handle(hubItem{presence: telemetry.Presence{Device: "d", Online: false, At: clk.now().UnixMilli()}, isPres: true})
	if st, _ := h.fleet.stats("d"); st.Online {
		t.Fatal("still online")
	}
	// A device seen only through batches (HTTP fallback, other node) is
	// online while recent.
	h.handle(hubItem{batch: batch("http-dev", 1, rd(1, "x", 1))})
	if st, _ := h.fleet.stats("http-dev"); !st.Online {
		t.Fatal("recent device without presence not online")
	}
	clk.add(onlineWindow + time.Second)
	if st, _ := h.fleet.stats("http-dev"); st.Online {
		t.Fatal("stale device without presence online")
	}
}

func TestSubscriptionLimits(t *testing.T) {
	h, _ := testHub(t, nil)
	c := h.newClientSync(t, nil)
	for i := 0; i < maxSubscriptions; i++ {
		if err := h.control(ctrlMsg{kind: ctrlSubscribe, c: c, device: "d" + string(rune('a'+i%26)) + string(rune('a'+i/26))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.control(ctrlMsg{kind: ctrlSubscribe, c: c, device: "one-too-many"}); err != errTooManySubscriptions {
		t.Fatalf("got %v", err)
	}
	// Re-subscribing to a device already held is a replacement, allowed.
	if err := h.control(ctrlMsg{kind: ctrlSubscribe, c: c, device: "daa", metrics: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	h.unsub(c, "daa")
	if _, ok := h.byDevice["daa"]; ok {
		t.Fatal("index keeps an empty device set")
	}
}

func TestJSONEncoding(t *testing.T) {
	cases := map[string][]byte{
		"update":     appendUpdate(nil, &Update{Device: "a\"b", Metric: "m<1>", T: 2, T0: 1, Min: -1.5, Max: 1e300, Last: 0, Count: 3}),
		"subscribed": appendSubscribed(nil, "d", []string{"x", "y"}, 5, map[string]Latest{"x": {1, 2}}),
		"presence":   appendPresence(nil, telemetry.Presence{Device: "d", Online: true, At: 9}),
		"error":      appendError(nil, "bad \n thing"),
		"hello":      appendHello(nil, 10),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var v map[string]any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
		})
	}
	var v map[string]any
	_ = json.Unmarshal(appendUpdate(nil, &Update{Device: "a\"b", Metric: "m"}), &v)
	if v["device"] != "a\"b" {
		t.Fatalf("escaping: %v", v)
	}
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// BenchmarkHubPublish is the hub's share of the committed-batch path: one
// op is one 50-reading batch of one of 1,000 devices handed to Publish and
// handled by the hub goroutine, with no live client, and with one client
// subscribed to one device (the others' batches are nobody's).
// cpu-ns/batch is the whole process's CPU per batch.
//
//	go test -run '^$' -bench HubPublish -benchtime 200000x -count 5 ./dashboard/
func BenchmarkHubPublish(b *testing.B) {
	for _, watched := range []bool{false, true} {
		name := "nobody"
		if watched {
			name = "one-client-one-device"
		}
		b.Run(name, func(b *testing.B) {
			cfg := DefaultConfig()
			h := newHub(cfg, newMetrics(nil), slog.New(slog.DiscardHandler), time.Now)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = h.Run(ctx) }()
			defer func() { cancel(); <-done }()
			if watched {
				c, err := h.attach(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := h.subscribe(ctx, c, "dev-0000", nil); err != nil {
					b.Fatal(err)
				}
				go func() { // the transport's writer
					for {
						select {
						case <-c.out:
						case <-c.done:
							return
						}
					}
				}()
			}
			batches := make([]telemetry.Batch, 1000)
			for i := range batches {
				rs := make([]telemetry.Reading, 50)
				for j := range rs {
					rs[j] = telemetry.Reading{Time: time.Now().UnixMilli(), Metric: "m" + strconv.Itoa(j%5), Value: float64(j)}
				}
				batches[i] = telemetry.Batch{Device: fmt.Sprintf("dev-%04d", i), Seq: 1, Readings: rs}
			}
			runtime.GC()
			cpu0 := cpuTime()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.Publish(batches[i%len(batches)])
				for len(h.inbox) > inboxSize/2 {
					time.Sleep(50 * time.Microsecond) // measure the work, not hub_full drops
				}
			}
			for len(h.inbox) > 0 {
				time.Sleep(time.Millisecond)
			}
			_ = h.call(ctx, ctrlMsg{kind: ctrlUnsubscribe, c: &client{subs: map[string]*subscription{}}}) // a round trip: the last batch is handled
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/batch")
			if d := counterValue(b, h.m.publishDropped.WithLabelValues("hub_full")); d > 0 {
				b.Logf("%v batches dropped (hub_full)", d)
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
