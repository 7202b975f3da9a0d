package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/meridian-iot/meridian/bridge"
	"github.com/meridian-iot/meridian/cmd/internal/front"
	"github.com/meridian-iot/meridian/dashboard"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/backend"
	"github.com/meridian-iot/meridian/storage/queryapi"
)

func newServeCmd(stdout, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the server: device endpoint, admin API, metrics",
		Long: `Run the server until SIGINT or SIGTERM, then shut down gracefully: stop
accepting, stop reading devices, commit and acknowledge what was read, close
devices with 1001, all within ingest.shutdown_grace.

Without storage.url the embedded SQLite store under server.data_dir is used.
On first start an admin API key is generated and printed once.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := loadConfig(c.Flags())
			if err != nil {
				return err
			}
			log := newLogger(cfg.Server, stderr)
			return serve(c.Context(), cfg, log, stdout, nil)
		},
	}
}

// serve runs the server until ctx ends. onListen, when set, is told the bound
// address (tests listen on port 0).
func serve(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer, onListen func(net.Addr)) (err error) {
	s, err := newServer(ctx, cfg, log, out)
	if err != nil {
		return err
	}
	// The store closes last, after ingest has committed what it read and
	// every part that writes to it has stopped (server.shutdown).
	defer func() {
		if cerr := s.st.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
		}
	}()
	if err := s.listen(); err != nil {
		return err
	}
	if onListen != nil {
		onListen(s.ln.Addr())
	}
	if err := s.Run(ctx); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// server is `meridian serve`: every part built from the config and wired
// explicitly by newServer, then run by Run, which owns the stop order.
type server struct {
	cfg Config
	log *slog.Logger
	out io.Writer // where a newly generated admin key is printed, once

	st       *backend.Opened
	reg      *prometheus.Registry
	devs     *devices.Service
	sessions *devices.SessionLog // device_sessions and last_seen, group-committed
	fan      *fanout
	ing      *ingest.Server
	br       *bridge.Bridge       // nil when mqtt is disabled
	dash     *dashboard.Dashboard // nil when the dashboard is disabled

	http     *http.Server
	certs    *front.CertReloader // nil without TLS
	ln       net.Listener
	keysDone atomic.Bool // the operator API keys are initialised (readyz)
}

// newServer opens the store and builds every part. The order follows the
// data: the fan-out of what ingest reports exists before ingest, and its
// consumers (bridge, dashboard) join it as they are built, before Run.
func newServer(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer) (_ *server, err error) {
	if cfg.Ingest.Node == "" {
		cfg.Ingest.Node, _ = os.Hostname()
	}
	s := &server{cfg: cfg, log: log, out: out, fan: &fanout{}, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if s.st, err = backend.Open(ctx, cfg.Storage, cfg.Server.DataDir, cfg.Storage.Migrate, log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.st.Close())
		}
	}()
	s.devs = devices.NewService(s.st, cfg.Devices, log.With("component", "devices"))
	s.sessions = devices.NewSessionLog(s.st, devices.SessionLogOptions{Logger: log.With("component", "sessions"), Registerer: s.reg})
	if s.ing, err = ingest.New(cfg.Ingest, s.st, s.devs, ingest.Options{
		Logger:     log.With("component", "ingest"),
		Registerer: s.reg,
		Sessions:   sessionLog{s.sessions},
		Limits:     s.devs,
		Committed:  s.fan.committed,
		Results:    s.fan.result,
		Presence:   s.fan.presence,
	}); err != nil {
		return nil, fmt.Errorf("build ingest server: %w", err)
	}
	// A kick (disable, delete, revoke) closes the live session here and,
	// through the bridge, on whichever other node holds it.
	s.fan.kicks = append(s.fan.kicks, s.ing.Kick)
	s.devs.OnKick(s.fan.kick)
	s.devs.SetPresence(s.ing.Online)
	if err := s.buildBridge(); err != nil {
		return nil, err
	}
	if err := s.buildDashboard(); err != nil {
		return nil, err
	}
	if err := s.buildHTTP(); err != nil {
		return nil, err
	}
	return s, nil
}

// buildBridge builds the MQTT bridge unless mqtt is disabled: telemetry out,
// presence, commands in, cross-node kicks.
func (s *server) buildBridge() error {
	if s.cfg.MQTT.Disabled() {
		return nil
	}
	mcfg := s.cfg.MQTT
	if mcfg.Node == "" {
		mcfg.Node = s.cfg.Ingest.Node
	}
	br, err := bridge.New(mcfg, nodeDevices{s.ing, s.devs}, bridge.Options{
		Logger:       s.log,
		Registerer:   s.reg,
		Authenticate: s.mqttAccess,
		DeviceExists: func(ctx context.Context, id string) (bool, error) {
			_, err := s.st.GetDevice(ctx, id)
			if errors.Is(err, storage.ErrNotFound) {
				return false, nil
			}
			return err == nil, err
		},
	})
	if err != nil {
		return fmt.Errorf("build mqtt bridge: %w", err)
	}
	s.br = br
	s.fan.onCommitted = append(s.fan.onCommitted, br.Committed)
	s.fan.onResult = append(s.fan.onResult, br.Result)
	s.fan.onPresence = append(s.fan.onPresence, br.Presence)
	s.fan.kicks = append(s.fan.kicks, br.Kick)
	return nil
}

// mqttAccess maps an operator API key, used as an MQTT password on the
// embedded broker, to what its holder may do there.
func (s *server) mqttAccess(ctx context.Context, _, key string) bridge.Access {
	k, err := s.devs.AuthenticateOperator(ctx, key)
	switch {
	case err != nil:
		return bridge.AccessNone
	case k.Role == devices.RoleAdmin:
		return bridge.AccessCommand
	default:
		return bridge.AccessRead
	}
}

// buildDashboard builds the operator UI and its live feed, fed by this
// node's committed batches and, through the bridge, other nodes'.
func (s *server) buildDashboard() error {
	if !s.cfg.Dashboard.Enabled {
		return nil
	}
	deps := dashboard.Deps{
		Auth:       s.devs,
		Registry:   s.devs,
		Series:     s.st.Series,
		Logger:     s.log.With("component", "dashboard"),
		Registerer: s.reg,
		Gatherer:   s.reg,
		Build:      dashboard.BuildInfo{Version: version, Commit: buildCommit(), Node: s.cfg.Ingest.Node},
		Storage:    s.storageInfo,
	}
	if s.br != nil {
		deps.Commands = s.br
	}
	dash, err := dashboard.New(s.cfg.Dashboard, deps)
	if err != nil {
		return fmt.Errorf("build dashboard: %w", err)
	}
	s.dash = dash
	s.fan.onCommitted = append(s.fan.onCommitted, dash.Publish)
	s.fan.onPresence = append(s.fan.onPresence, dash.Presence)
	if s.br != nil {
		s.br.OnRemoteBatch(dash.Publish)
	}
	return nil
}

// storageInfo is the system page's storage tile.
func (s *server) storageInfo(ctx context.Context) (dashboard.StorageInfo, error) {
	si := dashboard.StorageInfo{Backend: s.st.Kind, Mode: modeOrPending(s.st.Mode())}
	var err error
	si.SizeBytes, err = s.st.DatabaseSize(ctx)
	return si, err
}

// buildHTTP mounts every route with its credential on one http.Server.
func (s *server) buildHTTP() error {
	var metrics http.Handler = promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	})
	if !s.cfg.Server.Metrics.Open {
		metrics = s.devs.RequireRole(devices.RoleViewer, metrics)
	}
	rt := routes{
		device:  s.ing.Handler(),
		admin:   s.devs.AdminHandler(),
		metrics: metrics,
		// Ready only once the admin key is registered: an orchestrator (or
		// a test) acting on /readyz with a configured devices.admin_key must
		// not get 401s because the key is registered a moment later.
		ready: front.Readyz(keysReady{s.ing, &s.keysDone}, s.st, s.st.Kind),
		query: s.devs.RequireRole(devices.RoleViewer, queryapi.Handler(s.st,
			queryapi.Options{Config: s.cfg.Storage.Query, Logger: s.log.With("component", "query")})),
	}
	if s.br != nil {
		rt.commands = s.devs.RequireRole(devices.RoleAdmin, s.br.CommandHandler())
	}
	if s.dash != nil {
		rt.ui = s.dash.Handler()
	}
	handler := front.TrustProxies(front.ParseProxies(s.cfg.Server.TrustedProxies), newMux(rt))
	s.http = front.NewServer(s.cfg.Server.HTTP, handler, slog.NewLogLogger(s.log.Handler(), slog.LevelWarn))
	if s.cfg.Server.TLS.Enabled() {
		var err error
		if s.certs, err = front.NewCertReloader(s.cfg.Server.TLS, s.log); err != nil {
			return err
		}
	}
	return nil
}

// listen binds server.listen (wrapped in TLS when configured).
func (s *server) listen() error {
	ln, err := front.Listen(s.cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s (server.listen): %w", s.cfg.Server.Listen, err)
	}
	if s.certs != nil {
		ln = tls.NewListener(ln, s.certs.ServerTLS())
	}
	s.ln = ln
	s.log.Info("meridian serving",
		"listen", ln.Addr().String(), "tls", s.certs != nil, "version", version,
		"storage", s.st.Kind, "location", s.st.Where, "mode", modeOrPending(s.st.Mode()),
		// Acks are sent only after the store's commit returns: on disk for
		// sqlite (WAL, fsync on commit), in PostgreSQL for postgres.
		"durable", true)
	return nil
}

// Run serves until ctx ends (or a part fails), then stops the parts in
// order (shutdown). The parts that must outlive the signal — ingest, the
// bridge, the dashboard — run on contexts of their own that shutdown ends.
func (s *server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	ingCtx, stopIngest := context.WithCancel(context.WithoutCancel(ctx))
	defer stopIngest()
	partsCtx, stopParts := context.WithCancel(context.WithoutCancel(ctx))
	defer stopParts()

	g.Go(func() error {
		if err := s.http.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error { return s.ing.Run(ingCtx) })
	// Ends through Close in the stop order, after ingest.
	g.Go(func() error { return s.sessions.Run(ingCtx) })
	if s.br != nil {
		g.Go(func() error { return s.br.Run(partsCtx) })
	}
	if s.dash != nil {
		g.Go(func() error { return s.dash.Run(partsCtx) })
	}
	if s.certs != nil {
		g.Go(func() error { s.certs.Watch(gctx, front.CertPollInterval); return nil })
	}
	g.Go(func() error {
		if s.st.WaitReady(gctx) == nil {
			storage.RunMaintenance(gctx, s.st, s.cfg.Storage.MaintainInterval, s.log.With("component", "storage"))
		}
		return nil
	})
	g.Go(func() error {
		if s.st.WaitReady(gctx) == nil && s.devs.BootstrapAdminKey(gctx, s.cfg.Devices.AdminKey, s.announceKey) {
			s.keysDone.Store(true)
		}
		return nil
	})
	// Started, for systemd (Type=notify), once the listener is bound. Not
	// gated on the store: a database that is down must not get the unit
	// killed by a start timeout; /readyz reports it and flow begins when it
	// returns.
	if err := sdNotify("READY=1"); err != nil {
		s.log.Warn("notify systemd", "err", err)
	}
	g.Go(func() error {
		<-gctx.Done()
		return s.shutdown(ctx, stopParts)
	})
	return g.Wait()
}

// shutdown stops the parts in this order (docs/architecture.md), all within
// ingest.shutdown_grace:
//
//  1. Stop accepting: the listener closes. HTTP requests in flight go on.
//  2. Drain and ack: ingest stops reading devices, commits what it read and
//     acks it; HTTP batches in flight get their answer.
//  3. Close sessions: devices get 1001 and reconnect, elsewhere if they can.
//  4. Stop the bridge and the dashboard: the last committed batches and the
//     offline presence are published first; live feeds close, which ends the
//     HTTP server's wait for its streaming requests. Write the queued
//     session records (the closes ingest just queued), with a few seconds
//     of their own even when ingest used the whole grace.
//  5. Close the store: serve does it once Run has returned.
func (s *server) shutdown(ctx context.Context, stopParts context.CancelFunc) error {
	s.log.Info("shutting down", "grace", s.cfg.Ingest.ShutdownGrace)
	_ = sdNotify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Ingest.ShutdownGrace)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.http.Shutdown(sctx) }() // 1
	ierr := s.ing.Shutdown(sctx)                      // 2, 3
	if ierr != nil {
		ierr = fmt.Errorf("drain ingest: %w", ierr)
	}
	stopParts() // 4
	lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), sessionDrainGrace)
	defer lcancel()
	lerr := s.sessions.Close(lctx)
	if lerr != nil {
		lerr = fmt.Errorf("drain session log: %w", lerr)
	}
	herr := <-httpDone
	if herr != nil {
		herr = fmt.Errorf("stop http server: %w", herr)
	}
	return errors.Join(herr, ierr, lerr)
}

// sessionDrainGrace bounds writing the queued session records at shutdown:
// a few group commits, tens of milliseconds when the store is healthy.
const sessionDrainGrace = 5 * time.Second

// announceKey prints a newly generated admin key once, on stdout (never to
// the log).
func (s *server) announceKey(secret string) {
	fmt.Fprintf(s.out, "\nNo API key existed, so an admin key was created. It is shown only this once:\n\n    %s\n\nUse it as \"Authorization: Bearer <key>\" for /v1/admin and /metrics.\n\n", secret)
}

// fanout hands what ingest reports — committed batches, presence changes,
// command results — and the registry's kicks to the parts that consume
// them. Consumers join while the server is built; from Run on it is
// read-only, so delivery takes no lock. Every consumer only enqueues (the
// bridge's and the hub's queues are bounded, drop-oldest), so ingest's
// writer never waits on MQTT or a browser.
type fanout struct {
	onCommitted []func(telemetry.Batch)
	onPresence  []func(telemetry.Presence)
	onResult    []func(telemetry.CommandResult)
	kicks       []func(device, reason string)
}

func (f *fanout) committed(b telemetry.Batch) {
	for _, fn := range f.onCommitted {
		fn(b)
	}
}

func (f *fanout) presence(p telemetry.Presence) {
	for _, fn := range f.onPresence {
		fn(p)
	}
}

func (f *fanout) result(r telemetry.CommandResult) {
	for _, fn := range f.onResult {
		fn(r)
	}
}

func (f *fanout) kick(device, reason string) {
	for _, fn := range f.kicks {
		fn(device, reason)
	}
}

func modeOrPending(mode string) string {
	if mode == "" {
		return "pending (connecting)"
	}
	return mode
}

// keysReady is ingest's readiness plus "the admin key is registered".
type keysReady struct {
	ing  front.ReadyChecker
	done *atomic.Bool
}

func (k keysReady) Ready(ctx context.Context) error {
	if !k.done.Load() {
		return errors.New("operator API keys not initialised yet")
	}
	return k.ing.Ready(ctx)
}

// sessionLog hands ingest's session events to the devices session log
// (device_sessions history and last_seen, group-committed; see
// devices.SessionLog). It only translates ingest's type into storage's.
type sessionLog struct{ l *devices.SessionLog }

var _ ingest.SessionRecorder = sessionLog{}

var _ ingest.AckedAuthenticator = (*devices.Service)(nil) // one store query per uncached handshake

func (s sessionLog) SessionOpened(ctx context.Context, i ingest.SessionInfo) error {
	return s.l.Opened(ctx, storage.Session{ID: i.ID, DeviceID: i.Device, Node: i.Node,
		RemoteAddr: i.RemoteAddr, Transport: i.Transport, StartedAt: i.Started})
}

func (s sessionLog) SessionClosed(ctx context.Context, i ingest.SessionInfo) error {
	return s.l.Closed(ctx, storage.SessionEnd{ID: i.ID, DeviceID: i.Device, EndedAt: i.Ended,
		Reason: i.CloseReason, Readings: i.Readings})
}

// nodeDevices is ingest as the bridge sees it, except that a kick from
// another node first drops this node's cached credentials of the device:
// the device's next reconnect here must meet the revocation, not a cached
// answer from before it.
type nodeDevices struct {
	*ingest.Server
	devs *devices.Service
}

func (n nodeDevices) Kick(device, reason string) {
	n.devs.ForgetDevice(device)
	n.Server.Kick(device, reason)
}
