package backend

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestOpenSQLite(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "state")
	st, err := Open(ctx, DefaultConfig(), dir, true, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if want := filepath.Join(dir, SQLiteFile); st.Kind != KindSQLite || st.Where != want {
		t.Errorf("kind %q at %q, want %q at %q", st.Kind, st.Where, KindSQLite, want)
	}
	if err := st.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	ms, err := st.MigrateStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.Mode != storage.ModeSQLite || ms.Current != ms.Latest || len(ms.Pending) != 0 {
		t.Errorf("status after migrating at open = %+v", ms)
	}
}

func TestOpenPostgres(t *testing.T) {
	dbURL := storagetest.NewPostgresDB(t)
	ctx := t.Context()
	cfg := DefaultConfig()
	cfg.URL = dbURL
	t.Run("migrated", func(t *testing.T) {
		st, err := Open(ctx, cfg, t.TempDir(), true, discard())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if st.Kind != KindPostgres {
			t.Errorf("kind %q, want %q", st.Kind, KindPostgres)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := st.WaitReady(wctx); err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
		ms, err := st.MigrateStatus(wctx)
		if err != nil {
			t.Fatal(err)
		}
		if ms.Current != ms.Latest || ms.TooNew {
			t.Errorf("status after migrating = %+v", ms)
		}
	})
	t.Run("where is masked", func(t *testing.T) {
		withPassword := strings.Replace(dbURL, "postgres://postgres@", "postgres://postgres:hunter2@", 1)
		if withPassword == dbURL {
			t.Skip("MERIDIAN_TEST_PG_URL has an unexpected form")
		}
		c := cfg
		c.URL = withPassword
		st, err := Open(ctx, c, t.TempDir(), false, discard())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if strings.Contains(st.Where, "hunter2") || !strings.Contains(st.Where, "postgres:***@") {
			t.Errorf("Where = %q, want the password masked", st.Where)
		}
	})
}

// openUnmigrated opens a fresh PostgreSQL database without migrating it,
// closed at cleanup.
func openUnmigrated(t *testing.T) *Opened {
	t.Helper()
	cfg := DefaultConfig()
	cfg.URL = storagetest.NewPostgresDB(t)
	st, err := Open(t.Context(), cfg, t.TempDir(), false, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestWaitReadyNamesTheStore: a store that cannot become ready (here an
// unmigrated database opened without migrating) fails naming the store,
// never its password.
func TestWaitReadyNamesTheStore(t *testing.T) {
	st := openUnmigrated(t)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	err := st.WaitReady(ctx)
	if err == nil {
		t.Fatal("an unmigrated store opened without migrating became ready")
	}
	if !strings.HasPrefix(err.Error(), "postgres store at "+st.Where+": ") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady error = %v", err)
	}
}

// TestWaitMigrated: a command that opened an unmigrated store without
// migrating hears so at once, with the versions and what to run.
func TestWaitMigrated(t *testing.T) {
	st := openUnmigrated(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := st.WaitMigrated(ctx)
	if err == nil || !strings.Contains(err.Error(), "is at schema version 0, this binary needs") ||
		!strings.Contains(err.Error(), "run `meridian migrate`") {
		t.Fatalf("WaitMigrated = %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("WaitMigrated waited for the deadline (%v) instead of failing at once", time.Since(start))
	}
}
