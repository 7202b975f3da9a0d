package main

import (
	"testing"

	"go.uber.org/goleak"
)

// Every command, serve included, must leave no goroutine behind once it
// returns: serve's shutdown path joins everything it started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
