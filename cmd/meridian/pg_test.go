package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testPGURL creates a fresh database on the test PostgreSQL
// (MERIDIAN_TEST_PG_URL), drops it at cleanup, and returns its URL. Without
// a reachable server it skips, or fails under CI=true.
func testPGURL(t *testing.T) string {
	t.Helper()
	base := os.Getenv("MERIDIAN_TEST_PG_URL")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at MERIDIAN_TEST_PG_URL unreachable under CI: %v", err)
		}
		t.Skipf("SKIPPING: PostgreSQL unreachable (%v); set MERIDIAN_TEST_PG_URL or run .ci/run", err)
	}
	defer admin.Close(context.Background())
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "meridian_test_" + hex.EncodeToString(rnd[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
