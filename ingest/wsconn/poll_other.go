//go:build !linux

package wsconn

import "errors"

// Off Linux every connection keeps a blocking reader goroutine (still with
// no buffer while idle); the poller is a stub that is never created.
type poller struct{}

var errUnsupported = errors.New("readiness polling not supported")

func newPoller(*Engine) (*poller, error) { return nil, errUnsupported }
func rawFD(Transport) int32              { return -1 }
func ownFD(Transport) (Transport, int32) { return nil, -1 }
func (*poller) add(*Conn) error          { return errUnsupported }
func (*poller) arm(*Conn) error          { return errUnsupported }
func (*poller) remove(*Conn)             {}
func (*poller) close()                   {}
