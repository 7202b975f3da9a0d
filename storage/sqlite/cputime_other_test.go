//go:build !unix

package sqlite

import "time"

// cpuTime is not measured here; BenchmarkCommit then reports wall time only.
func cpuTime() time.Duration { return 0 }
