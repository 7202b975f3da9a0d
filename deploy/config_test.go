package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
)

// effectiveConfig runs `meridian config print` on a config file ("" for
// none) with a clean environment and returns the result flattened to dotted
// keys. It fails the test when the binary refuses the file: an unknown key,
// a bad value.
func effectiveConfig(t *testing.T, file string) map[string]any {
	t.Helper()
	args := []string{"config", "print"}
	if file != "" {
		args = append(args, "--config", file)
	}
	out, err := runMeridian(t, meridiantest.CleanEnv(), args...)
	if err != nil {
		t.Fatalf("the binary refuses %s: %v", file, err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("parse config print output: %v\n%s", err, out)
	}
	flat := map[string]any{}
	flatten("", tree, flat)
	return flat
}

func flatten(prefix string, v any, out map[string]any) {
	m, ok := v.(map[string]any)
	if !ok {
		out[prefix] = v
		return
	}
	for k, child := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		flatten(key, child, out)
	}
}

// knownKeys is every config key the binary has, and every section above one.
func knownKeys(t *testing.T) (keys, sections map[string]bool) {
	t.Helper()
	keys, sections = map[string]bool{}, map[string]bool{}
	for k := range effectiveConfig(t, "") {
		keys[k] = true
		parts := strings.Split(k, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	return keys, sections
}

func envName(key string) string {
	return "MERIDIAN_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func duration(t *testing.T, cfg map[string]any, key string) time.Duration {
	t.Helper()
	s, ok := cfg[key].(string)
	if !ok {
		t.Fatalf("%s: want a duration string, got %#v", key, cfg[key])
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return d
}

// The shipped default config loads, and each commented-out "#key: value"
// line states the code's default: uncommenting them all changes nothing.
func TestDefaultConfigFile(t *testing.T) {
	const rel = "deploy/config/meridian.yaml"
	shipped := effectiveConfig(t, filepath.Join(repoRoot, rel))
	if got := shipped["server.data_dir"]; got != "/var/lib/meridian" {
		t.Errorf("%s: server.data_dir = %v, want /var/lib/meridian (the unit's StateDirectory)", rel, got)
	}

	commented := regexp.MustCompile(`(?m)^(\s*)#([a-z_]+:)`)
	text := readFile(t, rel)
	if n := len(commented.FindAllString(text, -1)); n < 10 {
		t.Fatalf("%s: only %d commented defaults found; the test expects lines like \"  #heartbeat: 20s\"", rel, n)
	}
	uncommented := filepath.Join(t.TempDir(), "uncommented.yaml")
	if err := os.WriteFile(uncommented, []byte(commented.ReplaceAllString(text, "$1$2")), 0o644); err != nil {
		t.Fatal(err)
	}
	all := effectiveConfig(t, uncommented)
	for k, want := range shipped {
		if got := all[k]; got != nil && want != nil && !equalValue(got, want) {
			t.Errorf("%s: the commented line for %s says %v, but the default is %v", rel, k, got, want)
		}
	}
}

func equalValue(a, b any) bool {
	ya, _ := yaml.Marshal(a)
	yb, _ := yaml.Marshal(b)
	return string(ya) == string(yb)
}

// The config embedded in the Kubernetes ConfigMap loads too.
func TestKubernetesConfigMapLoads(t *testing.T) {
	cm := k8sObject(t, "deploy/k8s/configmap.yaml", "ConfigMap")
	data, _ := cm["data"].(map[string]any)
	text, ok := data["meridian.yaml"].(string)
	if !ok {
		t.Fatal("configmap.yaml: no data.meridian.yaml")
	}
	path := filepath.Join(t.TempDir(), "meridian.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	effectiveConfig(t, path)
}

// filesNamingSettings are the deployment files and docs that name config
// keys and MERIDIAN_* variables; each name must exist in the binary.
var filesNamingSettings = []string{
	"deploy/systemd/meridian.service",
	"deploy/systemd/meridian.env.example",
	"deploy/config/meridian.yaml",
	"deploy/docker-compose.yml",
	"deploy/Dockerfile",
	"deploy/k8s/configmap.yaml",
	"deploy/k8s/deployment.yaml",
	"deploy/k8s/secret.example.yaml",
	"deploy/k8s/service.yaml",
	"deploy/proxy/nginx.conf",
	"deploy/proxy/haproxy.cfg",
	"deploy/proxy/Caddyfile",
	"docs/deploy.md",
	"docs/edge.md",
}

// Variables the binary reads that are not config keys: the config file path
// and the CLI's admin-API client settings.
var extraEnv = map[string]bool{
	"MERIDIAN_CONFIG":  true,
	"MERIDIAN_SERVER":  true,
	"MERIDIAN_API_KEY": true,
}

var (
	envRef = regexp.MustCompile(`\bMERIDIAN_[A-Z0-9_]*[A-Z0-9]\b`)
	// A dotted key under one of the binary's sections, e.g.
	// ingest.shutdown_grace. Trailing dots (end of sentence) are trimmed.
	keyRef = regexp.MustCompile(`\b(?:server|ingest|storage|devices|mqtt|dashboard)\.[a-z][a-z_]*(?:\.[a-z][a-z_]*)*`)
)

// Every MERIDIAN_* variable and every config key the deployment files and
// docs mention exists, so renaming a key in cmd/meridian fails here instead
// of silently breaking an operator's setup.
func TestSettingsNamedInFilesExist(t *testing.T) {
	keys, sections := knownKeys(t)
	env := map[string]bool{}
	for k := range keys {
		env[envName(k)] = true
	}
	for _, rel := range filesNamingSettings {
		text := readFile(t, rel)
		var unknown []string
		for _, name := range envRef.FindAllString(text, -1) {
			if !env[name] && !extraEnv[name] {
				unknown = append(unknown, name)
			}
		}
		for _, key := range keyRef.FindAllString(text, -1) {
			if !keys[key] && !sections[key] {
				unknown = append(unknown, key)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			t.Errorf("%s names settings the binary does not have (see docs/config.md): %s", rel, strings.Join(dedup(unknown), ", "))
		}
	}
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// `make release` stamps the version and commit with -X main.version and
// -X main.commit; if either variable were renamed, -X would silently do
// nothing.
func TestVersionStamp(t *testing.T) {
	out, err := runMeridian(t, meridiantest.CleanEnv(), "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, testVersion) || !strings.Contains(out, testCommit) {
		t.Fatalf("meridian version = %q, want it to contain %q and %q (the -X ldflags of make release)", out, testVersion, testCommit)
	}
}
