package sim_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every device goroutine, server and store the tests start must be gone
// when they end (idle keep-alive connections of the shared HTTP transport
// excepted: they belong to net/http's pool, not to us).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
