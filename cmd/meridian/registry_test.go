package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestDeviceAndAPIKeyCommands runs the registry commands both ways — on the
// store directly and through a running server's admin API — and expects the
// same answers from each.
func TestDeviceAndAPIKeyCommands(t *testing.T) {
	cleanEnv(t)
	cfg := testConfig(t)
	ts := startServe(t, cfg)
	admin := waitAdminKey(t, ts)

	for _, mode := range []struct {
		name string
		args []string
	}{
		{"server", []string{"--server", ts.base, "--api-key", admin}},
		// The embedded store is opened while the server runs: SQLite allows
		// a second process (here, a second connection pool) on the file.
		{"local", []string{"--data-dir", cfg.Server.DataDir}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			id := "cli-" + mode.name
			cli := func(a ...string) string {
				t.Helper()
				out, line, code := runCLI(t, append(a, mode.args...)...)
				if code != 0 {
					t.Fatalf("meridian %s: exit %d: %s", strings.Join(a, " "), code, line)
				}
				return out
			}

			tok := strings.TrimSpace(cli("device", "add", id, "--name", "Boiler", "--label", "site=north"))
			if !strings.HasPrefix(tok, "mdt_") {
				t.Fatalf("device add printed %q, want a token", tok)
			}
			var rows []map[string]any
			if err := json.Unmarshal([]byte(cli("device", "list", "--label", "site=north", "--json")), &rows); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range rows {
				found = found || r["id"] == id
			}
			if !found {
				t.Errorf("device list --label site=north does not show %s: %v", id, rows)
			}
			var detail struct {
				Device   map[string]any   `json:"device"`
				Sessions []map[string]any `json:"sessions"`
			}
			if err := json.Unmarshal([]byte(cli("device", "show", id, "--json")), &detail); err != nil {
				t.Fatal(err)
			}
			if detail.Device["name"] != "Boiler" || detail.Sessions == nil {
				t.Errorf("device show --json = %+v", detail)
			}
			if out := cli("device", "disable", id); !strings.Contains(out, "disabled") {
				t.Errorf("device disable: %q", out)
			}
			if out := cli("device", "show", id); !strings.Contains(out, "state:      disabled") {
				t.Errorf("device show after disable:\n%s", out)
			}
			if tok2 := strings.TrimSpace(cli("device", "rotate-token", id)); !strings.HasPrefix(tok2, "mdt_") || tok2 == tok {
				t.Errorf("rotate-token printed %q", tok2)
			}
			key := strings.TrimSpace(cli("apikey", "add", "--role", "viewer", "--name", "ci-"+mode.name))
			if !strings.HasPrefix(key, "mak_") {
				t.Errorf("apikey add printed %q", key)
			}
			if out := cli("apikey", "list"); !strings.Contains(out, "ci-"+mode.name) {
				t.Errorf("apikey list lacks the new key:\n%s", out)
			}
			cli("device", "delete", id, "--purge")
			if _, line, code := runCLI(t, append([]string{"device", "show", id}, mode.args...)...); code == 0 || !strings.Contains(line, "not found") {
				t.Errorf("device show after delete: exit %d: %s", code, line)
			}
		})
	}
}
