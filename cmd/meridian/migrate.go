package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/migrations"
	"github.com/meridian-iot/meridian/storage/backend"
	"github.com/meridian-iot/meridian/storage/postgres"
)

// storeWait bounds how long the one-shot commands (migrate, query) wait for
// an unreachable database before giving up with its last error.
const storeWait = 30 * time.Second

func newMigrateCmd(stdout, stderr io.Writer) *cobra.Command {
	var status bool
	var queryRole string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending schema migrations (or show them with --status)",
		Long: `Apply the schema migrations embedded in this binary to the configured store.
Safe to run on several nodes at once: a database lock serialises them.
serve also migrates at start unless storage.migrate is false.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := loadConfig(c.Flags())
			if err != nil {
				return err
			}
			// A wrong command line fails before anything changes.
			if queryRole != "" && cfg.Storage.URL == "" {
				return usageError{Err: fmt.Errorf("--create-query-role: only for PostgreSQL (storage.url); the embedded store restricts ad-hoc SQL itself")}
			}
			return migrate(c.Context(), cfg, status, queryRole, stdout, cliLogger(cfg.Server, stderr))
		},
	}
	cmd.Flags().BoolVar(&status, "status", false, "show the current and latest schema version, mode and pending migrations; change nothing")
	cmd.Flags().StringVar(&queryRole, "create-query-role", "", "after migrating, create (or tighten) this least-privilege PostgreSQL login role for ad-hoc SQL, password from $"+queryRolePasswordEnv+" (docs/sql.md)")
	return cmd
}

// migrate applies the pending migrations (unless statusOnly), prints the
// schema status and, when queryRole is set, creates that role.
func migrate(ctx context.Context, cfg Config, statusOnly bool, queryRole string, out io.Writer, log *slog.Logger) (err error) {
	// --status must not change the database; otherwise the store may
	// migrate as it opens (sqlite does, postgres in the background) and
	// Migrate below waits for it or does it.
	st, err := backend.Open(ctx, cfg.Storage, cfg.Server.DataDir, !statusOnly, log)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	wctx, cancel := context.WithTimeout(ctx, storeWait)
	defer cancel()

	if !statusOnly {
		if err := st.Migrate(wctx); err != nil {
			return fmt.Errorf("migrate %s store at %s: %w", st.Kind, st.Where, err)
		}
	}
	s, err := st.MigrateStatus(wctx)
	if err != nil {
		return fmt.Errorf("read migration status of %s store at %s: %w", st.Kind, st.Where, err)
	}
	printStatus(out, st, s)
	if s.TooNew {
		return fmt.Errorf("database schema %d is newer than this binary's %d: upgrade meridian", s.Current, s.Latest)
	}
	if queryRole == "" {
		return nil
	}
	return createQueryRole(ctx, st, queryRole, out)
}

func printStatus(w io.Writer, st *backend.Opened, s migrations.Status) {
	pending := "none"
	if len(s.Pending) > 0 {
		pending = strings.Join(s.Pending, ", ")
	}
	fmt.Fprintf(w, "store:    %s at %s\nmode:     %s\ncurrent:  %d\nlatest:   %d\npending:  %s\n",
		st.Kind, st.Where, s.Mode, s.Current, s.Latest, pending)
}

// queryRolePasswordEnv carries the query role's password to
// `migrate --create-query-role`: flags show in ps. Not MERIDIAN_*, which
// names configuration keys.
const queryRolePasswordEnv = "QUERY_ROLE_PASSWORD"

// createQueryRole makes (or tightens) the least-privilege login role
// /v1/query logs in with (storage.postgres.query_url; docs/sql.md).
func createQueryRole(ctx context.Context, st *backend.Opened, role string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, storeWait)
	defer cancel()
	if err := st.WaitReady(ctx); err != nil {
		return err
	}
	pg, ok := st.Store.(*postgres.Store)
	if !ok {
		return fmt.Errorf("--create-query-role: %s store is not PostgreSQL", st.Kind)
	}
	if err := pg.CreateQueryRole(ctx, role, os.Getenv(queryRolePasswordEnv)); err != nil {
		return err
	}
	fmt.Fprintf(out, "query role: %s (SELECT on %s); set storage.postgres.query_url to log in as it\n",
		role, strings.Join(postgres.PublicRelations, ", "))
	return nil
}

// closeStore closes the store of a one-shot command, reporting its failure
// unless the command already failed.
func closeStore(st io.Closer, err *error) {
	if cerr := st.Close(); cerr != nil && *err == nil {
		*err = fmt.Errorf("close store: %w", cerr)
	}
}
