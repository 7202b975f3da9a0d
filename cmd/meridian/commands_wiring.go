//go:build wiring

// TODO(wiring): temporary. The device, apikey and sim commands are built
// with -tags wiring while their packages settle; once their files drop the
// tag, their constructors move into newRootCmd and this file and
// commands_nowiring.go go away.
package main

import (
	"io"

	"github.com/spf13/cobra"
)

func extraCommands(stdout, stderr io.Writer) []*cobra.Command {
	return []*cobra.Command{
		newSimCmd(stdout, stderr),
	}
}
