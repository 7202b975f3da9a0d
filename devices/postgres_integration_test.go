package devices

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

	"github.com/meridian-iot/meridian/storage/postgres"
)

func pgAdminURL() string {
	if u := os.Getenv("MERIDIAN_TEST_PG_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// newPGDatabase creates an empty database for this test and drops it at
// cleanup. Unreachable PostgreSQL skips the test, or fails it when CI=true.
func newPGDatabase(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgAdminURL())
	if err != nil {
		msg := fmt.Sprintf("PostgreSQL unreachable at MERIDIAN_TEST_PG_URL: %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPING devices/postgres integration test: " + msg)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "meridian_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pgAdminURL())
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(pgAdminURL())
	if err != nil {
		t.Fatalf("parse MERIDIAN_TEST_PG_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func TestRegistryOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	cfg := postgres.DefaultConfig()
	cfg.URL = newPGDatabase(t)
	ctx := context.Background()
	st, err := postgres.Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := st.WaitReady(wctx); err != nil {
		t.Fatalf("postgres store not ready: %v", err)
	}
	exerciseRegistry(t, st)
}
