package registrycli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/conf"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/storage"
)

// NewAPIKeyCmd is `meridian apikey`; local opens the store for the mode
// without --server.
func NewAPIKeyCmd(stdout, stderr io.Writer, local LocalOpener) *cobra.Command {
	x := &registryCLI{rf: registryFlags{local: local}, stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "apikey",
		Short: "Manage operator API keys: add, list, revoke",
		Long: `Manage operator API keys. Role "admin" may change everything; "viewer" may
read devices, query, series, the dashboard and its live feed.

` + devicesHelp + `

Working on the store directly is also how to get back in when no admin key is
left: meridian apikey add --role admin.`,
	}
	x.rf.register(cmd)
	cmd.AddCommand(x.apikeyAddCmd(), x.apikeyListCmd(), x.apikeyRevokeCmd())
	return cmd
}

func (x *registryCLI) apikeyAddCmd() *cobra.Command {
	var (
		name, role string
		asJSON     bool
	)
	add := &cobra.Command{
		Use:   "add --role admin|viewer [--name NAME]",
		Short: "Create an API key and print it (shown only once)",
		Long: `Create an API key and print it on stdout, alone, so it can be captured:

  export MERIDIAN_API_KEY=$(meridian apikey add --role admin --name ops)

The key is stored only as a hash: save it now.`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if role != devices.RoleAdmin && role != devices.RoleViewer {
				return conf.UsageError{Err: fmt.Errorf("--role: must be admin or viewer, got %q", role)}
			}
			return nil
		},
		RunE: x.run(func(c *cobra.Command, r registryOps, _ []string) error {
			created, err := r.AddAPIKey(c.Context(), name, role)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(x.stdout, created)
			}
			fmt.Fprintf(x.stderr, "%s key %s created; it is shown only this once:\n", created.APIKey.Role, created.APIKey.ID)
			_, err = fmt.Fprintln(x.stdout, created.Key)
			return err
		}),
	}
	add.Flags().StringVar(&role, "role", "", "admin or viewer (required)")
	add.Flags().StringVar(&name, "name", "", "who or what the key is for")
	add.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of the bare key")
	return add
}

func (x *registryCLI) apikeyListCmd() *cobra.Command {
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List API keys (ids, names, roles; never the secrets)",
		Args:  cobra.NoArgs,
		RunE: x.run(func(c *cobra.Command, r registryOps, _ []string) error {
			ks, err := r.ListAPIKeys(c.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if ks == nil {
					ks = []storage.APIKey{}
				}
				return printJSON(x.stdout, ks)
			}
			tw := tabwriter.NewWriter(x.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tNAME\tCREATED\tREVOKED")
			for _, k := range ks {
				revoked := "-"
				if k.RevokedAt != nil {
					revoked = k.RevokedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Role, k.Name, k.CreatedAt.UTC().Format(time.RFC3339), revoked)
			}
			return tw.Flush()
		}),
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return list
}

func (x *registryCLI) apikeyRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke <id>",
		Short: "Revoke an API key now (the last active admin key cannot be revoked)",
		Args:  oneID("API key id"),
		RunE: x.run(func(c *cobra.Command, r registryOps, args []string) error {
			if err := r.RevokeAPIKey(c.Context(), args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(x.stdout, "API key %s revoked\n", args[0])
			return err
		}),
	}
}
