//go:build !wiring

// TODO(wiring): temporary; see commands_wiring.go.
package main

import (
	"io"

	"github.com/spf13/cobra"
)

func extraCommands(stdout, stderr io.Writer) []*cobra.Command { return nil }
