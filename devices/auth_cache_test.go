package devices

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// authCached authenticates tok once through the store and proves the second
// answer comes from the cache (the store fails meanwhile).
func authCached(t *testing.T, s *Service, repo *fakeRepo, tok string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.AuthenticateDevice(ctx, tok); err != nil {
		t.Fatalf("AuthenticateDevice: %v", err)
	}
	repo.mu.Lock()
	repo.fail = errors.New("store down")
	repo.mu.Unlock()
	if _, err := s.AuthenticateDevice(ctx, tok); err != nil {
		t.Fatalf("AuthenticateDevice with the store down (want a cache hit): %v", err)
	}
	repo.mu.Lock()
	repo.fail = nil
	repo.mu.Unlock()
}

func TestTokenCacheRevocationIsImmediate(t *testing.T) {
	cases := []struct {
		name   string
		grace  time.Duration
		action func(ctx context.Context, s *Service, repo *fakeRepo, id string) error
	}{
		{"revoke", 0, func(ctx context.Context, s *Service, _ *fakeRepo, id string) error { return s.RevokeTokens(ctx, id) }},
		{"disable", 0, func(ctx context.Context, s *Service, _ *fakeRepo, id string) error {
			return s.SetEnabled(ctx, id, false)
		}},
		{"delete", 0, func(ctx context.Context, s *Service, _ *fakeRepo, id string) error {
			return s.DeleteDevice(ctx, id, false)
		}},
		{"rotate without grace", 0, func(ctx context.Context, s *Service, _ *fakeRepo, id string) error {
			_, err := s.RotateToken(ctx, id)
			return err
		}},
		// Another node disabled the device (the shared store changed under
		// this node) and its kick arrived here: the wiring calls
		// ForgetDevice before closing the local session.
		{"kick from another node", 0, func(ctx context.Context, s *Service, repo *fakeRepo, id string) error {
			if err := repo.SetDeviceEnabled(ctx, id, false); err != nil {
				return err
			}
			s.ForgetDevice(id)
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TokenGrace = c.grace
			s, repo, _, _ := newTestService(cfg)
			ctx := context.Background()
			_, tok, err := s.AddDevice(ctx, "d-1", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			_, other, err := s.AddDevice(ctx, "d-2", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			authCached(t, s, repo, tok)
			authCached(t, s, repo, other)
			if err := c.action(ctx, s, repo, "d-1"); err != nil {
				t.Fatal(err)
			}
			// No clock step: the refusal must not wait for the TTL.
			if _, err := s.AuthenticateDevice(ctx, tok); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("after %s: AuthenticateDevice = %v, want ErrUnauthorized at once", c.name, err)
			}
			// Other devices keep their cache entries.
			repo.mu.Lock()
			repo.fail = errors.New("store down")
			repo.mu.Unlock()
			if dev, err := s.AuthenticateDevice(ctx, other); err != nil || dev != "d-2" {
				t.Fatalf("other device after %s = %q, %v; want a cache hit", c.name, dev, err)
			}
		})
	}
}

func TestTokenCacheTTLAndGrace(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TokenGrace = 500 * time.Millisecond
	s, repo, clk, _ := newTestService(cfg)
	ctx := context.Background()
	_, tok, err := s.AddDevice(ctx, "d", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A change this node is never told about holds after at most the TTL.
	authCached(t, s, repo, tok)
	if err := repo.SetDeviceEnabled(ctx, "d", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateDevice(ctx, tok); err != nil {
		t.Fatalf("within the TTL the cached answer stands: %v", err)
	}
	clk.Advance(credCacheTTL)
	if _, err := s.AuthenticateDevice(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("after the TTL: %v, want ErrUnauthorized", err)
	}
	// A rotation grace shorter than the TTL still ends on time: the cached
	// entry carries the old token's expiry.
	if err := s.SetEnabled(ctx, "d", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateToken(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	authCached(t, s, repo, tok)
	clk.Advance(cfg.TokenGrace)
	if _, err := s.AuthenticateDevice(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("old token after the grace, within the TTL: %v, want ErrUnauthorized", err)
	}
}

// slowLookupRepo answers token lookups from the store as it was, then
// stalls until released: a lookup in flight while a revocation commits.
type slowLookupRepo struct {
	*fakeRepo
	inLookup, release chan struct{}
}

func (r *slowLookupRepo) LookupDeviceToken(ctx context.Context, hash []byte) (storage.DeviceToken, error) {
	tok, err := r.fakeRepo.LookupDeviceToken(ctx, hash)
	r.inLookup <- struct{}{}
	<-r.release
	return tok, err
}

func TestTokenCacheLookupRacingRevocation(t *testing.T) {
	fake := newFakeRepo()
	repo := &slowLookupRepo{fakeRepo: fake, inLookup: make(chan struct{}), release: make(chan struct{})}
	s := NewService(repo, DefaultConfig(), nil)
	ctx := context.Background()
	_, tok, err := s.AddDevice(ctx, "d", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.AuthenticateDevice(ctx, tok); done <- err }()
	<-repo.inLookup // the lookup has read the token as still valid
	if err := s.RevokeTokens(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	repo.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatalf("the lookup in flight before the revocation: %v", err)
	}
	// Its stale answer must not have been cached.
	go func() { <-repo.inLookup; repo.release <- struct{}{} }()
	if _, err := s.AuthenticateDevice(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("after the revocation: %v, want ErrUnauthorized", err)
	}
}

func TestAPIKeyCache(t *testing.T) {
	s, repo, clk, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	k, secret, err := s.AddAPIKey(ctx, "grafana", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddAPIKey(ctx, "admin", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateOperator(ctx, secret); err != nil {
		t.Fatal(err)
	}
	// /metrics keeps answering while the store is saturated.
	repo.fail = errors.New("pool exhausted")
	if got, err := s.AuthenticateOperator(ctx, secret); err != nil || got.ID != k.ID {
		t.Fatalf("cached key = %+v, %v", got, err)
	}
	clk.Advance(credCacheTTL)
	if _, err := s.AuthenticateOperator(ctx, secret); err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("after the TTL the store is asked again: %v", err)
	}
	repo.fail = nil
	if _, err := s.AuthenticateOperator(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeAPIKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateOperator(ctx, secret); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked key: %v, want ErrUnauthorized at once", err)
	}
}

func TestCredCacheBounded(t *testing.T) {
	var c credCache[string]
	now := time.Unix(1_700_000_000, 0)
	for i := range credCacheMax + 100 {
		c.put(fmt.Appendf(nil, "h%d", i), "o", "v", c.generation(), now)
	}
	if n := len(c.m); n != credCacheMax {
		t.Fatalf("%d entries, want the bound %d", n, credCacheMax)
	}
	if _, ok := c.get([]byte("h0"), now); !ok {
		t.Fatal("an entry within its TTL was evicted")
	}
	// Once the entries have expired a full cache sweeps and takes new ones.
	later := now.Add(credCacheTTL)
	c.put([]byte("new"), "o", "v", c.generation(), later)
	if _, ok := c.get([]byte("new"), later); !ok || len(c.m) != 1 {
		t.Fatalf("after the sweep: %d entries, new cached %t", len(c.m), ok)
	}
	// A lookup that started before a forget does not fill the cache.
	gen := c.generation()
	c.forget("o")
	c.put([]byte("stale"), "o", "v", gen, later)
	if _, ok := c.get([]byte("stale"), later); ok {
		t.Fatal("a lookup older than a forget was cached")
	}
}
