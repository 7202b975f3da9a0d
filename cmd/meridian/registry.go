package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/registrycli"
	"github.com/meridian-iot/meridian/devices"
)

func newDeviceCmd(stdout, stderr io.Writer) *cobra.Command {
	return registrycli.NewDeviceCmd(stdout, stderr, openRegistry)
}

func newAPIKeyCmd(stdout, stderr io.Writer) *cobra.Command {
	return registrycli.NewAPIKeyCmd(stdout, stderr, openRegistry)
}

// openRegistry opens the device registry on the configured store, for the
// device and apikey commands run without --server.
func openRegistry(c *cobra.Command, stderr io.Writer) (*devices.Service, func() error, error) {
	cfg, err := loadConfig(c.Flags())
	if err != nil {
		return nil, nil, err
	}
	// A CLI command's own chatter (store ready, device added) would bury
	// its output; warnings and errors still show.
	if cfg.Server.LogLevel == "info" {
		cfg.Server.LogLevel = "warn"
	}
	log := newLogger(cfg.Server, stderr)
	st, err := openStore(c.Context(), cfg, cfg.Storage.Migrate, log)
	if err != nil {
		return nil, nil, err
	}
	if err := st.waitReady(c.Context()); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("%s store at %s: %w", st.kind, st.where, err), st.Close())
	}
	return devices.NewService(st, cfg.Devices, log.With("component", "devices")), st.Close, nil
}
