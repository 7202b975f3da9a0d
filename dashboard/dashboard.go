package dashboard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// Authenticator checks an operator API key; (*devices.Service) fits. An
// invalid key's error has an `Unauthorized() bool` method returning true;
// any other error means the key could not be checked.
type Authenticator interface {
	AuthenticateOperator(ctx context.Context, key string) (storage.APIKey, error)
}

// Registry is the device registry as the pages read it; (*devices.Service)
// fits. Device's error wraps storage.ErrNotFound for an unknown id.
type Registry interface {
	ListDevices(ctx context.Context, labels map[string]string) ([]storage.Device, error)
	Device(ctx context.Context, id string) (storage.Device, []storage.Session, error)
}

// Commands delivers a command to a device wherever it is connected and waits
// up to wait for its result. A device that is offline or does not answer is
// reported in CommandResult.Error ("offline", "timeout"); err is for
// failures to even try.
type Commands interface {
	Send(ctx context.Context, device string, cmd telemetry.Command, wait time.Duration) (telemetry.CommandResult, error)
}

// SeriesFunc reads a device's metric history (the function behind
// GET /v1/series): points in [From, To), at most Points of them.
type SeriesFunc func(ctx context.Context, req storage.SeriesRequest) (storage.Series, error)

// Deps are the dashboard's collaborators, wired by cmd/meridian.
type Deps struct {
	// Auth and Registry are required.
	Auth     Authenticator
	Registry Registry
	// Series is required: the device page's range picker reads through it.
	Series SeriesFunc
	// Commands is optional; without it the command form is not shown.
	Commands Commands
	// Stats is optional: extra rows for the system page (storage mode,
	// broker status, ingest queue depth...). Called on every refresh of the
	// page (every 2 s per open system page), so it must be cheap; values
	// must encode as JSON.
	Stats func() map[string]any
	// Build names this server on the system page (version, commit, node).
	Build BuildInfo
	// Storage is optional: the backend, its mode and the database size for
	// the system page; asked at most every 30 s. An error is shown as
	// "storage unreachable".
	Storage func(ctx context.Context) (StorageInfo, error)
	// Gatherer is optional: the server's own Prometheus registry, sampled
	// every Config.HistoryInterval into the system page's 15-minute charts.
	// Without it the charts stay empty.
	Gatherer prometheus.Gatherer
	// Logger and Registerer are optional (nil discards / does not register).
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock; tests may replace it. Defaults to time.Now.
	Now func() time.Time
}

// Dashboard is the operator UI and the live feed. Build it with New, run
// Run, mount Handler; feed it with Publish and Presence.
type Dashboard struct {
	cfg      Config
	deps     Deps
	log      *slog.Logger
	now      func() time.Time
	auth     Authenticator
	hub      *Hub
	sessions *sessions
	origins  map[string]bool
	m        *metrics
	pages    *pages
	devCache deviceCache
	hist     *history
	started  time.Time

	storageCache storageCache
	live         liveEngine // /v1/live's connection engine (live.go)
}

// New checks cfg and deps and builds the dashboard.
func New(cfg Config, deps Deps) (*Dashboard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var missing []error
	if deps.Auth == nil {
		missing = append(missing, errors.New("dashboard: Deps.Auth is required"))
	}
	if deps.Registry == nil {
		missing = append(missing, errors.New("dashboard: Deps.Registry is required"))
	}
	if deps.Series == nil {
		missing = append(missing, errors.New("dashboard: Deps.Series is required"))
	}
	if err := errors.Join(missing...); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	p, err := loadPages()
	if err != nil {
		return nil, fmt.Errorf("dashboard: load templates: %w", err)
	}
	m := newMetrics(deps.Registerer)
	d := &Dashboard{
		cfg:      cfg,
		deps:     deps,
		log:      deps.Logger,
		now:      deps.Now,
		auth:     deps.Auth,
		hub:      newHub(cfg, m, deps.Logger, deps.Now),
		sessions: newSessions(cfg.SessionTTL, deps.Auth, deps.Now),
		origins:  make(map[string]bool),
		m:        m,
		pages:    p,
		hist:     newHistory(deps.Gatherer, cfg.HistoryInterval),
		started:  deps.Now(),
	}
	for _, o := range cfg.AllowedOrigins {
		n, _ := parseOrigin(o) // Validate checked it
		d.origins[n] = true
	}
	return d, nil
}

// Publish hands a committed batch to the live feed; it never blocks (wire it
// to ingest.Options.Committed and to the bridge's remote batches).
func (d *Dashboard) Publish(b telemetry.Batch) { d.hub.Publish(b) }

// Presence hands a device's online/offline change to the live feed; it
// never blocks (wire it to ingest.Options.Presence).
func (d *Dashboard) Presence(p telemetry.Presence) { d.hub.Presence(p) }

// Run runs the live hub and the session sweeper until ctx ends; live
// clients are then disconnected with 1001.
func (d *Dashboard) Run(ctx context.Context) error {
	done := make(chan struct{})
	histDone := make(chan struct{})
	go func() {
		defer close(histDone)
		d.hist.run(ctx, d.now)
	}()
	go func() {
		defer close(done)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				d.sessions.sweep()
			}
		}
	}()
	err := d.hub.Run(ctx)
	<-done
	<-histDone
	return err
}

// Handler serves the pages, assets, UI JSON and the live feed. Mount it at
// "/" after the API routes: it only answers "/", "/login", "/logout",
// "/assets/", "/ui/", "/v1/live" and "/v1/live/sse", and 404s anything else
// that reaches it.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.page(d.serveFleet))
	mux.HandleFunc("GET /login", d.serveLoginForm)
	mux.HandleFunc("POST /login", d.serveLogin)
	mux.HandleFunc("POST /logout", d.serveLogout)
	mux.Handle("GET /assets/", d.assetHandler())
	mux.HandleFunc("GET /ui/devices/{id}", d.page(d.serveDevice))
	mux.HandleFunc("GET /ui/system", d.page(d.serveSystem))
	mux.HandleFunc("GET /ui/api/devices", d.api(d.apiDevices))
	mux.HandleFunc("GET /ui/api/devices/{id}", d.api(d.apiDevice))
	mux.HandleFunc("GET /ui/api/series", d.api(d.apiSeries))
	mux.HandleFunc("POST /ui/api/devices/{id}/commands", d.api(d.apiCommand))
	mux.HandleFunc("GET /ui/api/system", d.api(d.apiSystem))
	mux.HandleFunc("GET /v1/live", d.serveLive)
	mux.HandleFunc("GET /v1/live/sse", d.serveSSE)
	return securityHeaders(mux)
}

// securityHeaders applies to every dashboard response: no framing, no
// sniffing, no inline script (page data travels in JSON script blocks).
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		next.ServeHTTP(w, r)
	})
}
