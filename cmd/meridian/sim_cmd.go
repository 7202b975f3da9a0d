package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/simcli"
	"github.com/meridian-iot/meridian/storage/backend"
)

func newSimCmd(stdout, stderr io.Writer) *cobra.Command {
	return simcli.NewCommand(stdout, stderr, openSimStore)
}

// openSimStore opens the configured store for `sim --verify`, without
// migrating it.
func openSimStore(c *cobra.Command, stderr io.Writer) (simcli.Querier, func(), error) {
	cfg, err := loadConfig(c.Flags())
	if err != nil {
		return nil, nil, err
	}
	// Like `meridian query`: the operator on the box holds the service's
	// credentials anyway (docs/sql.md).
	cfg.Storage.Postgres.AllowPrivilegedQuery = true
	st, err := backend.Open(c.Context(), cfg.Storage, cfg.Server.DataDir, false, cliLogger(cfg.Server, stderr))
	if err != nil {
		return nil, nil, err
	}
	if err := st.WaitMigrated(c.Context()); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("--verify: %w", err), st.Close())
	}
	return st, func() { _ = st.Close() }, nil
}
