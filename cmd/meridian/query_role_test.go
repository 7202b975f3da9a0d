package main

import (
	"strings"
	"testing"

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
