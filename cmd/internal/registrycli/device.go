// Package registrycli is `meridian device` and `meridian apikey`: the
// operator's command line for the device registry and API keys. Each
// command works either through a running server's admin API
// (devices/adminclient, --server) or directly on the configured store
// (devices.Service, opened by the caller's LocalOpener), and prints the same
// either way.
package registrycli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/conf"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/devices/adminclient"
	"github.com/meridian-iot/meridian/storage"
)

// registryOps is what the device and apikey commands do. Two implementations:
// the admin API of a running server (--server, devices/adminclient) and the
// devices.Service on the configured store (direct). Both answer the admin
// API's shapes, so the commands print the same thing either way.
type registryOps interface {
	AddDevice(ctx context.Context, id, name string, labels map[string]string) (devices.DeviceCreated, error)
	ListDevices(ctx context.Context, labels map[string]string) ([]devices.DeviceView, error)
	Device(ctx context.Context, id string) (devices.DeviceDetail, error)
	SetEnabled(ctx context.Context, id string, enabled bool) error
	RotateToken(ctx context.Context, id string) (devices.TokenRotated, error)
	RevokeTokens(ctx context.Context, id string) error
	DeleteDevice(ctx context.Context, id string, purge bool) error
	AddAPIKey(ctx context.Context, name, role string) (devices.APIKeyCreated, error)
	ListAPIKeys(ctx context.Context) ([]storage.APIKey, error)
	RevokeAPIKey(ctx context.Context, id string) error
}

var _ registryOps = (*adminclient.Client)(nil)

// registryFlags are shared by `device` and `apikey`: where to send the
// operations.
type registryFlags struct {
	server string
	apiKey string
	local  LocalOpener
}

// LocalOpener opens the registry on the configured store (the same config,
// env and flags as serve) and returns a function that closes it.
type LocalOpener func(c *cobra.Command, stderr io.Writer) (*devices.Service, func() error, error)

func (f *registryFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.server, "server", "", "base URL of a running server's admin API, e.g. http://localhost:8470 (env MERIDIAN_SERVER); empty works directly on the configured store")
	pf.StringVar(&f.apiKey, "api-key", "", "API key for --server (prefer env MERIDIAN_API_KEY: flags show in ps)")
}

// open returns the registry to use and a function that releases it. With
// --server (or MERIDIAN_SERVER) the admin API is used: live sessions are
// closed at once on disable, revoke and delete. Otherwise the configured
// store is opened directly: this works with no server running, but a server
// that is running only notices at the device's next authentication.
func (f *registryFlags) open(c *cobra.Command, stderr io.Writer) (registryOps, func() error, error) {
	server := cmp.Or(f.server, os.Getenv("MERIDIAN_SERVER"))
	if server != "" {
		key := cmp.Or(f.apiKey, os.Getenv("MERIDIAN_API_KEY"))
		if key == "" {
			return nil, nil, conf.UsageError{Err: errors.New("--server needs an API key: set MERIDIAN_API_KEY or --api-key")}
		}
		c, err := adminclient.New(server, key, adminclient.Options{})
		if err != nil {
			return nil, nil, conf.UsageError{Err: fmt.Errorf("--server: %w", err)}
		}
		return c, func() error { return nil }, nil
	}
	svc, closeFn, err := f.local(c, stderr)
	if err != nil {
		return nil, nil, err
	}
	return localRegistry{svc}, closeFn, nil
}

// withRegistry runs fn on the registry and closes it, joining errors.
func (f *registryFlags) withRegistry(c *cobra.Command, stderr io.Writer, fn func(registryOps) error) (err error) {
	reg, closeFn, err := f.open(c, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := closeFn(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
		}
	}()
	return fn(reg)
}

// localRegistry adapts devices.Service to the admin API's shapes. Without a
// server's session registry, "online" is read from the session history: a
// session with no end.
type localRegistry struct{ *devices.Service }

func (l localRegistry) AddDevice(ctx context.Context, id, name string, labels map[string]string) (devices.DeviceCreated, error) {
	d, tok, err := l.Service.AddDevice(ctx, id, name, labels)
	return devices.DeviceCreated{Device: devices.DeviceView{Device: d}, Token: tok}, err
}

func (l localRegistry) ListDevices(ctx context.Context, labels map[string]string) ([]devices.DeviceView, error) {
	ds, err := l.Service.ListDevices(ctx, labels)
	if err != nil {
		return nil, err
	}
	rows := make([]devices.DeviceView, len(ds))
	for i, d := range ds {
		_, sess, err := l.Service.Device(ctx, d.ID)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		rows[i] = devices.DeviceView{Device: d, Online: openSession(sess)}
	}
	return rows, nil
}

func (l localRegistry) Device(ctx context.Context, id string) (devices.DeviceDetail, error) {
	d, sess, err := l.Service.Device(ctx, id)
	if err != nil {
		return devices.DeviceDetail{}, err
	}
	return devices.DeviceDetail{Device: devices.DeviceView{Device: d, Online: openSession(sess)}, Sessions: sess}, nil
}

func (l localRegistry) RotateToken(ctx context.Context, id string) (devices.TokenRotated, error) {
	tok, err := l.Service.RotateToken(ctx, id)
	return devices.TokenRotated{Device: id, Token: tok}, err
}

func (l localRegistry) AddAPIKey(ctx context.Context, name, role string) (devices.APIKeyCreated, error) {
	k, secret, err := l.Service.AddAPIKey(ctx, name, role)
	return devices.APIKeyCreated{APIKey: k, Key: secret}, err
}

func openSession(sess []storage.Session) *bool {
	on := len(sess) > 0 && sess[0].EndedAt == nil
	return &on
}

// parseLabelFlags turns repeated --label k=v into a map.
func parseLabelFlags(list []string) (map[string]string, error) {
	m := map[string]string{}
	for _, l := range list {
		k, v, err := devices.ParseLabel(l)
		if err != nil {
			return nil, conf.UsageError{Err: fmt.Errorf("--label: must be key=value, got %q", l)}
		}
		m[k] = v
	}
	return m, nil
}

func oneID(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			return conf.UsageError{Err: fmt.Errorf("expected exactly one %s, got %d arguments", what, len(args))}
		}
		return nil
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

const devicesHelp = `Without --server the command works directly on the configured store (the
same config, env and flags as serve): it needs no running server, but a running
server closes a disabled, revoked or deleted device's live session only when the
device next authenticates. With --server (or MERIDIAN_SERVER) it calls that
server's admin API with MERIDIAN_API_KEY, and live sessions close at once.`

// registryCLI is what the device and apikey subcommands share: where the
// operations go (--server or the store) and where output goes.
type registryCLI struct {
	rf             registryFlags
	stdout, stderr io.Writer
}

// run adapts a command body that needs a registry to cobra's RunE.
func (x *registryCLI) run(fn func(*cobra.Command, registryOps, []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		return x.rf.withRegistry(c, x.stderr, func(r registryOps) error { return fn(c, r, args) })
	}
}

const jsonHelp = "print JSON instead of text"

// NewDeviceCmd is `meridian device`; local opens the store for the mode
// without --server.
func NewDeviceCmd(stdout, stderr io.Writer, local LocalOpener) *cobra.Command {
	x := &registryCLI{rf: registryFlags{local: local}, stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Manage devices: add, list, show, disable, enable, rotate-token, revoke-tokens, delete",
		Long:  "Manage the device registry.\n\n" + devicesHelp,
	}
	x.rf.register(cmd)
	cmd.AddCommand(x.deviceAddCmd(), x.deviceListCmd(), x.deviceShowCmd(),
		x.deviceSetEnabledCmd("disable", false, "Disable a device: its tokens stop working and its session is closed"),
		x.deviceSetEnabledCmd("enable", true, "Enable a disabled device"),
		x.deviceRotateCmd(), x.deviceRevokeCmd(), x.deviceDeleteCmd())
	return cmd
}

func (x *registryCLI) deviceAddCmd() *cobra.Command {
	var (
		name     string
		labels   []string
		labelMap map[string]string
		asJSON   bool
	)
	add := &cobra.Command{
		Use:   "add <id>",
		Short: "Register a device and print its token (shown only once)",
		Long: `Register a device and print its token on stdout, alone, so it can be captured:

  TOKEN=$(meridian device add boiler-7 --label site=north)

The token is stored only as a hash: save it now. Use "" as the id to have one
generated (dev-<12 hex digits>).`,
		Args: oneID("device id"),
		PreRunE: func(*cobra.Command, []string) (err error) {
			labelMap, err = parseLabelFlags(labels)
			return err
		},
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			created, err := r.AddDevice(c.Context(), args[0], name, labelMap)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(x.stdout, created)
			}
			fmt.Fprintf(x.stderr, "device %s added; its token is shown only this once:\n", created.Device.ID)
			_, err = fmt.Fprintln(x.stdout, created.Token)
			return err
		}),
	}
	add.Flags().StringVar(&name, "name", "", "display name (default: the id)")
	add.Flags().StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	add.Flags().BoolVar(&asJSON, "json", false, jsonHelp)
	return add
}

func (x *registryCLI) deviceListCmd() *cobra.Command {
	var (
		labels   []string
		labelMap map[string]string
		asJSON   bool
	)
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices: state, online, last seen, labels",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) (err error) {
			labelMap, err = parseLabelFlags(labels)
			return err
		},
		RunE: x.run(func(c *cobra.Command, r registryOps, _ []string) error {
			rows, err := r.ListDevices(c.Context(), labelMap)
			if err != nil {
				return err
			}
			if asJSON {
				if rows == nil {
					rows = []devices.DeviceView{}
				}
				return printJSON(x.stdout, rows)
			}
			tw := tabwriter.NewWriter(x.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tONLINE\tLAST SEEN\tLABELS")
			for _, d := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Name, stateText(d.Enabled), onlineText(d.Online), seenText(d.LastSeen), labelText(d.Labels))
			}
			return tw.Flush()
		}),
	}
	list.Flags().StringArrayVar(&labels, "label", nil, "only devices with label key=value (repeatable: all must match)")
	list.Flags().BoolVar(&asJSON, "json", false, jsonHelp)
	return list
}

func (x *registryCLI) deviceShowCmd() *cobra.Command {
	var asJSON bool
	show := &cobra.Command{
		Use:   "show <id>",
		Short: "Show a device and its recent sessions",
		Args:  oneID("device id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			detail, err := r.Device(c.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				if detail.Sessions == nil {
					detail.Sessions = []storage.Session{}
				}
				return printJSON(x.stdout, detail)
			}
			return printDevice(x.stdout, detail)
		}),
	}
	show.Flags().BoolVar(&asJSON, "json", false, jsonHelp)
	return show
}

// printDevice is `device show` as text: the device, then its sessions.
func printDevice(w io.Writer, detail devices.DeviceDetail) error {
	d := detail.Device
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", d.ID)
	fmt.Fprintf(tw, "name:\t%s\n", d.Name)
	fmt.Fprintf(tw, "state:\t%s\n", stateText(d.Enabled))
	fmt.Fprintf(tw, "online:\t%s\n", onlineText(d.Online))
	fmt.Fprintf(tw, "created:\t%s\n", d.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "last seen:\t%s\n", seenText(d.LastSeen))
	fmt.Fprintf(tw, "acked seq:\t%d\n", d.Acked)
	fmt.Fprintf(tw, "labels:\t%s\n", labelText(d.Labels))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(detail.Sessions) == 0 {
		_, err := fmt.Fprintln(w, "\nno sessions recorded")
		return err
	}
	fmt.Fprintln(w, "\nrecent sessions:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STARTED\tENDED\tTRANSPORT\tNODE\tREMOTE\tREADINGS\tCLOSE REASON")
	for _, s := range detail.Sessions {
		ended := "(open)"
		if s.EndedAt != nil {
			ended = s.EndedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.StartedAt.UTC().Format(time.RFC3339), ended,
			s.Transport, s.Node, s.RemoteAddr, s.Readings, s.CloseReason)
	}
	return tw.Flush()
}

func (x *registryCLI) deviceSetEnabledCmd(use string, enabled bool, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " <id>",
		Short: short,
		Args:  oneID("device id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			if err := r.SetEnabled(c.Context(), args[0], enabled); err != nil {
				return err
			}
			_, err := fmt.Fprintf(x.stdout, "device %s %sd\n", args[0], use)
			return err
		}),
	}
}

func (x *registryCLI) deviceRotateCmd() *cobra.Command {
	var asJSON bool
	rotate := &cobra.Command{
		Use:   "rotate-token <id>",
		Short: "Issue a new token (printed once); old tokens keep working for devices.token_grace",
		Args:  oneID("device id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			rotated, err := r.RotateToken(c.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(x.stdout, map[string]any{"device": args[0], "token": rotated.Token})
			}
			fmt.Fprintf(x.stderr, "new token for %s, shown only this once (previous tokens expire after devices.token_grace):\n", args[0])
			_, err = fmt.Fprintln(x.stdout, rotated.Token)
			return err
		}),
	}
	rotate.Flags().BoolVar(&asJSON, "json", false, jsonHelp)
	return rotate
}

func (x *registryCLI) deviceRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke-tokens <id>",
		Short: "Invalidate every token of a device now (then rotate-token gives it a new one)",
		Args:  oneID("device id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			if err := r.RevokeTokens(c.Context(), args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(x.stdout, "all tokens of %s revoked\n", args[0])
			return err
		}),
	}
}

func (x *registryCLI) deviceDeleteCmd() *cobra.Command {
	var purge bool
	del := &cobra.Command{
		Use:   "delete <id>",
		Short: "Delete a device; its readings are kept unless --purge",
		Args:  oneID("device id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			if err := r.DeleteDevice(c.Context(), args[0], purge); err != nil {
				return err
			}
			what := "readings kept"
			if purge {
				what = "readings purged"
			}
			_, err := fmt.Fprintf(x.stdout, "device %s deleted (%s)\n", args[0], what)
			return err
		}),
	}
	del.Flags().BoolVar(&purge, "purge", false, "also delete the device's readings")
	return del
}

func stateText(enabled bool) string {
	if enabled {
		return "enabled"
	}
	return "disabled"
}

func onlineText(on *bool) string {
	switch {
	case on == nil:
		return "?"
	case *on:
		return "online"
	}
	return "offline"
}

func seenText(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func labelText(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}
