package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
)

// Fleet runs many simulated devices from one process.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	stats   *stats
	ledger  *Ledger
	devices []*device
	wsURL   string // ws(s)://host/v1/device
	baseURL string // http(s)://host
	client  *http.Client
	// bufs recycles frame-encoding buffers across devices, so an idle device
	// holds no write buffer.
	bufs sync.Pool

	generating atomic.Bool
	quota      atomic.Int64
	genOnce    sync.Once
	genStop    chan struct{}
	unacked    atomic.Int64
	httpCount  int
	progress   io.Writer
	ran        atomic.Bool
}

// New builds a fleet. tokens maps every device id of cfg.DeviceIDs() to its
// device token (see Provision and LoadTokens). progress receives the live
// line every cfg.ProgressEvery (nil: none).
func New(cfg Config, tokens map[string]string, progress io.Writer) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	profiles, _ := ResolveProfiles(cfg.Profiles)
	f := &Fleet{
		cfg:      cfg,
		log:      cfg.Logger,
		stats:    newStats(),
		baseURL:  strings.TrimRight(cfg.URL, "/"),
		genStop:  make(chan struct{}),
		progress: progress,
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.wsURL = "ws" + strings.TrimPrefix(f.baseURL, "http") + "/v1/device"
	f.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	if cfg.Verify {
		f.ledger = NewLedger()
	}
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
	}
	var missing []string
	for i, id := range cfg.DeviceIDs() {
		tok, ok := tokens[id]
		if !ok || tok == "" {
			if len(missing) < 3 {
				missing = append(missing, id)
			}
			continue
		}
		d, err := f.newDevice(i, id, tok, profiles)
		if err != nil {
			return nil, err
		}
		f.devices = append(f.devices, d)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no token for %d devices (first: %s): provision them or load a tokens file",
			cfg.Devices-len(f.devices), strings.Join(missing, ", "))
	}
	f.client = cfg.HTTPClient
	if f.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = max(f.httpCount, 100)
		tr.MaxIdleConnsPerHost = max(f.httpCount, 2)
		// A batch is answered after its commit; a storage outage makes that
		// wait, so the timeout is generous and the device then resends.
		f.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return f, nil
}

func (f *Fleet) newDevice(i int, id, token string, profiles []Profile) (*device, error) {
	cfg := &f.cfg
	h := fnv.New64a()
	h.Write([]byte(id))
	seed := cfg.Seed ^ h.Sum64()
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	// The device's profile mix: MixMin..MixMax distinct profiles.
	k := cfg.MixMin + rng.IntN(cfg.MixMax-cfg.MixMin+1)
	k = min(k, len(profiles))
	perm := rng.Perm(len(profiles))
	mine := make([]Profile, 0, k)
	batch := 1
	for _, p := range perm[:k] {
		mine = append(mine, profiles[p])
		batch = max(batch, profiles[p].BatchSize)
	}
	if cfg.BatchSize > 0 {
		batch = cfg.BatchSize
	}
	d := &device{
		f: f, id: id, token: token, rng: rng,
		batchSize: batch,
		ring:      meridian.NewRing[batchMeta](cfg.Ring),
		bo:        meridian.Backoff{Base: cfg.BackoffBase, Max: cfg.BackoffMax},
		useHTTP:   rng.Float64() < cfg.HTTPShare,
		invalid:   rng.Float64() < cfg.Chaos.InvalidShare,
		malformed: rng.Float64() < cfg.Chaos.MalformedShare,
	}
	if cfg.Chaos.ClockSkew > 0 {
		d.skew = rng.Int64N(2*cfg.Chaos.ClockSkew.Milliseconds()+1) - cfg.Chaos.ClockSkew.Milliseconds()
	}
	d.sig = NewSignals(mine, seed, time.Now().UnixMilli()+d.skew, cfg.Speed)
	if d.useHTTP {
		f.httpCount++
	}
	if f.ledger != nil {
		d.led = f.ledger.Device(id)
	}
	if cfg.StateDir != "" {
		rf, recs, err := meridian.OpenRingFile(filepath.Join(cfg.StateDir, id+".ring"), cfg.Ring)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", id, err)
		}
		d.file = rf
		for _, r := range recs {
			// sent by the previous run: resends, not new readings
			d.ring.Push(entry{Seq: r.Seq, Frame: r.Frame, Meta: batchMeta{sends: 1}})
			f.stats.inRing.Add(1)
		}
		// The persisted ring carries the counter: continue after it.
		if d.ring.Len() > 0 {
			d.nextSeq = d.ring.Last() + 1
		}
	}
	return d, nil
}

// Ledger is the verification ledger (nil unless cfg.Verify).
func (f *Fleet) Ledger() *Ledger { return f.ledger }

// take reserves n readings of the fleet's budget (cfg.TotalReadings).
func (f *Fleet) take(n int) bool {
	if f.cfg.TotalReadings <= 0 {
		return true
	}
	left := f.quota.Add(-int64(n))
	if left <= 0 {
		f.stopGenerating()
	}
	return left >= 0
}

func (f *Fleet) stopGenerating() {
	f.genOnce.Do(func() {
		f.generating.Store(false)
		close(f.genStop)
	})
}

// wait sleeps for d or until ctx ends; false when ctx ended.
func (f *Fleet) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Run starts the devices (at cfg.Ramp per second), generates for
// cfg.Duration or cfg.TotalReadings, then lets devices drain their rings for
// up to cfg.Drain, and returns the report. Cancelling ctx ends generation
// early (the drain still runs: a second cancellation is the caller's
// business). Run may be called once.
func (f *Fleet) Run(ctx context.Context) (Report, error) {
	if !f.ran.CompareAndSwap(false, true) {
		return Report{}, errors.New("fleet: Run called twice")
	}
	start := time.Now()
	f.generating.Store(true)
	f.quota.Store(f.cfg.TotalReadings)
	// Devices run on a context of their own: cancelling ctx only ends
	// generation, and devCtx is cancelled once the drain time is up.
	devCtx, cancelDevs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDevs()

	stopProgress := f.startProgress()
	allDone := f.launch(devCtx, start)
	f.supervise(ctx, allDone, cancelDevs)
	stopProgress()
	return f.stats.report(len(f.devices), f.httpCount, time.Since(start), f.unacked.Load()), nil
}

// startProgress starts the live progress line (if configured); the
// returned func stops it and waits until it stopped.
func (f *Fleet) startProgress() (stop func()) {
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	if f.progress != nil && f.cfg.ProgressEvery > 0 {
		go func() {
			defer close(progressDone)
			f.stats.progress(f.progress, f.cfg.ProgressEvery, len(f.devices), stopProgress)
		}()
	} else {
		close(progressDone)
	}
	return func() {
		close(stopProgress)
		<-progressDone
	}
}

// launch starts the devices' goroutines at cfg.Ramp per second from start,
// stopping early when generation ends or devCtx is cancelled. The returned
// channel is closed once launching ended and every launched device returned.
func (f *Fleet) launch(devCtx context.Context, start time.Time) (allDone <-chan struct{}) {
	var wg sync.WaitGroup
	launched := make(chan struct{})
	go func() {
		defer close(launched)
		for i, d := range f.devices {
			if f.cfg.Ramp > 0 {
				at := start.Add(time.Duration(float64(i) / f.cfg.Ramp * float64(time.Second)))
				if !f.wait(devCtx, time.Until(at)) {
					return
				}
			}
			if !f.generating.Load() {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.run(devCtx)
			}()
		}
	}()
	done := make(chan struct{})
	go func() {
		<-launched
		wg.Wait()
		close(done)
	}()
	return done
}

// supervise waits until every device returned. Generation ends at
// cfg.Duration, when ctx ends, or when the reading budget is spent; from
// then on devices drain their rings for up to cfg.Drain, after which
// cancelDevs stops them.
func (f *Fleet) supervise(ctx context.Context, allDone <-chan struct{}, cancelDevs context.CancelFunc) {
	var genTimer <-chan time.Time
	if f.cfg.Duration > 0 {
		t := time.NewTimer(f.cfg.Duration)
		defer t.Stop()
		genTimer = t.C
	}
	genStop, ctxDone := f.genStop, ctx.Done()
	var drain <-chan time.Time
	for {
		select {
		case <-allDone:
			return
		case <-genTimer:
			genTimer = nil
			f.stopGenerating()
		case <-ctxDone:
			ctxDone = nil
			f.stopGenerating()
		case <-genStop:
			genStop = nil
			t := time.NewTimer(f.cfg.Drain)
			defer t.Stop()
			drain = t.C
		case <-drain:
			drain = nil
			cancelDevs()
		}
	}
}

// run is the device's goroutine.
func (d *device) run(ctx context.Context) {
	now := time.Now()
	ch := &d.f.cfg.Chaos
	if !d.useHTTP {
		d.nextDisconnect = d.exp(now, ch.DisconnectEvery)
		d.nextStall = d.exp(now, ch.StallEvery)
	}
	d.nextReboot = d.exp(now, ch.RebootEvery)
	if d.malformed {
		d.nextMalformed = d.exp(now, ch.MalformedEvery)
	}
	if d.useHTTP {
		d.runHTTP(ctx)
	} else {
		d.runWS(ctx)
	}
	if d.conn != nil {
		_ = d.conn.Abort()
		d.conn = nil
	}
	d.f.unacked.Add(int64(d.ring.Len()))
	if d.file != nil {
		if err := d.file.Rewrite(meridian.Records(&d.ring)); err != nil {
			d.f.log.Warn("persist ring", "device", d.id, "err", err)
		}
	}
}

// Verify checks the ledger against the store (requires cfg.Verify).
func (f *Fleet) Verify(ctx context.Context, q QueryFunc) (VerifyResult, error) {
	if f.ledger == nil {
		return VerifyResult{}, errors.New("verify: the fleet ran without a ledger (Config.Verify)")
	}
	return Verify(ctx, q, f.ledger)
}
