package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/backend"
	"github.com/meridian-iot/meridian/storage/queryapi"
)

func newQueryCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		format  string
		timeout time.Duration
		maxRows int
	)
	cmd := &cobra.Command{
		Use:   `query "SELECT ..."`,
		Short: "Run one read-only SQL statement against the store (docs/sql.md)",
		Long: `Run one read-only SQL statement against the configured store and print the
result. The statement runs in a read-only transaction with a statement
timeout and a row cap; see docs/sql.md for the tables and example queries.`,
		Example: `  meridian query "SELECT device, metric, max(time) FROM telemetry GROUP BY 1, 2"
  meridian query --format csv "SELECT * FROM telemetry_1h WHERE bucket > now() - interval '1 day'"`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{Err: fmt.Errorf("query takes exactly one SQL statement (quote it), got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) (err error) {
			write, ok := queryapi.Writers[format]
			if !ok {
				return usageError{Err: fmt.Errorf("--format: must be table, json or csv, got %q", format)}
			}
			cfg, err := loadConfig(c.Flags())
			if err != nil {
				return err
			}
			// The operator on the box holds the service's credentials
			// anyway: without a query role, run on the service's
			// connection even when it is privileged (docs/sql.md).
			cfg.Storage.Postgres.AllowPrivilegedQuery = true
			// Never migrate from a read command; a store that is not
			// migrated says so through WaitMigrated.
			st, err := backend.Open(c.Context(), cfg.Storage, cfg.Server.DataDir, false, cliLogger(cfg.Server, stderr))
			if err != nil {
				return err
			}
			defer closeStore(st, &err)
			wctx, cancel := context.WithTimeout(c.Context(), storeWait)
			defer cancel()
			if err := st.WaitMigrated(wctx); err != nil {
				return err
			}
			res, err := st.Query(c.Context(), args[0], storage.QueryOptions{Timeout: timeout, MaxRows: maxRows})
			if err != nil {
				return err // the backend says "query: ..."
			}
			if err := write(stdout, res); err != nil {
				return fmt.Errorf("write result: %w", err)
			}
			if res.Truncated && format != "json" {
				fmt.Fprintf(stderr, "meridian: result truncated at %d rows (--max-rows)\n", len(res.Rows))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "table", "output format: table, json or csv")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "statement timeout (0: the store's default, 10s)")
	cmd.Flags().IntVar(&maxRows, "max-rows", 0, "row cap (0: the store's default, 10000)")
	return cmd
}
