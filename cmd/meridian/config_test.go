package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/cmd/internal/conf"
)

// cleanEnv blanks every MERIDIAN_* config variable for the test (viper
// ignores empty ones), so a developer's shell does not change results.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, s := range settingsTable() {
		t.Setenv(envName(s.key), "")
	}
	t.Setenv("MERIDIAN_CONFIG", "")
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runCLI runs the command line as main would and returns stdout, the error
// line main would print, and the exit status.
func runCLI(t *testing.T, args ...string) (stdout, errLine string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	var line bytes.Buffer
	code = exitCode(err, &line)
	return out.String(), strings.TrimSuffix(line.String(), "\n"), code
}

func TestBadConfig(t *testing.T) {
	tests := []struct {
		name  string
		file  string            // YAML; empty means no --config
		env   map[string]string // set for the case
		flags []string
		want  string // the exact line main prints
	}{
		{
			name: "max batch zero in file",
			file: "ingest:\n  max_batch: 0\n",
			want: "meridian: invalid config: ingest.max_batch: must be between 1 and 100000, got 0",
		},
		{
			name: "http body timeout too short",
			file: "server:\n  http:\n    body_timeout: 10ms\n",
			want: "meridian: invalid config: server.http.body_timeout: must be at least 1s, got 10ms",
		},
		{
			name: "http pending conns zero",
			env:  map[string]string{"MERIDIAN_SERVER_HTTP_MAX_PENDING_CONNS": "0"},
			want: "meridian: invalid config: server.http.max_pending_conns: must be >= 1, got 0",
		},
		{
			name: "max batch zero in env",
			env:  map[string]string{"MERIDIAN_INGEST_MAX_BATCH": "0"},
			want: "meridian: invalid config: ingest.max_batch: must be between 1 and 100000, got 0",
		},
		{
			name: "max batch not a number in env",
			env:  map[string]string{"MERIDIAN_INGEST_MAX_BATCH": "lots"},
			want: `meridian: invalid config: ingest.max_batch: must be an integer, got "lots"`,
		},
		{
			name: "fractional integer",
			file: "ingest:\n  writers: 1.5\n",
			want: "meridian: invalid config: ingest.writers: must be an integer, got 1.5",
		},
		{
			name: "duration without unit",
			file: "ingest:\n  heartbeat: 20\n",
			want: `meridian: invalid config: ingest.heartbeat: must be a duration with a unit such as "20s", got 20`,
		},
		{
			name: "duration garbage",
			env:  map[string]string{"MERIDIAN_INGEST_LINGER": "soon"},
			want: `meridian: invalid config: ingest.linger: must be a duration such as "20s" or "1h30m", got "soon"`,
		},
		{
			name: "heartbeat too short",
			file: "ingest:\n  heartbeat: 500ms\n",
			want: "meridian: invalid config: ingest.heartbeat: must be at least 1s, got 500ms",
		},
		{
			name: "unknown key",
			file: "ingest:\n  max_batchh: 10\n",
			want: `meridian: invalid config: CONFIG: unknown key "ingest.max_batchh" (see docs/config.md)`,
		},
		{
			name: "unknown section",
			file: "mqtts:\n  url: tcp://x\n",
			want: `meridian: invalid config: CONFIG: unknown key "mqtts.url" (see docs/config.md)`,
		},
		{
			name: "value where a section belongs",
			file: "ingest: 5\n",
			want: "meridian: invalid config: CONFIG: ingest: must be a section of keys, got 5",
		},
		{
			name: "section where a value belongs",
			file: "server:\n  listen:\n    port: 1\n",
			want: `meridian: invalid config: CONFIG: unknown key "server.listen.port" (see docs/config.md)`,
		},
		{
			name: "bool garbage",
			env:  map[string]string{"MERIDIAN_SERVER_METRICS_OPEN": "yes please"},
			want: `meridian: invalid config: server.metrics.open: must be true or false, got "yes please"`,
		},
		{
			name:  "listen without port",
			flags: []string{"--listen", "8470"},
			want:  `meridian: invalid config: server.listen: must be host:port such as ":8470" or "127.0.0.1:8470", got "8470"`,
		},
		{
			name:  "listen bad port",
			flags: []string{"--listen", ":http-ish"},
			want:  `meridian: invalid config: server.listen: port must be a number from 0 to 65535, got ":http-ish"`,
		},
		{
			name:  "log format",
			flags: []string{"--log-format", "xml"},
			want:  `meridian: invalid config: server.log_format: must be text or json, got "xml"`,
		},
		{
			name: "log level",
			env:  map[string]string{"MERIDIAN_SERVER_LOG_LEVEL": "loud"},
			want: `meridian: invalid config: server.log_level: must be debug, info, warn or error, got "loud"`,
		},
		{
			name:  "empty data dir",
			flags: []string{"--data-dir", " "},
			want:  `meridian: invalid config: server.data_dir: must not be empty, got " "`,
		},
		{
			name: "trusted proxy",
			env:  map[string]string{"MERIDIAN_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, nginx"},
			want: `meridian: invalid config: server.trusted_proxies: must be IP addresses or CIDR prefixes, got "nginx"`,
		},
		{
			name: "trusted proxies not a list",
			file: "server:\n  trusted_proxies:\n    a: b\n",
			want: `meridian: invalid config: CONFIG: unknown key "server.trusted_proxies.a" (see docs/config.md)`,
		},
		{
			name: "storage url wrong scheme masks password",
			env:  map[string]string{"MERIDIAN_STORAGE_URL": "mysql://u:hunter2@db/x"},
			want: `meridian: invalid config: storage.url: must be a postgres://user:password@host:port/db URL or empty for the embedded store, got "mysql://u:***@db/x"`,
		},

		{
			name: "pool size overflow",
			env:  map[string]string{"MERIDIAN_STORAGE_POSTGRES_MAX_CONNS": "3000000000"},
			want: "meridian: invalid config: storage.postgres.max_conns: must be an integer that fits in 32 bits, got 3000000000",
		},

		{
			name: "queue smaller than a batch",
			file: "ingest:\n  max_batch: 5000\n  queue_readings: 100\n",
			want: "meridian: invalid config: ingest.queue_readings: must be >= ingest.max_batch (5000), got 100",
		},
		{
			name: "admin key malformed, not echoed",
			env:  map[string]string{"MERIDIAN_DEVICES_ADMIN_KEY": "hunter2"},
			want: `meridian: invalid config: devices.admin_key: must be empty or "mak_" followed by 32-200 characters of [A-Za-z0-9_-], got 7 characters`,
		},
		{
			name: "readings per second not a number",
			file: "devices:\n  readings_per_second: fast\n",
			want: `meridian: invalid config: devices.readings_per_second: must be a number, got "fast"`,
		},
		{
			name: "missing file",
			file: "-",
			want: "meridian: invalid config: read config file CONFIG: open CONFIG: no such file or directory",
		},
		{
			name: "broken yaml",
			file: "ingest:\n  max_batch: [\n",
			want: "meridian: invalid config: read config file CONFIG: While parsing config: yaml: line 2: did not find expected node content",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("MERIDIAN_DEVICES_ADMIN_KEY", "") // keep the admin-key cases independent
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := []string{"config", "print"}
			want := tt.want
			if tt.file != "" {
				var path string
				if tt.file == "-" {
					path = filepath.Join(t.TempDir(), "absent.yaml")
				} else {
					path = writeFile(t, "meridian.yaml", tt.file)
				}
				args = append(args, "--config", path)
				want = strings.ReplaceAll(want, "CONFIG", path)
			}
			args = append(args, tt.flags...)
			out, line, code := runCLI(t, args...)
			if line != want {
				t.Errorf("error line\n got: %s\nwant: %s", line, want)
			}
			if code != 2 {
				t.Errorf("exit code = %d, want 2", code)
			}
			if out != "" {
				t.Errorf("printed a config despite the error:\n%s", out)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	cleanEnv(t)
	file := writeFile(t, "meridian.yaml", `
server:
  listen: "127.0.0.1:1111"
  data_dir: /from/file
  log_level: warn
ingest:
  max_batch: 10
  heartbeat: 30s
`)
	t.Setenv("MERIDIAN_SERVER_DATA_DIR", "/from/env")
	t.Setenv("MERIDIAN_INGEST_HEARTBEAT", "45s")
	t.Setenv("MERIDIAN_SERVER_LOG_LEVEL", "error")
	t.Setenv("MERIDIAN_INGEST_WRITERS", "3")
	t.Setenv("MERIDIAN_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")

	root := newRootCmd(new(bytes.Buffer), new(bytes.Buffer))
	if err := root.PersistentFlags().Parse([]string{"--config", file, "--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(root.PersistentFlags())
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Server.Listen = "127.0.0.1:1111"                              // file over default
	want.Server.DataDir = "/from/env"                                  // env over file
	want.Server.LogLevel = "debug"                                     // flag over env
	want.Ingest.MaxBatch = 10                                          // file
	want.Ingest.Heartbeat = 45 * time.Second                           // env over file
	want.Ingest.Writers = 3                                            // env, no file entry
	want.Server.TrustedProxies = []string{"10.0.0.0/8", "192.168.1.1"} // comma list
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config\n got: %+v\nwant: %+v", cfg, want)
	}
}

// TestEnvWithoutFile sets every key through its env var alone: each must
// be bound, so env works with no config file naming the key.
func TestEnvWithoutFile(t *testing.T) {
	for _, s := range settingsTable() {
		t.Run(s.key, func(t *testing.T) {
			cleanEnv(t)
			def := DefaultConfig()
			var raw string
			var want any
			switch d := reflect.ValueOf(s.field(&def)).Elem().Interface().(type) {
			case string:
				raw, want = "x", "x"
			case int:
				raw, want = "7", 7
			case int32:
				raw, want = "7", int32(7)
			case int64:
				raw, want = "7", int64(7)
			case float64:
				raw, want = "7.5", 7.5
			case bool:
				raw, want = fmt.Sprint(!d), !d
			case time.Duration:
				raw, want = "7s", 7*time.Second
			case []string:
				raw, want = "a, b", []string{"a", "b"}
			default:
				t.Fatalf("no test value for type %T", d)
			}
			t.Setenv(envName(s.key), raw)
			cfg, err := decodeConfig(nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := reflect.ValueOf(s.field(&cfg)).Elem().Interface(); !reflect.DeepEqual(got, want) {
				t.Errorf("%s=%q gave %#v, want %#v", envName(s.key), raw, got, want)
			}
		})
	}
}

func TestConfigPrintMasksSecretsAndRoundTrips(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MERIDIAN_STORAGE_URL", "postgres://meridian:s3cret@db.example:5432/meridian?sslmode=require")
	t.Setenv("MERIDIAN_INGEST_FLUSH_INTERVAL", "250ms")
	out, line, code := runCLI(t, "config", "print")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, line)
	}
	if strings.Contains(out, "s3cret") {
		t.Fatalf("config print leaked the password:\n%s", out)
	}
	if !strings.Contains(out, "url: postgres://meridian:***@db.example:5432/meridian?sslmode=require") {
		t.Errorf("storage.url not masked as expected:\n%s", out)
	}

	// The printed YAML is a valid config file that yields the same config
	// (apart from the masked secret).
	cleanEnv(t)
	path := writeFile(t, "printed.yaml", out)
	out2, line, code := runCLI(t, "config", "print", "--config", path)
	if code != 0 {
		t.Fatalf("printed config does not load: exit %d: %s", code, line)
	}
	if out2 != out {
		t.Errorf("round trip changed the config\nfirst:\n%s\nsecond:\n%s", out, out2)
	}
}

func TestConfigPrintMasksAdminKey(t *testing.T) {
	cleanEnv(t)
	key := "mak_" + strings.Repeat("k", 40)
	t.Setenv("MERIDIAN_DEVICES_ADMIN_KEY", key)
	t.Setenv("MERIDIAN_DEVICES_PROVISIONING_KEY", "fleet-secret-0123456789")
	out, line, code := runCLI(t, "config", "print")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, line)
	}
	if strings.Contains(out, key) || strings.Contains(out, "fleet-secret") {
		t.Fatalf("config print leaked a secret:\n%s", out)
	}
	for _, want := range []string{"admin_key: '***'", "key: '***'"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// TestDocsUpToDate keeps docs/config.md equal to `meridian config docs`.
func TestDocsUpToDate(t *testing.T) {
	committed, err := os.ReadFile(filepath.Join("..", "..", "docs", "config.md"))
	if err != nil {
		t.Fatalf("read docs/config.md: %v (regenerate with: go generate ./cmd/meridian)", err)
	}
	if string(committed) != renderDocs() {
		t.Fatal("docs/config.md is out of date; regenerate with: go generate ./cmd/meridian")
	}
}

// TestSettingsCoverEveryField fails when a package adds a config field that
// has no key (it could not be set, and docs would not mention it), or when a
// key points at a field twice.
func TestSettingsCoverEveryField(t *testing.T) {
	var cfg Config
	seen := map[uintptr]string{}
	for _, s := range settingsTable() {
		p := reflect.ValueOf(s.field(&cfg)).Pointer()
		if other, dup := seen[p]; dup {
			t.Errorf("%s and %s set the same field", s.key, other)
		}
		seen[p] = s.key
		if s.doc == "" {
			t.Errorf("%s has no description", s.key)
		}
		section, _, _ := strings.Cut(s.key, ".")
		if !slices.ContainsFunc(sectionDocs, func(d conf.Section) bool { return d.Name == section }) {
			t.Errorf("%s: section %q is not in sectionDocs, so docs/config.md would omit it", s.key, section)
		}
	}
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		if v.Kind() == reflect.Struct && v.Type() != reflect.TypeFor[time.Duration]() {
			for i := 0; i < v.NumField(); i++ {
				if v.Type().Field(i).IsExported() {
					walk(v.Field(i), path+"."+v.Type().Field(i).Name)
				}
			}
			return
		}
		if _, ok := seen[v.Addr().Pointer()]; !ok && !sharedField(&cfg, v) {
			t.Errorf("field Config%s has no entry in settingsTable", path)
		}
	}
	walk(reflect.ValueOf(&cfg).Elem(), "")
}

// sharedField reports whether v is a backend field filled from shared keys
// (backend.Config.PostgresConfig, SQLiteConfig) or set by a command
// (AllowPrivilegedQuery, by `meridian query`), which has no key of its own.
func sharedField(c *Config, v reflect.Value) bool {
	p := v.Addr().Pointer()
	for _, f := range []any{&c.Storage.Postgres.URL, &c.Storage.Postgres.Retention.Raw,
		&c.Storage.Postgres.Retention.Rollups, &c.Storage.Postgres.Migrate,
		&c.Storage.SQLite.Path, &c.Storage.SQLite.Retention.Raw,
		&c.Storage.SQLite.Retention.Rollups, &c.Storage.SQLite.Migrate,
		&c.Storage.Postgres.AllowPrivilegedQuery} {
		if reflect.ValueOf(f).Pointer() == p {
			return true
		}
	}
	return false
}
