// Package listenaddr checks the TCP listen addresses in Meridian's
// configuration (server.listen, mqtt.embedded.listen), so every key that
// names one accepts the same forms and refuses the rest with the same words.
//
// It is a leaf: the bridge and the commands both import it, and neither
// imports the other. Its function is pure and safe for concurrent use.
package listenaddr

import (
	"errors"
	"net"
	"strconv"
)

// Check reports why addr is not a TCP listen address, or nil. An address is
// host:port; the host may be empty (all interfaces) and the port is a
// number from 0 to 65535 (0: any free port). Service names ("http") are
// refused: they depend on the host's /etc/services.
//
// examples shows the caller's default in both forms, for the message, e.g.
// `":8470" or "127.0.0.1:8470"`. The error omits the key and the value:
// the caller's Validate adds them.
func Check(addr, examples string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("must be host:port such as " + examples)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	return nil
}
