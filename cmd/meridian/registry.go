package main

import (
	"errors"
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-iot/meridian/cmd/internal/registrycli"
	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/storage/backend"
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
	st, err := backend.Open(c.Context(), cfg.Storage, cfg.Server.DataDir, cfg.Storage.Migrate, log)
	if err != nil {
		return nil, nil, err
	}
	if err := st.WaitReady(c.Context()); err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	return devices.NewService(st, cfg.Devices, log.With("component", "devices")), st.Close, nil
}
