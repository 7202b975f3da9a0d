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
