package sqlite

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// The handshake path's lookups (token, device, watermark) as a reconnect
// storm runs them with the credential cache cold: prepared once, then
// point lookups on the read pool.
//
//	go test -run '^$' -bench Lookup -count 5 ./storage/sqlite/
func BenchmarkLookupHandshake(b *testing.B) {
	ctx := context.Background()
	s := newTestStore(b, storage.Retention{})
	const n = 1000
	hashes := make([][]byte, n)
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		if err := s.CreateDevice(ctx, storage.Device{ID: id, Enabled: true, CreatedAt: time.Now()}); err != nil {
			b.Fatal(err)
		}
		h := sha256.Sum256([]byte(id))
		hashes[i] = h[:]
		if err := s.AddDeviceToken(ctx, storage.DeviceToken{Hash: hashes[i], DeviceID: id, CreatedAt: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		t, err := s.LookupDeviceToken(ctx, hashes[i%n])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.GetDevice(ctx, t.DeviceID); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Watermark(ctx, t.DeviceID); err != nil {
			b.Fatal(err)
		}
	}
}

// A lookup before the tables exist fails cleanly and prepares nothing; the
// same lookup works once they do.
func TestLookupBeforeMigrate(t *testing.T) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Path = t.TempDir() + "/m.db"
	cfg.Migrate = true
	s, err := Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.prepared(ctx, `SELECT x FROM no_such_table`); err == nil {
		t.Fatal("preparing against a missing table succeeded")
	}
	if len(s.look.stmts) != 0 {
		t.Fatal("a failed prepare was cached")
	}
	if _, err := s.LookupDeviceToken(ctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LookupDeviceToken(unknown) = %v, want ErrNotFound", err)
	}
}
