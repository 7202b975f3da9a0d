//go:build !unix

package sim

// RaiseFileLimit is a no-op where there is no RLIMIT_NOFILE.
func RaiseFileLimit() (uint64, error) { return 0, nil }
