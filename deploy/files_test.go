package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// yamlDocs parses every document of a YAML file.
func yamlDocs(t *testing.T, rel string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, rel)))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: not well-formed YAML: %v", rel, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func k8sObject(t *testing.T, rel, kind string) map[string]any {
	t.Helper()
	for _, d := range yamlDocs(t, rel) {
		if d["kind"] == kind {
			return d
		}
	}
	t.Fatalf("%s: no %s", rel, kind)
	return nil
}

// get walks a parsed YAML tree: get(doc, "spec", "template", 0, "name").
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				return nil
			}
			v = s[k]
		}
	}
	return v
}

// Every YAML file under deploy/ parses; every Kubernetes object names its
// apiVersion, kind and metadata.name.
func TestYAMLWellFormed(t *testing.T) {
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, filepath.ToSlash(filepath.Join("deploy", p)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("found only %d YAML files under deploy/: %v", len(files), files)
	}
	for _, rel := range files {
		docs := yamlDocs(t, rel)
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", rel)
		}
		if !strings.HasPrefix(rel, "deploy/k8s/") {
			continue
		}
		for i, d := range docs {
			name := get(d, "metadata", "name")
			if d["kind"] == "Kustomization" {
				name = "kustomization"
			}
			if d["apiVersion"] == nil || d["kind"] == nil || name == nil {
				t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", rel, i)
			}
		}
	}
}

// dockerignored reports whether a context path is excluded by a
// .dockerignore (the subset of its syntax our file uses: plain paths, globs
// and **/ prefixes).
func dockerignored(patterns []string, p string) bool {
	for _, pat := range patterns {
		pat = strings.TrimPrefix(pat, "/")
		pat = strings.TrimPrefix(pat, "**/")
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			if ok, _ := path.Match(pat, q); ok {
				return true
			}
			if ok, _ := path.Match(pat, path.Base(q)); ok && strings.Contains(pat, "*") {
				return true
			}
		}
	}
	return false
}

func exists(t *testing.T, rel string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(rel)))
	return err == nil
}

// The files the Dockerfile, nfpm, compose and kustomize refer to exist, and
// the Docker build context does not exclude what the build needs.
func TestReferencedFilesExist(t *testing.T) {
	t.Run("Dockerfile", func(t *testing.T) {
		var ignore []string
		for _, l := range strings.Split(readFile(t, "deploy/Dockerfile.dockerignore"), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				ignore = append(ignore, l)
			}
		}
		df := readFile(t, "deploy/Dockerfile")
		copyLine := regexp.MustCompile(`(?m)^COPY\s+(.*)$`)
		var needed []string
		for _, m := range copyLine.FindAllStringSubmatch(df, -1) {
			if strings.Contains(m[1], "--from=") {
				continue
			}
			fields := strings.Fields(m[1])
			for _, src := range fields[:len(fields)-1] {
				if !strings.HasPrefix(src, "--") && src != "." {
					needed = append(needed, src)
				}
			}
		}
		for _, m := range regexp.MustCompile(`\s(\./cmd/[a-z]+)`).FindAllStringSubmatch(df, -1) {
			needed = append(needed, strings.TrimPrefix(m[1], "./"))
		}
		if len(needed) < 3 {
			t.Fatalf("Dockerfile: expected COPY go.mod go.sum and a build of ./cmd/meridian, found %v", needed)
		}
		for _, p := range needed {
			if !exists(t, p) {
				t.Errorf("Dockerfile needs %s, which does not exist", p)
			}
			if dockerignored(ignore, p) {
				t.Errorf("Dockerfile needs %s, but Dockerfile.dockerignore excludes it", p)
			}
		}
		for _, p := range []string{"cmd/meridian/main.go", "go.sum", "migrations/embed.go"} {
			if dockerignored(ignore, p) {
				t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", p)
			}
		}
	})

	t.Run("nfpm", func(t *testing.T) {
		cfg := yamlDocs(t, "deploy/nfpm.yaml")[0]
		contents, _ := cfg["contents"].([]any)
		dsts := map[string]bool{}
		for _, c := range contents {
			src, _ := get(c, "src").(string)
			dst, _ := get(c, "dst").(string)
			dsts[dst] = true
			if strings.Contains(src, "${") {
				continue // the binary, given by make package
			}
			if !exists(t, src) {
				t.Errorf("nfpm.yaml: %s does not exist", src)
			}
		}
		scripts, _ := cfg["scripts"].(map[string]any)
		if len(scripts) < 3 {
			t.Errorf("nfpm.yaml: want preinstall, postinstall and preremove scripts, got %v", scripts)
		}
		for _, s := range scripts {
			if !exists(t, s.(string)) {
				t.Errorf("nfpm.yaml: script %s does not exist", s)
			}
		}
		// The unit runs what the package installs.
		unit := readFile(t, "deploy/systemd/meridian.service")
		for _, want := range []string{"/usr/bin/meridian", "/etc/meridian/meridian.yaml", "/etc/meridian/meridian.env", "/usr/lib/systemd/system/meridian.service"} {
			if !dsts[want] {
				t.Errorf("nfpm.yaml does not install %s", want)
			}
			if want != "/usr/lib/systemd/system/meridian.service" && !strings.Contains(unit, want) {
				t.Errorf("meridian.service does not use %s", want)
			}
		}
	})

	t.Run("compose", func(t *testing.T) {
		doc := yamlDocs(t, "deploy/docker-compose.yml")[0]
		services, _ := doc["services"].(map[string]any)
		for _, name := range []string{"timescaledb", "mosquitto", "meridian"} {
			if services[name] == nil {
				t.Errorf("docker-compose.yml: no service %s", name)
			}
		}
		ctx, _ := get(services, "meridian", "build", "context").(string)
		dockerfile, _ := get(services, "meridian", "build", "dockerfile").(string)
		if !exists(t, path.Join("deploy", ctx, dockerfile)) || !exists(t, path.Join("deploy", ctx, "go.mod")) {
			t.Errorf("docker-compose.yml: build context %q with dockerfile %q does not find the Dockerfile and go.mod", ctx, dockerfile)
		}
		for name, svc := range services {
			vols, _ := get(svc, "volumes").([]any)
			for _, v := range vols {
				src := strings.Split(v.(string), ":")[0]
				if strings.HasPrefix(src, "./") || strings.HasPrefix(src, "../") {
					if !exists(t, path.Join("deploy", src)) {
						t.Errorf("docker-compose.yml: service %s mounts %s, which does not exist", name, src)
					}
				}
			}
		}
	})

	t.Run("kustomize", func(t *testing.T) {
		k := yamlDocs(t, "deploy/k8s/kustomization.yaml")[0]
		res, _ := k["resources"].([]any)
		for _, r := range res {
			if !exists(t, path.Join("deploy/k8s", r.(string))) {
				t.Errorf("kustomization.yaml: %s does not exist", r)
			}
		}
	})
}

// unitDirectives parses a systemd unit into section.key -> values (a key may
// repeat).
func unitDirectives(t *testing.T, rel string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, rel)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "["):
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: line %q is not key=value", rel, l)
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

// systemdSeconds parses the systemd time spans the unit uses: "30s", "2min",
// "90".
func systemdSeconds(t *testing.T, s string) time.Duration {
	t.Helper()
	s = strings.Replace(s, "min", "m", 1)
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("time span %q: %v", s, err)
	}
	return d
}

func TestSystemdUnit(t *testing.T) {
	const rel = "deploy/systemd/meridian.service"
	u := unitDirectives(t, rel)
	one := func(key string) string {
		v := u[key]
		if len(v) == 0 {
			t.Errorf("%s: %s is not set", rel, key)
			return ""
		}
		return v[len(v)-1]
	}
	for key, want := range map[string]string{
		"Service.StateDirectory":           "meridian",
		"Service.ProtectSystem":            "strict",
		"Service.ProtectHome":              "yes",
		"Service.PrivateTmp":               "yes",
		"Service.NoNewPrivileges":          "yes",
		"Service.CapabilityBoundingSet":    "",
		"Service.Restart":                  "on-failure",
		"Service.RestartPreventExitStatus": "2",
		"Service.EnvironmentFile":          "-/etc/meridian/meridian.env",
		"Service.KillSignal":               "SIGTERM",
		"Install.WantedBy":                 "multi-user.target",
	} {
		if got := one(key); got != want {
			t.Errorf("%s: %s=%s, want %s", rel, key, got, want)
		}
	}
	for _, key := range []string{"Service.RestartSec", "Service.RestrictAddressFamilies", "Service.SystemCallFilter"} {
		one(key)
	}
	if one("Service.User") == "" && one("Service.DynamicUser") != "yes" {
		t.Errorf("%s: needs User= or DynamicUser=yes", rel)
	}
	if n, err := strconv.Atoi(one("Service.LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("%s: LimitNOFILE=%s, want a number >= 65536 (one descriptor per device)", rel, one("Service.LimitNOFILE"))
	}

	// The config the unit starts with keeps its data in the StateDirectory.
	cfg := effectiveConfig(t, filepath.Join(repoRoot, "deploy/config/meridian.yaml"))
	if got, want := cfg["server.data_dir"], "/var/lib/"+one("Service.StateDirectory"); got != want {
		t.Errorf("server.data_dir = %v, but the unit's state directory is %s", got, want)
	}
	// systemd must not SIGKILL a drain that is still within its grace.
	grace := duration(t, cfg, "ingest.shutdown_grace")
	if stop := systemdSeconds(t, one("Service.TimeoutStopSec")); stop < grace+10*time.Second {
		t.Errorf("%s: TimeoutStopSec=%v, want at least ingest.shutdown_grace (%v) + 10s to close the store", rel, stop, grace)
	}

	// Type=notify only once the binary tells systemd it is ready.
	notifies := false
	srcs, _ := filepath.Glob(filepath.Join(repoRoot, "cmd", "meridian", "*.go"))
	for _, f := range srcs {
		b, err := os.ReadFile(f)
		if err == nil && strings.Contains(string(b), "NOTIFY_SOCKET") && !strings.HasSuffix(f, "_test.go") {
			notifies = true
		}
	}
	want := "exec"
	if notifies {
		want = "notify"
	}
	if got := one("Service.Type"); got != want {
		t.Errorf("%s: Type=%s, want Type=%s (cmd/meridian implements sd_notify: %v)", rel, got, want, notifies)
	}

	// systemd's own checks, where systemd is installed: the unit parses, and
	// its sandbox scores as well as it does today (exposure 1.5 of 10).
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: skipping systemd's verification of the unit")
		return
	}
	dir := t.TempDir()
	unit := strings.ReplaceAll(readFile(t, rel), "/usr/bin/meridian", meridianBinary(t))
	unitPath := filepath.Join(dir, "meridian.service")
	if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", unitPath).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(analyze, "security", "--offline=true", "--threshold=25", unitPath).CombinedOutput()
	if err != nil {
		last := strings.TrimSpace(string(out))
		if i := strings.LastIndex(last, "\n"); i >= 0 {
			last = last[i+1:]
		}
		t.Errorf("systemd-analyze security: %v: %s (want exposure at most 2.5)", err, last)
	}
}

func TestKubernetes(t *testing.T) {
	dep := k8sObject(t, "deploy/k8s/deployment.yaml", "Deployment")
	cm := k8sObject(t, "deploy/k8s/configmap.yaml", "ConfigMap")
	pod := get(dep, "spec", "template")
	c := get(pod, "spec", "containers", 0)

	path := filepath.Join(t.TempDir(), "meridian.yaml")
	if err := os.WriteFile(path, []byte(get(cm, "data", "meridian.yaml").(string)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := effectiveConfig(t, path)
	grace := duration(t, cfg, "ingest.shutdown_grace")

	preStop, _ := get(c, "lifecycle", "preStop", "sleep", "seconds").(int)
	if preStop < 3 {
		t.Errorf("deployment: want a preStop sleep of a few seconds so endpoints drop the pod before it drains, got %v", preStop)
	}
	tgps, _ := get(pod, "spec", "terminationGracePeriodSeconds").(int)
	if need := time.Duration(preStop)*time.Second + grace; time.Duration(tgps)*time.Second <= need {
		t.Errorf("deployment: terminationGracePeriodSeconds=%d must exceed preStop (%ds) + ingest.shutdown_grace (%v)", tgps, preStop, grace)
	}

	for probe, want := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := get(c, probe, "httpGet", "path"); got != want {
			t.Errorf("deployment: %s path = %v, want %s", probe, got, want)
		}
		if got := get(c, probe, "httpGet", "port"); got != get(c, "ports", 0, "name") {
			t.Errorf("deployment: %s port %v is not the container port %v", probe, got, get(c, "ports", 0, "name"))
		}
	}
	listen, _ := cfg["server.listen"].(string)
	if port := fmt.Sprint(get(c, "ports", 0, "containerPort")); !strings.HasSuffix(listen, ":"+port) {
		t.Errorf("deployment: containerPort %s, but server.listen is %q", port, listen)
	}
	for _, check := range []struct {
		path []any
		want any
	}{
		{[]any{"spec", "securityContext", "runAsNonRoot"}, true},
		{[]any{"spec", "containers", 0, "securityContext", "readOnlyRootFilesystem"}, true},
		{[]any{"spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"}, false},
		{[]any{"spec", "containers", 0, "securityContext", "capabilities", "drop", 0}, "ALL"},
	} {
		if got := get(pod, check.path...); got != check.want {
			t.Errorf("deployment: %v = %v, want %v", check.path, got, check.want)
		}
	}
	if get(c, "resources", "requests", "memory") == nil || get(c, "resources", "limits", "memory") == nil {
		t.Error("deployment: want memory requests and limits")
	}

	labels, _ := get(pod, "metadata", "labels").(map[string]any)
	matches := func(sel map[string]any) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	svc := k8sObject(t, "deploy/k8s/service.yaml", "Service")
	if sel, _ := get(svc, "spec", "selector").(map[string]any); !matches(sel) {
		t.Errorf("service selector %v does not select the pods %v", sel, labels)
	}
	if got := get(svc, "spec", "ports", 0, "targetPort"); got != get(c, "ports", 0, "name") {
		t.Errorf("service targetPort %v is not the container port %v", got, get(c, "ports", 0, "name"))
	}
	pdb := k8sObject(t, "deploy/k8s/pdb.yaml", "PodDisruptionBudget")
	if sel, _ := get(pdb, "spec", "selector", "matchLabels").(map[string]any); !matches(sel) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", sel, labels)
	}
}

func TestCompose(t *testing.T) {
	doc := yamlDocs(t, "deploy/docker-compose.yml")[0]
	m := get(doc, "services", "meridian")
	cfg := effectiveConfig(t, "")
	grace := duration(t, cfg, "ingest.shutdown_grace")
	stop, err := time.ParseDuration(fmt.Sprint(get(m, "stop_grace_period")))
	if err != nil || stop <= grace {
		t.Errorf("compose: stop_grace_period %v must exceed ingest.shutdown_grace %v", get(m, "stop_grace_period"), grace)
	}
	listen, _ := cfg["server.listen"].(string)
	port := fmt.Sprint(get(m, "ports", 0))
	if !strings.HasSuffix(port, listen) { // "8470:8470" ends with ":8470"
		t.Errorf("compose: port mapping %s does not reach server.listen %s", port, listen)
	}
}

// proxyTimeout parses a timeout from a proxy config: nginx and Caddy take
// "120s"/"2m" (a bare number is seconds in nginx); HAProxy's bare number is
// milliseconds.
func proxyTimeout(t *testing.T, s string, bareUnit time.Duration) time.Duration {
	t.Helper()
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * bareUnit
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("timeout %q: %v", s, err)
	}
	return d
}

// Each proxy keeps an idle WebSocket open longer than the server itself
// would: the server closes a silent device after two heartbeats, so a proxy
// timeout above that never cuts a healthy session first.
func TestProxyConfigs(t *testing.T) {
	hb := duration(t, effectiveConfig(t, filepath.Join(repoRoot, "deploy/config/meridian.yaml")), "ingest.heartbeat")
	atLeast := 2 * hb

	directive := func(t *testing.T, text, name string) []string {
		re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + `\s+([^;\n]+?)\s*;?\s*$`)
		var vals []string
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			vals = append(vals, m[1])
		}
		return vals
	}

	t.Run("nginx", func(t *testing.T) {
		conf := readFile(t, "deploy/proxy/nginx.conf")
		for _, name := range []string{"proxy_read_timeout", "proxy_send_timeout"} {
			v := directive(t, conf, name)
			if len(v) != 1 {
				t.Fatalf("nginx.conf: want one %s, got %v", name, v)
			}
			if d := proxyTimeout(t, v[0], time.Second); d <= atLeast || d <= 60*time.Second {
				t.Errorf("nginx.conf: %s %v must exceed 2 x ingest.heartbeat (%v) and nginx's 60s default", name, d, atLeast)
			}
		}
		for _, want := range []string{
			"proxy_http_version 1.1;",
			"proxy_set_header Upgrade    $http_upgrade;",
			"proxy_set_header Connection $connection_upgrade;",
			"proxy_set_header X-Forwarded-For   $proxy_add_x_forwarded_for;",
			"proxy_set_header X-Real-IP         $remote_addr;",
			"proxy_buffering         off;",
		} {
			if !strings.Contains(conf, want) {
				t.Errorf("nginx.conf lacks %q", want)
			}
		}
	})

	t.Run("haproxy", func(t *testing.T) {
		conf := readFile(t, "deploy/proxy/haproxy.cfg")
		for _, name := range []string{"timeout tunnel", "timeout client", "timeout server"} {
			v := directive(t, conf, name)
			if len(v) != 1 {
				t.Fatalf("haproxy.cfg: want one %q, got %v", name, v)
			}
			if d := proxyTimeout(t, v[0], time.Millisecond); d <= atLeast {
				t.Errorf("haproxy.cfg: %s %v must exceed 2 x ingest.heartbeat (%v)", name, d, atLeast)
			}
		}
		for _, want := range []string{"option forwardfor", "http-request set-header X-Real-IP %[src]", "option httpchk GET /readyz"} {
			if !strings.Contains(conf, want) {
				t.Errorf("haproxy.cfg lacks %q", want)
			}
		}
		haproxy, err := exec.LookPath("haproxy")
		if err != nil {
			t.Log("haproxy not installed: skipping haproxy -c")
			return
		}
		dir := t.TempDir()
		certs := newTestCert(t, dir)
		cfg := strings.ReplaceAll(conf, "/etc/haproxy/certs/meridian.pem", certs.combined)
		p := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(haproxy, "-c", "-f", p).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c: %v\n%s", err, out)
		}
	})

	t.Run("caddy", func(t *testing.T) {
		conf := readFile(t, "deploy/proxy/Caddyfile")
		if !regexp.MustCompile(`(?m)^\s*flush_interval -1$`).MatchString(conf) {
			t.Error("Caddyfile: want flush_interval -1 (acks written at once)")
		}
		if regexp.MustCompile(`(?m)^\s*stream_timeout`).MatchString(conf) {
			t.Error("Caddyfile: stream_timeout would cut long device sessions")
		}
		caddy, err := exec.LookPath("caddy")
		if err != nil {
			t.Log("caddy not installed: skipping caddy validate")
			return
		}
		dir := t.TempDir()
		p := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(caddy, "adapt", "--adapter", "caddyfile", "--config", p).CombinedOutput(); err != nil {
			t.Errorf("caddy adapt: %v\n%s", err, out)
		}
	})
}
