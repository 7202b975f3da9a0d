package sim_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	sim "github.com/meridian-iot/meridian/firmware-sim"
	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// newTestDB is a fresh database for one test (storagetest.NewPostgresDB).
func newTestDB(tb testing.TB) string { return storagetest.NewPostgresDB(tb) }

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

// pgxQuery reads the store back with a plain pgx connection (the e2e test,
// where the server runs in another process). time comes back as time.Time.
func pgxQuery(dbURL string) sim.QueryFunc {
	return func(ctx context.Context, sql string) ([][]any, error) {
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return nil, err
		}
		defer c.Close(ctx)
		rows, err := c.Query(ctx, sql)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out [][]any
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, rows.Err()
	}
}

// storeQuery adapts a backend's read-only Query, the way cmd/meridian does.
func storeQuery(q func(context.Context, string, storage.QueryOptions) (storage.QueryResult, error)) sim.QueryFunc {
	return func(ctx context.Context, sql string) ([][]any, error) {
		res, err := q(ctx, sql, storage.QueryOptions{Timeout: time.Minute, MaxRows: 10_000_000})
		if err != nil {
			return nil, err
		}
		if res.Truncated {
			return nil, fmt.Errorf("result truncated at %d rows", len(res.Rows))
		}
		return res.Rows, nil
	}
}

// pgHostPort returns host:port of a postgres URL.
func pgHostPort(tb testing.TB, dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	return u.Host
}

// withHost replaces the host:port of a postgres URL.
func withHost(dbURL, hostport string) string {
	u, _ := url.Parse(dbURL)
	u.Host = hostport
	return u.String()
}
