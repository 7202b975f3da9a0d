package meridiantest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var build struct {
	once sync.Once
	path string
	err  error
}

// Bin is the meridian binary the tests of this process run:
// MERIDIAN_BENCH_BIN when set (a prebuilt binary, e.g. an older commit's, to
// compare), else ./cmd/meridian of this module built once per test process.
//
// The build goes to one file per checkout under the temp dir
// (meridiantest-<hash of the module root>/meridian), written by rename, so
// repeated runs and parallel package test processes reuse one path instead
// of leaving a binary per run behind; go's build cache makes the rebuild a
// relink.
func Bin(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("MERIDIAN_BENCH_BIN"); p != "" {
		return p
	}
	build.once.Do(func() { build.path, build.err = buildBin() })
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.path
}

func buildBin() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// go test runs in the package's directory, somewhere inside the module.
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "meridiantest-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("build meridian: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "meridian-*.tmp")
	if err != nil {
		return "", fmt.Errorf("build meridian: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // a no-op once renamed
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp.Name(), "./cmd/meridian")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/meridian: %w\n%s", err, out)
	}
	// A process running the previous binary keeps it: rename replaces the
	// directory entry, not the file.
	bin := filepath.Join(dir, "meridian")
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return "", fmt.Errorf("build meridian: %w", err)
	}
	return bin, nil
}
