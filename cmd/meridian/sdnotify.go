package main

import (
	"fmt"
	"net"
	"os"
)

// sdNotify tells systemd about the service state ("READY=1",
// "STOPPING=1") through $NOTIFY_SOCKET, for Type=notify units. Outside
// systemd the variable is unset and this does nothing. It is the whole
// sd_notify protocol: one datagram on a unix socket, so no dependency.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	// An abstract socket is written "@name"; Go's net package maps the "@"
	// to the leading NUL byte itself.
	c, err := net.Dial("unixgram", addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
