package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage/storagetest"
)

// TestMigrateCreatesQueryRole: `migrate --create-query-role` makes the role
// /v1/query logs in as, and `meridian query` then runs through it.
func TestMigrateCreatesQueryRole(t *testing.T) {
	cleanEnv(t)
	dbURL := testPGURL(t)
	role, roleURL := storagetest.NewPostgresRole(t, dbURL)
	out, line, code := runCLI(t, "migrate", "--create-query-role", role, "--storage-url", dbURL)
	if code != 0 || !strings.Contains(out, "query role: "+role) {
		t.Fatalf("migrate --create-query-role: exit %d: %s\n%s", code, line, out)
	}
	t.Setenv("MERIDIAN_STORAGE_POSTGRES_QUERY_URL", roleURL)
	if _, line, code := runCLI(t, "query", "SELECT count(*) FROM telemetry_1m", "--storage-url", dbURL); code != 0 {
		t.Fatalf("query as the role: exit %d: %s", code, line)
	}
	if _, line, code := runCLI(t, "query", "SELECT * FROM api_keys", "--storage-url", dbURL); code == 0 || !strings.Contains(line, "permission denied") {
		t.Fatalf("api_keys as the role: exit %d: %s", code, line)
	}
	_, line, code = runCLI(t, "migrate", "--create-query-role", "x", "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(line, "only for PostgreSQL") {
		t.Fatalf("--create-query-role on sqlite: exit %d: %s", code, line)
	}
}

// TestServeViewerQuery: through the whole server, a viewer key's /v1/query
// reads the public schema but not the API-key table (SQLite), and a
// PostgreSQL server whose role is a superuser with no query role refuses
// ad-hoc SQL, saying what to set.
func TestServeViewerQuery(t *testing.T) {
	ts := startServe(t, testConfig(t))
	admin := waitAdminKey(t, ts)
	req, err := http.NewRequest("POST", ts.base+"/v1/admin/apikeys", strings.NewReader(`{"name":"wall","role":"viewer"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		Key string `json:"key"`
	}
	err = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || created.Key == "" {
		t.Fatalf("create viewer key: %d %v", resp.StatusCode, err)
	}
	q := func(base, key, sql string) (int, string) {
		return get(t, base+"/v1/query?sql="+url.QueryEscape(sql), key)
	}
	if code, body := q(ts.base, created.Key, "SELECT id, name, role, hash FROM api_keys"); code != http.StatusForbidden {
		t.Errorf("viewer reads api_keys: %d %s", code, body)
	}
	if code, body := q(ts.base, created.Key, "SELECT count(*) FROM telemetry_1m"); code != 200 {
		t.Errorf("viewer reads telemetry_1m: %d %s", code, body)
	}

	cfg := testConfig(t)
	cfg.Storage.URL = testPGURL(t)
	pg := startServe(t, cfg)
	key := waitAdminKey(t, pg)
	var code int
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if code, body = q(pg.base, key, "SELECT 1"); code != http.StatusServiceUnavailable && !strings.Contains(body, "not ready") {
			break
		}
	}
	if code != http.StatusForbidden || !strings.Contains(body, "storage.postgres.query_url") {
		t.Errorf("postgres as superuser without a query role: %d %s", code, body)
	}
}
