package postgres

import (
	"context"
	"testing"

	"github.com/meridian-iot/meridian/storage"
)

func TestDatabaseSize(t *testing.T) {
	s := openTestStore(t, newTestDB(t), storage.Retention{})
	n, err := s.DatabaseSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n <= 0 {
		t.Fatalf("DatabaseSize = %d, want > 0", n)
	}
}
