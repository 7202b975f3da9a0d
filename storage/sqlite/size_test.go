package sqlite

import (
	"context"
	"testing"

	"github.com/meridian-iot/meridian/storage"
)

func TestDatabaseSize(t *testing.T) {
	s := newTestStore(t, storage.Retention{})
	n, err := s.DatabaseSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n < 4096 {
		t.Fatalf("DatabaseSize = %d, want at least one page of a migrated database", n)
	}
}
