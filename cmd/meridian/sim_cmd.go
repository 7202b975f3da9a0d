package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/simcli"
	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/storage"
)

func newSimCmd(stdout, stderr io.Writer) *cobra.Command {
	return simcli.NewCommand(stdout, stderr, openSimVerifier)
}

// openSimVerifier opens the configured store for `sim --verify`.
func openSimVerifier(c *cobra.Command, stderr io.Writer) (sim.QueryFunc, func(), error) {
	mcfg, err := loadConfig(c.Flags())
	if err != nil {
		return nil, nil, err
	}
	// Like `meridian query`: the operator on the box holds the service's
	// credentials anyway (docs/sql.md).
	mcfg.Storage.Postgres.AllowPrivilegedQuery = true
	log := cliLogger(mcfg.Server, stderr)
	st, err := openStore(c.Context(), mcfg, false, log)
	if err != nil {
		return nil, nil, err
	}
	if err := st.waitReady(c.Context()); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("--verify: %s store at %s: %w", st.kind, st.where, err), st.Close())
	}
	q := func(ctx context.Context, sql string) ([][]any, error) {
		// The row cap is raised well past one chunk of devices' readings;
		// a truncated answer would make verification lie.
		res, err := st.Query(ctx, sql, storage.QueryOptions{Timeout: 2 * time.Minute, MaxRows: 50_000_000})
		if err != nil {
			return nil, err
		}
		if res.Truncated {
			return nil, fmt.Errorf("answer truncated at %d rows", len(res.Rows))
		}
		return res.Rows, nil
	}
	return q, func() { _ = st.Close() }, nil
}
