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
	"github.com/meridian-iot/meridian/dashboard"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
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
	if cfg.Ingest.Node == "" {
		cfg.Ingest.Node, _ = os.Hostname()
	}

	st, err := openStore(ctx, cfg, cfg.Storage.Migrate, log)
	if err != nil {
		return err
	}
	// The store closes last, after ingest has committed what it read.
	defer func() {
		if cerr := st.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
		}
	}()

	promReg := prometheus.NewRegistry()
	promReg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	devs := devices.NewService(st, cfg.Devices, log.With("component", "devices"))
	sessions := devices.NewSessionLog(st, devices.SessionLogOptions{Logger: log.With("component", "sessions"), Registerer: promReg})

	// The bridge and the dashboard subscribe to ingest's hooks, and the
	// bridge needs ingest to deliver commands: ingest is built first with
	// hooks that read br and dash, which are set before ing.Run starts
	// (hooks only fire once devices connect).
	var (
		br   *bridge.Bridge
		dash *dashboard.Dashboard
	)
	ing, err := ingest.New(cfg.Ingest, st, devs, ingest.Options{
		Logger:     log.With("component", "ingest"),
		Registerer: promReg,
		Sessions:   sessionLog{sessions},
		Limits:     devs,
		Committed: func(b telemetry.Batch) {
			if br != nil {
				br.Committed(b)
			}
			if dash != nil {
				dash.Publish(b)
			}
		},
		Results: func(r telemetry.CommandResult) {
			if br != nil {
				br.Result(r)
			}
		},
		Presence: func(p telemetry.Presence) {
			if br != nil {
				br.Presence(p)
			}
			if dash != nil {
				dash.Presence(p)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("build ingest server: %w", err)
	}
	// A kick (disable, delete, revoke) closes the live session here and,
	// through the bridge, on whichever other node holds it.
	devs.OnKick(func(device, reason string) {
		ing.Kick(device, reason)
		if br != nil {
			br.Kick(device, reason)
		}
	})
	devs.SetPresence(ing.Online)

	if !cfg.MQTT.Disabled() {
		mcfg := cfg.MQTT
		if mcfg.Node == "" {
			mcfg.Node = cfg.Ingest.Node
		}
		br, err = bridge.New(mcfg, nodeDevices{ing, devs}, bridge.Options{
			Logger:     log,
			Registerer: promReg,
			Authenticate: func(ctx context.Context, _, key string) bridge.Access {
				k, err := devs.AuthenticateOperator(ctx, key)
				switch {
				case err != nil:
					return bridge.AccessNone
				case k.Role == devices.RoleAdmin:
					return bridge.AccessCommand
				default:
					return bridge.AccessRead
				}
			},
			IsOffline: func(err error) bool { return errors.Is(err, ingest.ErrOffline) },
			IsBusy:    func(err error) bool { return errors.Is(err, ingest.ErrCommandQueueFull) },
			DeviceExists: func(ctx context.Context, id string) (bool, error) {
				_, err := st.GetDevice(ctx, id)
				if errors.Is(err, storage.ErrNotFound) {
					return false, nil
				}
				return err == nil, err
			},
		})
		if err != nil {
			return fmt.Errorf("build mqtt bridge: %w", err)
		}
	}
	if cfg.Dashboard.Enabled {
		deps := dashboard.Deps{
			Auth:       devs,
			Registry:   devs,
			Series:     st.Series,
			Logger:     log.With("component", "dashboard"),
			Registerer: promReg,
			Stats: func() map[string]any {
				stats := map[string]any{"storage": map[string]any{"backend": st.kind, "mode": modeOrPending(st.Mode())}}
				if br != nil {
					stats["mqtt"] = map[string]any{"connected": br.Connected()}
				}
				return stats
			},
		}
		if br != nil {
			deps.Commands = br
		}
		dash, err = dashboard.New(cfg.Dashboard, deps)
		if err != nil {
			return fmt.Errorf("build dashboard: %w", err)
		}
		if br != nil {
			br.OnRemoteBatch(dash.Publish)
		}
	}

	var metrics http.Handler = promhttp.HandlerFor(promReg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	})
	if !cfg.Server.Metrics.Open {
		metrics = devs.RequireRole(devices.RoleViewer, metrics)
	}
	// Ready only once the admin key is registered: an orchestrator (or a
	// test) acting on /readyz with a configured devices.admin_key must not
	// get 401s because the key is registered a moment later.
	var keysDone atomic.Bool
	rt := routes{
		device:  ing.Handler(),
		admin:   devs.AdminHandler(),
		metrics: metrics,
		ready:   readyzHandler(keysReady{ing, &keysDone}, st, st.kind),
		query:   devs.RequireRole(devices.RoleViewer, queryapi.Handler(st, queryapi.Options{Logger: log.With("component", "query")})),
	}
	if br != nil {
		rt.commands = devs.RequireRole(devices.RoleAdmin, br.CommandHandler())
	}
	if dash != nil {
		rt.ui = dash.Handler()
	}
	handler := trustProxies(parseProxies(cfg.Server.TrustedProxies), newMux(rt))

	var certs *certReloader
	if cfg.Server.TLS.enabled() {
		if certs, err = newCertReloader(cfg.Server.TLS, log); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s (server.listen): %w", cfg.Server.Listen, err)
	}
	if certs != nil {
		ln = tls.NewListener(ln, certs.tlsConfig())
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("meridian serving",
		"listen", ln.Addr().String(), "tls", certs != nil, "version", version,
		"storage", st.kind, "location", st.where, "mode", modeOrPending(st.Mode()),
		// Acks are sent only after the store's commit returns: on disk for
		// sqlite (WAL, fsync on commit), in PostgreSQL for postgres.
		"durable", true)
	if onListen != nil {
		onListen(ln.Addr())
	}

	// ingest runs on its own context: it stops through Shutdown below, in
	// order, not by the signal tearing it down mid-flush.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	// The bridge stops after ingest has drained, so the last committed
	// batches and the offline presence still get published.
	bridgeCtx, stopBridge := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBridge()
	g.Go(func() error {
		defer stopBridge()
		return ing.Run(runCtx)
	})
	// Ends through Close in the stop order below, after ingest.
	g.Go(func() error { return sessions.Run(runCtx) })
	if br != nil {
		g.Go(func() error { return br.Run(bridgeCtx) })
	}
	if dash != nil {
		g.Go(func() error { return dash.Run(gctx) })
	}
	if certs != nil {
		g.Go(func() error { certs.watch(gctx, certPollInterval); return nil })
	}
	g.Go(func() error { maintainLoop(gctx, st, cfg.Storage.MaintainInterval, log); return nil })
	g.Go(func() error {
		if ensureAdminKey(gctx, st, devs, cfg.Devices.AdminKey, out, log) {
			keysDone.Store(true)
		}
		return nil
	})
	// Started, for systemd (Type=notify), once the listener is bound. Not
	// gated on the store: a database that is down must not get the unit
	// killed by a start timeout; /readyz reports it and flow begins when it
	// returns.
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("notify systemd", "err", err)
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "grace", cfg.Ingest.ShutdownGrace)
		_ = sdNotify("STOPPING=1")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Ingest.ShutdownGrace)
		defer cancel()
		// Stop accepting first; in-flight HTTP batches still get their ack
		// because the pipeline is running until ing.Shutdown.
		herr := srv.Shutdown(sctx)
		if herr != nil {
			herr = fmt.Errorf("stop http server: %w", herr)
		}
		ierr := ing.Shutdown(sctx)
		if ierr != nil {
			ierr = fmt.Errorf("drain ingest: %w", ierr)
		}
		// Session records (the closes ingest just queued) are written
		// before the store closes; a grace spent by ingest still leaves
		// them a few seconds.
		lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), sessionDrainGrace)
		defer lcancel()
		lerr := sessions.Close(lctx)
		if lerr != nil {
			lerr = fmt.Errorf("drain session log: %w", lerr)
		}
		return errors.Join(herr, ierr, lerr)
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// sessionDrainGrace bounds writing the queued session records at shutdown:
// a few group commits, tens of milliseconds when the store is healthy.
const sessionDrainGrace = 5 * time.Second

func modeOrPending(mode string) string {
	if mode == "" {
		return "pending (connecting)"
	}
	return mode
}

// maintainLoop runs the store's housekeeping now and then every interval.
// Failures are logged and retried at the next tick: housekeeping falling
// behind never stops ingestion.
func maintainLoop(ctx context.Context, st *store, every time.Duration, log *slog.Logger) {
	if err := st.waitReady(ctx); err != nil {
		return // ctx ended, or the store is unusable (already logged by it)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		mctx, cancel := context.WithTimeout(ctx, max(every, time.Minute))
		start := time.Now()
		err := st.Maintain(mctx, start)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("storage maintenance failed; retrying next interval", "err", err, "interval", every)
		case err == nil:
			log.Debug("storage maintenance done", "took", time.Since(start))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ensureAdminKey makes sure an operator can get in once the store is ready,
// printing a newly generated key once on out (never to the log). Storage
// errors are retried: the admin API is unusable until this succeeds, but
// devices are not affected.
func ensureAdminKey(ctx context.Context, st *store, devs *devices.Service, configured string, out io.Writer, log *slog.Logger) bool {
	if err := st.waitReady(ctx); err != nil {
		return false
	}
	for {
		secret, err := devs.EnsureAdminKey(ctx, configured)
		if err == nil {
			if secret != "" {
				fmt.Fprintf(out, "\nNo API key existed, so an admin key was created. It is shown only this once:\n\n    %s\n\nUse it as \"Authorization: Bearer <key>\" for /v1/admin and /metrics.\n\n", secret)
			}
			return true
		}
		log.Error("cannot ensure an admin API key; retrying", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Second):
		}
	}
}

// keysReady is ingest's readiness plus "the admin key is registered".
type keysReady struct {
	ing  readyChecker
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
