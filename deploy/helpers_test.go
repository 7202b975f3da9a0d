package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the module root: go test runs in deploy/.
const repoRoot = ".."

// The ldflags `make release` uses, with values this test recognises in
// `meridian version`.
const (
	testVersion = "v0.0.0-deploytest"
	testCommit  = "deploytest00"
)

// binDir holds the meridian binary built once for the whole test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meridian-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var build struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// meridianBinary builds ./cmd/meridian for this machine, once, with the
// release ldflags, and returns its path.
func meridianBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		build.path = filepath.Join(binDir, "meridian")
		cmd := exec.Command("go", "build", "-trimpath",
			"-ldflags", "-X main.version="+testVersion+" -X main.commit="+testCommit,
			"-o", build.path, "./cmd/meridian")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.out, build.err = cmd.CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("go build ./cmd/meridian: %v\n%s", build.err, build.out)
	}
	return build.path
}

// runMeridian runs a short meridian command and returns its stdout.
func runMeridian(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(meridianBinary(t), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("meridian %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// readFile reads a repository file named relative to the module root.
func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return string(b)
}

// requireTool finds an external program (env override, PATH, then the
// Debian location). Missing under CI=true is a failure: CI installs it
// (.ci/run); elsewhere the test skips and says how to get it.
func requireTool(t *testing.T, envVar, name, debianPath, pkg string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := os.Stat(debianPath); err == nil {
		return debianPath
	}
	msg := fmt.Sprintf("%s not found (set %s, or apt-get install %s)", name, envVar, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPING: " + msg)
	return ""
}
