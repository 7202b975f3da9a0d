package postgres

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a Store leaves goroutines behind after Close
// (the background setup loop, pool health checks, the test proxy).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
