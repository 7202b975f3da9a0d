package devices

import (
	"context"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// newPGDatabase is a fresh database for one test (storagetest.NewPostgresDB).
func newPGDatabase(t *testing.T) string { return storagetest.NewPostgresDB(t) }

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
