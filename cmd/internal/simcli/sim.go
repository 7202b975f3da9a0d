// Package simcli is `meridian sim`: flags, token provisioning, the run and
// its report around the fleet simulator (firmware-sim). Opening the store
// for --verify is the caller's StoreOpener, so this package opens no store
// itself; it only reads it back.
package simcli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meridian-iot/meridian/cmd/internal/conf"
	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/storage"
)

// StoreOpener opens the configured store (the same config, env and flags as
// serve) for --verify, ready to query, and returns how to close it.
type StoreOpener func(c *cobra.Command, stderr io.Writer) (Querier, func(), error)

// Querier runs one read-only SQL statement: the store's side of
// queryapi.Reader, the path `meridian query` takes.
type Querier interface {
	Query(ctx context.Context, sql string, opts storage.QueryOptions) (storage.QueryResult, error)
}

// Bounds of reading the store back for --verify.
const (
	// verifyTimeout bounds the whole verification after the run, which may
	// read millions of readings.
	verifyTimeout = 10 * time.Minute
	// verifyQueryTimeout bounds one verification statement (one chunk of
	// devices' readings) on the configured store.
	verifyQueryTimeout = 2 * time.Minute
	// verifyHTTPTimeout bounds one GET /v1/query with --verify-via http.
	verifyHTTPTimeout = 5 * time.Minute
	// verifyMaxRows is the row cap of one verification statement, well past
	// one chunk of devices' readings: a truncated answer would make
	// verification lie, so it fails instead.
	verifyMaxRows = 50_000_000
	// provisionTimeout bounds one provisioning request to the server.
	provisionTimeout = 30 * time.Second
)

// NewCommand is `meridian sim`: the device fleet simulator (firmware-sim).
func NewCommand(stdout, stderr io.Writer, store StoreOpener) *cobra.Command {
	cfg := sim.DefaultConfig()
	var (
		server, apiKey, provKey, tokensPath, reportJSON, verifyVia string
		profiles                                                   string
		noProgress, chaosAll                                       bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate a fleet of devices against a server (load, demo, and the no-loss proof)",
		Long: `Simulate a fleet of devices speaking protocol v1 (docs/protocol.md) to a running
server: realistic sensor signals, a bounded resend ring per device, reconnects
with backoff and jitter, optional chaos. A live progress line goes to stderr
every second, the final report to stdout (and --report-json).

Devices need tokens: --tokens FILE loads them ("device token" per line); else
they are provisioned through the admin API (MERIDIAN_API_KEY) or the fleet
provisioning key (MERIDIAN_DEVICES_PROVISIONING_KEY), and written to --tokens
when given, so the next run reuses them.

--verify keeps a ledger of what was acked and afterwards reads the store back:
every acked reading stored exactly once, nothing stored that was never sent,
rejected readings absent. It prints PASS or FAIL and exits 1 on FAIL. The
store is the configured one (--storage-url or the config file, as for serve),
or the server's /v1/query with --verify-via http.`,
		Example: `  # 1,000 devices for 5 minutes against a local server (admin key from its first start)
  MERIDIAN_API_KEY=mak_... meridian sim --devices 1000 --duration 5m

  # the no-loss proof under chaos
  meridian sim --devices 200 --speed 20 --duration 1m --chaos --verify --storage-url postgres://...`,
		Args: conf.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg.URL = strings.TrimRight(cmp.Or(server, os.Getenv("MERIDIAN_SERVER"), "http://localhost:8470"), "/")
			apiKey = cmp.Or(apiKey, os.Getenv("MERIDIAN_API_KEY"))
			provKey = cmp.Or(provKey, os.Getenv("MERIDIAN_DEVICES_PROVISIONING_KEY"))
			if profiles != "" {
				cfg.Profiles = strings.Split(profiles, ",")
			}
			if chaosAll {
				applyChaosPreset(&cfg.Chaos, c)
			}
			if verifyVia != "store" && verifyVia != "http" {
				return conf.UsageError{Err: fmt.Errorf("--verify-via: must be store or http, got %q", verifyVia)}
			}
			if err := cfg.Validate(); err != nil {
				return conf.UsageError{Err: err}
			}
			return runSim(c, cfg, simIO{stdout: stdout, stderr: stderr, noProgress: noProgress},
				simAccess{apiKey: apiKey, provKey: provKey, tokens: tokensPath, reportJSON: reportJSON, verifyVia: verifyVia, store: store})
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "server base URL (env MERIDIAN_SERVER; default http://localhost:8470)")
	f.StringVar(&apiKey, "api-key", "", "admin API key to provision devices, or any key for --verify-via http (prefer env MERIDIAN_API_KEY: flags show in ps)")
	f.StringVar(&provKey, "provisioning-key", "", "fleet provisioning key (prefer env MERIDIAN_DEVICES_PROVISIONING_KEY)")
	f.StringVar(&tokensPath, "tokens", "", `tokens file ("device token" per line): loaded when it exists, written after provisioning`)
	f.IntVar(&cfg.Devices, "devices", cfg.Devices, "number of devices")
	f.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "device id prefix (ids are prefix + index)")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed (signals, chaos, jitter)")
	f.Float64Var(&cfg.Ramp, "ramp", cfg.Ramp, "devices started per second (0: all at once)")
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to generate readings (0: until --readings)")
	f.Int64Var(&cfg.TotalReadings, "readings", 0, "stop after this many readings in total (0: no limit)")
	f.DurationVar(&cfg.Drain, "drain", cfg.Drain, "after generating, how long to wait for the last acks")
	f.StringVar(&profiles, "profiles", "", "comma-separated sensor profiles devices draw from (default all: "+strings.Join(sim.ProfileNames(), ",")+")")
	f.IntVar(&cfg.MixMin, "mix-min", cfg.MixMin, "fewest profiles per device")
	f.IntVar(&cfg.MixMax, "mix-max", cfg.MixMax, "most profiles per device")
	f.Float64Var(&cfg.Speed, "speed", cfg.Speed, "sampling rate multiplier (1: real sensor rates)")
	f.IntVar(&cfg.BatchSize, "batch-size", 0, "readings per batch (0: the profiles' sizes; capped by hello.max_batch)")
	f.DurationVar(&cfg.FlushEvery, "flush-every", cfg.FlushEvery, "send a partial batch once its oldest reading is this old")
	f.Float64Var(&cfg.HTTPShare, "http-share", 0, "share of devices using the HTTP fallback (0..1)")
	f.IntVar(&cfg.Ring, "ring", cfg.Ring, "unacked batches a device keeps before it stops sampling")
	f.StringVar(&cfg.StateDir, "state-dir", "", "keep each device's ring in a file here, so a restarted simulator resends what was not acked")
	f.BoolVar(&cfg.Verify, "verify", false, "keep a ledger and verify the store afterwards (exit 1 on FAIL)")
	f.StringVar(&verifyVia, "verify-via", "store", "read the store back through the configured store (store) or GET /v1/query (http)")
	f.StringVar(&reportJSON, "report-json", "", "also write the final report as JSON to this file")
	f.BoolVar(&noProgress, "no-progress", false, "no live progress line on stderr")
	f.DurationVar(&cfg.BackoffBase, "backoff-base", cfg.BackoffBase, "reconnect backoff base (full jitter)")
	f.DurationVar(&cfg.BackoffMax, "backoff-max", cfg.BackoffMax, "reconnect backoff cap")
	f.DurationVar(&cfg.TryLater, "try-later", cfg.TryLater, "extra wait after close 1013 or HTTP 429")

	chaosFlags(f, &cfg.Chaos, &chaosAll)
	return cmd
}

// chaosFlags registers --chaos and the --chaos-* flags.
func chaosFlags(f *pflag.FlagSet, ch *sim.Chaos, all *bool) {
	f.BoolVar(all, "chaos", false, "turn on every kind of chaos at moderate rates (individual --chaos-* flags override)")
	f.DurationVar(&ch.DisconnectEvery, "chaos-disconnect", 0, "mean time between random disconnects per device (0: off)")
	f.DurationVar(&ch.StallEvery, "chaos-stall", 0, "mean time between stalls (device stops reading) per device (0: off)")
	f.DurationVar(&ch.StallFor, "chaos-stall-for", ch.StallFor, "how long a stall lasts")
	f.DurationVar(&ch.ClockSkew, "chaos-skew", 0, "device clocks off by up to ± this (at most 30m)")
	f.Float64Var(&ch.InvalidShare, "chaos-invalid", 0, "share of devices sending invalid readings (0..1)")
	f.Float64Var(&ch.MalformedShare, "chaos-malformed", 0, "share of devices sending undecodable frames (0..1)")
	f.DurationVar(&ch.MalformedEvery, "chaos-malformed-every", ch.MalformedEvery, "mean time between undecodable frames per such device")
	f.DurationVar(&ch.RebootEvery, "chaos-reboot", 0, "mean time between reboots (seq counter lost) per device (0: off)")
	f.BoolVar(&ch.NaiveReboot, "chaos-naive-reboot", false, "after a reboot restart seq at hello.acked+1 (naive firmware) instead of skipping a ring's worth")
}

// applyChaosPreset sets moderate chaos for every --chaos-* flag not given.
func applyChaosPreset(ch *sim.Chaos, c *cobra.Command) {
	set := func(flag string, apply func()) {
		if !c.Flags().Changed(flag) {
			apply()
		}
	}
	set("chaos-disconnect", func() { ch.DisconnectEvery = 30 * time.Second })
	set("chaos-stall", func() { ch.StallEvery = time.Minute })
	set("chaos-skew", func() { ch.ClockSkew = 2 * time.Minute })
	set("chaos-invalid", func() { ch.InvalidShare = 0.05 })
	set("chaos-malformed", func() { ch.MalformedShare = 0.02 })
	set("chaos-reboot", func() { ch.RebootEvery = 5 * time.Minute })
}

type simIO struct {
	stdout, stderr io.Writer
	noProgress     bool
}

type simAccess struct {
	apiKey, provKey, tokens, reportJSON, verifyVia string
	store                                          StoreOpener
}

func runSim(c *cobra.Command, cfg sim.Config, out simIO, acc simAccess) error {
	ctx := c.Context()
	if lim, err := sim.RaiseFileLimit(); err != nil {
		fmt.Fprintf(out.stderr, "meridian sim: %v\n", err)
	} else if lim > 0 && uint64(cfg.Devices)+64 > lim {
		fmt.Fprintf(out.stderr, "meridian sim: warning: %d devices need about %d open files, the limit is %d\n", cfg.Devices, cfg.Devices+64, lim)
	}

	// The verifying store is opened first: a wrong --storage-url should fail
	// before minutes of simulation, not after.
	var query sim.QueryFunc
	if cfg.Verify {
		q, closeStore, err := simVerifier(c, cfg, acc, out.stderr)
		if err != nil {
			return err
		}
		defer closeStore()
		query = q
	}

	tokens, err := simTokens(ctx, cfg, acc)
	if err != nil {
		return err
	}
	// The simulator's own trouble (a state file it cannot write) is worth a
	// line; per-device chatter is counted in the report instead.
	cfg.Logger = slog.New(slog.NewTextHandler(out.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var progress io.Writer
	if !out.noProgress {
		progress = out.stderr
	}
	fleet, err := sim.New(cfg, tokens, progress)
	if err != nil {
		return conf.UsageError{Err: err}
	}
	rep, err := fleet.Run(ctx)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	var verr error
	if cfg.Verify {
		// The run's own context may be cancelled (Ctrl-C ends generation);
		// verification still gets its chance, bounded.
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verifyTimeout)
		defer cancel()
		res, err := fleet.Verify(vctx, query)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		rep.Verify = &res
		if !res.Pass {
			verr = errors.New("verification FAILED: see the counts above")
		}
	}
	fmt.Fprint(out.stdout, rep.Text())
	if acc.reportJSON != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		if err := os.WriteFile(acc.reportJSON, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return verr
}

// simTokens loads or provisions the fleet's device tokens.
func simTokens(ctx context.Context, cfg sim.Config, acc simAccess) (map[string]string, error) {
	ids := cfg.DeviceIDs()
	have := map[string]string{}
	if acc.tokens != "" {
		t, err := sim.LoadTokensFile(acc.tokens)
		switch {
		case err == nil:
			have = t
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("--tokens: %w", err)
		}
	}
	var missing []string
	for _, id := range ids {
		if have[id] == "" {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return have, nil
	}
	if acc.apiKey == "" && acc.provKey == "" {
		return nil, conf.UsageError{Err: fmt.Errorf("%d devices have no token: give --tokens FILE, or MERIDIAN_API_KEY (admin) or MERIDIAN_DEVICES_PROVISIONING_KEY to provision them", len(missing))}
	}
	p := sim.Provisioner{
		Client:   &http.Client{Timeout: provisionTimeout},
		BaseURL:  cfg.URL,
		AdminKey: acc.apiKey, ProvisioningKey: acc.provKey,
		Concurrency: 16,
	}
	if acc.provKey != "" {
		p.AdminKey = "" // the provisioning key was asked for explicitly
	}
	got, err := p.Provision(ctx, missing)
	if err != nil {
		return nil, err
	}
	for id, tok := range got {
		have[id] = tok
	}
	if acc.tokens != "" {
		if err := sim.SaveTokensFile(acc.tokens, have); err != nil {
			return nil, err
		}
	}
	return have, nil
}

// simVerifier returns how --verify reads the store back.
func simVerifier(c *cobra.Command, cfg sim.Config, acc simAccess, stderr io.Writer) (sim.QueryFunc, func(), error) {
	if acc.verifyVia == "http" {
		if acc.apiKey == "" {
			return nil, nil, conf.UsageError{Err: errors.New("--verify-via http needs an API key: set MERIDIAN_API_KEY or --api-key")}
		}
		return sim.HTTPQuery(&http.Client{Timeout: verifyHTTPTimeout}, cfg.URL, acc.apiKey), func() {}, nil
	}
	st, closeStore, err := acc.store(c, stderr)
	if err != nil {
		return nil, nil, err
	}
	q := func(ctx context.Context, sql string) ([][]any, error) {
		res, err := st.Query(ctx, sql, storage.QueryOptions{Timeout: verifyQueryTimeout, MaxRows: verifyMaxRows})
		if err != nil {
			return nil, err
		}
		if res.Truncated {
			return nil, fmt.Errorf("answer truncated at %d rows", len(res.Rows))
		}
		return res.Rows, nil
	}
	return q, closeStore, nil
}
