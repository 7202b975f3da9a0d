//go:build unix

package sim

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises the soft open-file limit to the hard limit (every
// device holds a socket) and returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("read open-file limit: %w", err)
	}
	if rl.Cur >= rl.Max {
		return uint64(rl.Cur), nil
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("raise open-file limit to %d: %w", rl.Max, err)
	}
	return uint64(rl.Cur), nil
}
