package meridian_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"
	"go.uber.org/goleak"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// Every goroutine a Client or test server starts must be gone at the end
// (net/http's idle keep-alive connections excepted).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

// acks collects a client's acks.
type acks struct {
	mu   sync.Mutex
	got  []meridian.Ack
	more chan struct{}
}

func newAcks() *acks { return &acks{more: make(chan struct{}, 1)} }

func (a *acks) on(x meridian.Ack) {
	a.mu.Lock()
	a.got = append(a.got, x)
	a.mu.Unlock()
	select {
	case a.more <- struct{}{}:
	default:
	}
}

func (a *acks) snapshot() []meridian.Ack {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]meridian.Ack(nil), a.got...)
}

// run starts c.Run and returns a stop function that waits for it.
func run(t *testing.T, c *meridian.Client) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !ok() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readings(metric string, t0 time.Time, n int) []meridian.Reading {
	rs := make([]meridian.Reading, n)
	for i := range rs {
		rs[i] = meridian.Reading{Time: t0.Add(time.Duration(i) * time.Millisecond), Metric: metric, Value: float64(i)}
	}
	return rs
}

func fastConfig(url, device string) meridian.Config {
	return meridian.Config{
		URL: url, Token: "tok-" + device,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		TryLater: 100 * time.Millisecond, Logger: testLogger(),
	}
}

// Both transports: batches sent are acked and stored once; a reading the
// server rejects is reported in the ack and not stored.
func TestClientSendsAndIsAcked(t *testing.T) {
	srv := newPostgresServer(t, nil)
	for _, tr := range []meridian.Transport{meridian.WebSocket, meridian.HTTP} {
		t.Run(string(tr), func(t *testing.T) {
			dev := "send-" + string(tr)
			a := newAcks()
			cfg := fastConfig(srv.url, dev)
			cfg.Transport, cfg.OnAck = tr, a.on
			c, err := meridian.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now().Add(-time.Minute)
			// Queued before Run: they wait for hello to get their seqs.
			for i := range 3 {
				if err := c.Send(context.Background(), readings("temp", t0.Add(time.Duration(i)*time.Second), 10)); err != nil {
					t.Fatal(err)
				}
			}
			stop := run(t, c)
			bad := []meridian.Reading{{Time: t0, Metric: "bad metric", Value: 1}, {Metric: "door", Value: 1}}
			if err := c.Send(context.Background(), bad); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "4 acks", 10*time.Second, func() bool { return len(a.snapshot()) == 4 })
			got := a.snapshot()
			for i, x := range got {
				if x.Seq != uint64(i+1) || x.Duplicate {
					t.Fatalf("ack %d: %+v", i, x)
				}
			}
			if last := got[3]; last.Accepted != 1 || last.Rejected != 1 || len(last.Errors) != 1 {
				t.Fatalf("partial ack: %+v", last)
			}
			if c.Pending() != 0 {
				t.Fatalf("pending %d after all acks", c.Pending())
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if n := srv.count(t, fmt.Sprintf("device = '%s'", dev)); n != 31 {
				t.Fatalf("stored %d readings, want 31", n)
			}
		})
	}
}

// Connections cut mid-stream: the client resends what was not acked, and
// the store holds every reading exactly once.
func TestClientResendsAfterCuts(t *testing.T) {
	srv := newPostgresServer(t, nil)
	for _, tr := range []meridian.Transport{meridian.WebSocket, meridian.HTTP} {
		t.Run(string(tr), func(t *testing.T) { resendsAfterCuts(t, srv, tr) })
	}
}

func resendsAfterCuts(t *testing.T, srv *server, tr meridian.Transport) {
	proxy := meridiantest.NewProxy(t, strings.TrimPrefix(srv.url, "http://"))
	a := newAcks()
	dev := "cuts-" + string(tr)
	cfg := fastConfig("http://"+proxy.Addr(), dev)
	cfg.OnAck = a.on
	cfg.Transport = tr
	cfg.HTTPClient = &http.Client{Transport: &http.Transport{}} // its own pool: cuts must reach it
	cfg.RingSize = 8
	c, err := meridian.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	t0 := time.Now().Add(-time.Hour)
	const batches, per = 60, 50
	for i := range batches {
		if err := c.Send(context.Background(), readings(fmt.Sprintf("m%d", i), t0, per)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 5 {
			proxy.Cut()
		}
	}
	waitFor(t, "everything acked", 30*time.Second, func() bool { return c.Pending() == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := srv.count(t, fmt.Sprintf("device = '%s'", dev)); n != batches*per {
		t.Fatalf("stored %d readings, want %d", n, batches*per)
	}
	var dups int
	for _, x := range a.snapshot() {
		if x.Duplicate {
			dups++
		}
	}
	t.Logf("%d acks, %d duplicates (resends of batches stored before a cut)", len(a.snapshot()), dups)
}

// Send splits readings to the max_batch the server announced in hello.
func TestClientSplitsToMaxBatch(t *testing.T) {
	srv := newPostgresServer(t, func(c *ingest.Config) { c.MaxBatch = 5 })
	a := newAcks()
	cfg := fastConfig(srv.url, "split")
	cfg.OnAck = a.on
	c, err := meridian.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	waitFor(t, "online", 5*time.Second, func() bool { return srv.srv.Online("split") }) // hello read
	if err := c.Send(context.Background(), readings("m", time.Now().Add(-time.Minute), 12)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "acks", 10*time.Second, func() bool { return c.Pending() == 0 })
	_ = stop()
	var accepted []int
	for _, x := range a.snapshot() {
		accepted = append(accepted, x.Accepted)
	}
	if fmt.Sprint(accepted) != "[5 5 2]" {
		t.Fatalf("batches of %v readings, want [5 5 2]", accepted)
	}
}

// The ring is bounded: with no server, Send blocks until ctx ends, or
// returns ErrFull at once with ErrorWhenFull.
func TestClientRingFull(t *testing.T) {
	for _, errWhenFull := range []bool{false, true} {
		t.Run(fmt.Sprint("ErrorWhenFull=", errWhenFull), func(t *testing.T) {
			cfg := fastConfig("http://127.0.0.1:1", "full") // nothing listens there
			cfg.RingSize, cfg.ErrorWhenFull = 2, errWhenFull
			c, err := meridian.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rs := readings("x", time.Now(), 1)
			for range 2 {
				if err := c.Send(context.Background(), rs); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			err = c.Send(ctx, rs)
			want := context.DeadlineExceeded
			if errWhenFull {
				want = meridian.ErrFull
			}
			if !errors.Is(err, want) {
				t.Fatalf("Send on a full ring: %v, want %v", err, want)
			}
		})
	}
}

// With a StateFile the ring and the seq counter survive the process:
// batches queued while the server was unreachable are sent by the next
// Client on the same file.
func TestClientStateFileSurvivesRestart(t *testing.T) {
	srv := newPostgresServer(t, nil)
	state := filepath.Join(t.TempDir(), "dev.ring")
	online := fastConfig(srv.url, "persist")
	online.StateFile = state
	offline := online
	offline.URL = "http://127.0.0.1:1" // nothing listens there

	// First life, online: learns its seq counter from hello.
	c0, err := meridian.New(online)
	if err != nil {
		t.Fatal(err)
	}
	stop0 := run(t, c0)
	if err := c0.Send(context.Background(), readings("boot", time.Now().Add(-time.Minute), 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first ack", 10*time.Second, func() bool { return c0.Pending() == 0 })
	if err := stop0(); err != nil {
		t.Fatal(err)
	}
	// Second life, offline: batches go to the ring and the file.
	c1, err := meridian.New(offline)
	if err != nil {
		t.Fatal(err)
	}
	stop1 := run(t, c1)
	t0 := time.Now().Add(-time.Minute)
	for i := range 3 {
		if err := c1.Send(context.Background(), readings("offline", t0.Add(time.Duration(i)*time.Second), 5)); err != nil {
			t.Fatal(err)
		}
	}
	if err := stop1(); err != nil {
		t.Fatal(err)
	}
	// Third life, online again: resends what the second one kept.
	c2, err := meridian.New(online)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Pending() != 3 {
		t.Fatalf("restored %d batches, want 3", c2.Pending())
	}
	stop2 := run(t, c2)
	waitFor(t, "restored batches acked", 10*time.Second, func() bool { return c2.Pending() == 0 })
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if n := srv.count(t, "device = 'persist'"); n != 16 {
		t.Fatalf("stored %d readings, want 16", n)
	}
}

// A wrong token (HTTP 401) and a policy close (1008) end Run with a
// *RefusedError instead of reconnecting forever.
func TestClientRefused(t *testing.T) {
	srv := newPostgresServer(t, nil)
	t.Run("bad token", func(t *testing.T) {
		for _, tr := range []meridian.Transport{meridian.WebSocket, meridian.HTTP} {
			cfg := fastConfig(srv.url, "x")
			cfg.Token, cfg.Transport = "nonsense", tr
			c, err := meridian.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Run(context.Background())
			var re *meridian.RefusedError
			if !errors.As(err, &re) || re.Code != http.StatusUnauthorized {
				t.Fatalf("%s: Run = %v, want a RefusedError 401", tr, err)
			}
		}
	})
	t.Run("kicked", func(t *testing.T) {
		c, err := meridian.New(fastConfig(srv.url, "kicked"))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Run(context.Background()) }()
		waitFor(t, "online", 5*time.Second, func() bool { return srv.srv.Online("kicked") })
		srv.srv.Kick("kicked", "device disabled")
		select {
		case err := <-done:
			var re *meridian.RefusedError
			if !errors.As(err, &re) || re.Code != 1008 || re.ErrorCode != "policy" || re.Reason != "device disabled" {
				t.Fatalf("Run = %#v, want a RefusedError 1008 policy", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not stop after a 1008")
		}
	})
}

// A second connection with the same token takes the session over: the
// first Client's Run ends with 1008 session_taken_over, and does not fight
// back (docs/protocol.md 8).
func TestClientTakenOver(t *testing.T) {
	srv := newPostgresServer(t, nil)
	first, err := meridian.New(fastConfig(srv.url, "twin"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Run(context.Background()) }()
	waitFor(t, "online", 5*time.Second, func() bool { return srv.srv.Online("twin") })
	second, err := meridian.New(fastConfig(srv.url, "twin"))
	if err != nil {
		t.Fatal(err)
	}
	run(t, second)
	select {
	case err := <-done:
		var re *meridian.RefusedError
		if !errors.As(err, &re) || re.Code != 1008 || re.ErrorCode != "session_taken_over" {
			t.Fatalf("first Run = %v, want a RefusedError 1008 session_taken_over", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first client kept running")
	}
}

// Commands reach OnCommand and its result reaches the server.
func TestClientCommands(t *testing.T) {
	results := make(chan telemetry.CommandResult, 1)
	srv := newPostgresServer(t, nil, func(o *ingest.Options) {
		o.Results = func(r telemetry.CommandResult) { results <- r }
	})
	cfg := fastConfig(srv.url, "cmd")
	cfg.OnCommand = func(_ context.Context, c meridian.Command) meridian.Result {
		return meridian.Result{OK: c.Name == "reboot", Payload: msgp.AppendString(nil, "rebooting")}
	}
	c, err := meridian.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	waitFor(t, "online", 5*time.Second, func() bool { return srv.srv.Online("cmd") })
	if err := srv.srv.SendCommand("cmd", telemetry.Command{ID: "c-1", Name: "reboot"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-results:
		s, _, _ := msgp.ReadStringBytes(r.Payload)
		if r.ID != "c-1" || !r.OK || s != "rebooting" {
			t.Fatalf("result %+v (%q)", r, s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no result")
	}
}
