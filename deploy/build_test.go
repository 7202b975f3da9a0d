package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// releaseTargets reads RELEASE_TARGETS from the Makefile, so this test
// builds exactly what `make release` ships.
func releaseTargets(t *testing.T) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^RELEASE_TARGETS\s*\??=\s*(.+)$`).FindStringSubmatch(readFile(t, "Makefile"))
	if m == nil {
		t.Fatal("Makefile: no RELEASE_TARGETS line")
	}
	targets := strings.Fields(m[1])
	for _, want := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		found := false
		for _, tg := range targets {
			found = found || tg == want
		}
		if !found {
			t.Errorf("Makefile: RELEASE_TARGETS %v lacks %s (edge hosts are 64- and 32-bit ARM boards)", targets, want)
		}
	}
	return targets
}

// Every release target cross-compiles statically (CGO_ENABLED=0, which the
// pure-Go SQLite driver allows). Builds run one after another: the test
// machines have two cores.
func TestReleaseTargetsBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the server for every release target; skipped with -short")
	}
	for _, target := range releaseTargets(t) {
		parts := strings.Split(target, "/")
		env := []string{"CGO_ENABLED=0", "GOOS=" + parts[0], "GOARCH=" + parts[1]}
		if len(parts) == 3 {
			env = append(env, "GOARM="+strings.TrimPrefix(parts[2], "v"))
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", os.DevNull, "./cmd/meridian")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("build %s (%s): %v\n%s", target, strings.Join(env, " "), err, out)
		}
	}
}

// deploy/package.sh (what `make package` runs) builds a .deb and an .rpm
// that carry the binary, the unit, the config and the maintainer scripts.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds .deb and .rpm packages with nfpm; skipped with -short")
	}
	dist := t.TempDir()
	bin, err := os.ReadFile(meridianBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dist, "meridian-linux-amd64"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", filepath.Join(repoRoot, "deploy", "package.sh"), dist)
	cmd.Env = append(os.Environ(), "VERSION=v1.2.3-4-gabcdef")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("deploy/package.sh: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "meridian_*_amd64.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dist, "meridian-*.x86_64.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		entries, _ := os.ReadDir(dist)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("want one amd64 .deb and one x86_64 .rpm, dist has %v", names)
	}
	sums := readAbs(t, filepath.Join(dist, "SHA256SUMS"))
	for _, f := range []string{"meridian-linux-amd64", filepath.Base(debs[0]), filepath.Base(rpms[0])} {
		if !strings.Contains(sums, f) {
			t.Errorf("SHA256SUMS lacks %s", f)
		}
	}

	dpkgDeb, err := exec.LookPath("dpkg-deb")
	if err != nil {
		t.Log("dpkg-deb not installed: not listing the .deb")
		return
	}
	out, err := exec.Command(dpkgDeb, "--contents", debs[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, out)
	}
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/meridian\n",
		"-rw-r--r-- root/root .* ./usr/lib/systemd/system/meridian.service\n",
		"-rw-r----- root/meridian .* ./etc/meridian/meridian.yaml\n",
		"-rw------- root/root .* ./etc/meridian/meridian.env\n",
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf(".deb contents lack %q:\n%s", strings.TrimSpace(want), out)
		}
	}
	info, err := exec.Command(dpkgDeb, "--info", debs[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, info)
	}
	for _, want := range []string{"Version: 1.2.3", "Architecture: amd64", "preinst", "postinst", "prerm", "postrm"} {
		if !strings.Contains(string(info), want) {
			t.Errorf(".deb control lacks %q:\n%s", want, info)
		}
	}
}

func readAbs(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
