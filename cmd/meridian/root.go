package main

import (
	"github.com/meridian-iot/meridian/cmd/internal/conf"

	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "meridian",
		Short: "Meridian ingests telemetry from IoT devices and stores it durably",
		Long: `Meridian ingests telemetry from IoT devices over WebSocket or HTTP,
acknowledges each batch once it is durable, and keeps the history queryable
with SQL.

Configuration comes from defaults, a file (--config), MERIDIAN_* environment
variables and flags, in that order of precedence; see docs/config.md.`,
		SilenceErrors: true, // main prints the one error line
		SilenceUsage:  true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{Err: fmt.Errorf("unknown command %q (see meridian --help)", args[0])}
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{Err: err} })

	pf := root.PersistentFlags()
	pf.String("config", "", "config file (YAML); env MERIDIAN_CONFIG")
	pf.String("listen", "", "listen address (server.listen)")
	pf.String("data-dir", "", "directory for local state (server.data_dir)")
	pf.String("storage-url", "", "PostgreSQL URL; empty uses the embedded store (storage.url)")
	pf.String("log-format", "", "text or json (server.log_format)")
	pf.String("log-level", "", "debug, info, warn or error (server.log_level)")

	root.AddCommand(
		newServeCmd(stdout, stderr),
		newConfigCmd(stdout),
		newMigrateCmd(stdout, stderr),
		newQueryCmd(stdout, stderr),
		newVersionCmd(stdout),
		newDeviceCmd(stdout, stderr),
		newAPIKeyCmd(stdout, stderr),
		newSimCmd(stdout, stderr),
	)
	return root
}

// noArgs is cobra.NoArgs as a usage error (exit 2).
var noArgs = conf.NoArgs
