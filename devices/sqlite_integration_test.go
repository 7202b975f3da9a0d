package devices

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/meridian-iot/meridian/storage/sqlite"
)

func TestRegistryOnSQLite(t *testing.T) {
	cfg := sqlite.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "meridian.db")
	cfg.Migrate = true
	st, err := sqlite.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	exerciseRegistry(t, st)
}
