package storagetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultPostgresURL is where integration tests find PostgreSQL when
// MERIDIAN_TEST_PG_URL is not set: the machine's own server, trust auth.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// PostgresAdminURL is the server tests connect to in order to create and
// drop their databases: MERIDIAN_TEST_PG_URL, else DefaultPostgresURL.
func PostgresAdminURL() string {
	if u := os.Getenv("MERIDIAN_TEST_PG_URL"); u != "" {
		return u
	}
	return DefaultPostgresURL
}

// NewPostgresDB creates a fresh database (meridian_test_<random>) for one
// test and drops it at cleanup, returning its URL, so tests can run in
// parallel and leave nothing behind. When PostgreSQL is unreachable it fails
// the test under CI=true (CI must not pass by skipping) and skips it loudly
// otherwise.
func NewPostgresDB(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, PostgresAdminURL())
	if err != nil {
		msg := fmt.Sprintf("PostgreSQL unreachable at MERIDIAN_TEST_PG_URL (%v)", err)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip("SKIPPING POSTGRES TESTS: " + msg)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "meridian_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("create test database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, PostgresAdminURL())
		if err != nil {
			tb.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			tb.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(PostgresAdminURL())
	if err != nil {
		tb.Fatalf("parse MERIDIAN_TEST_PG_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// NewPostgresRole names a unique login role (meridian_query_<random>) and
// returns it with dbURL changed to log in as it. The caller creates the role
// (postgres.Store.CreateQueryRole); at cleanup it is dropped, with its
// grants and sessions, if it exists. Tests run as a superuser, so a store
// that serves ad-hoc SQL needs such a role (storage.postgres.query_url).
func NewPostgresRole(tb testing.TB, dbURL string) (role, roleURL string) {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	role = "meridian_query_" + hex.EncodeToString(b[:])
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatalf("parse database URL: %v", err)
	}
	u.User = url.User(role)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			tb.Errorf("drop role %s: %v", role, err)
			return
		}
		defer c.Close(ctx)
		var exists bool
		if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil || !exists {
			return
		}
		id := pgx.Identifier{role}.Sanitize()
		for _, q := range []string{
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '` + role + `'`,
			"DROP OWNED BY " + id,
			"DROP ROLE " + id,
		} {
			if _, err := c.Exec(ctx, q); err != nil {
				tb.Errorf("drop role %s: %s: %v", role, q, err)
				return
			}
		}
	})
	return role, u.String()
}
