package devices

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/meridian-iot/meridian/storage"
)

var apiKeyRe = regexp.MustCompile(`^mak_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$`)

func TestAPIKeys(t *testing.T) {
	s, repo, clk, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	k, secret, err := s.AddAPIKey(ctx, "grafana", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if !apiKeyRe.MatchString(secret) || !strings.HasPrefix(secret, APIKeyPrefix+k.ID+"_") {
		t.Fatalf("key %q (id %s) has the wrong shape", secret, k.ID)
	}
	if string(repo.keys[0].Hash) != string(hashSecret(secret)) {
		t.Fatal("stored API key hash is not SHA-256 of the key")
	}
	got, err := s.AuthenticateOperator(ctx, secret)
	if err != nil || got.ID != k.ID || got.Role != RoleViewer {
		t.Fatalf("AuthenticateOperator = %+v, %v", got, err)
	}
	if _, _, err := s.AddAPIKey(ctx, "x", "root"); err == nil || !strings.HasPrefix(err.Error(), "role: ") {
		t.Fatalf("bad role: %v", err)
	}
	// Revoking the viewer works; the key stops at once.
	if err := s.RevokeAPIKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateOperator(ctx, secret); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked key: %v", err)
	}
	if err := s.RevokeAPIKey(ctx, k.ID); err != nil {
		t.Fatalf("second revoke should be a no-op: %v", err)
	}
	if err := s.RevokeAPIKey(ctx, "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	// The last admin key cannot be revoked; with a second one it can.
	a1, _, _ := s.AddAPIKey(ctx, "a1", RoleAdmin)
	if err := s.RevokeAPIKey(ctx, a1.ID); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("last admin: %v", err)
	}
	s.AddAPIKey(ctx, "a2", RoleAdmin)
	clk.Advance(1)
	if err := s.RevokeAPIKey(ctx, a1.ID); err != nil {
		t.Fatal(err)
	}
	ks, _ := s.ListAPIKeys(ctx)
	if len(ks) != 3 {
		t.Fatalf("ListAPIKeys = %d keys, want 3", len(ks))
	}
}

// A device token never authenticates as an operator, an API key never as a
// device, whatever the store holds.
func TestCredentialKindsAreSeparate(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	_, tok, _ := s.AddDevice(ctx, "d", "", nil)
	_, key, _ := s.AddAPIKey(ctx, "ops", RoleAdmin)
	tests := []struct {
		name string
		run  func() error
	}{
		{"device token as operator", func() error { _, err := s.AuthenticateOperator(ctx, tok); return err }},
		{"API key as device", func() error { _, err := s.AuthenticateDevice(ctx, key); return err }},
		{"device token with API key prefix", func() error {
			_, err := s.AuthenticateOperator(ctx, APIKeyPrefix+strings.TrimPrefix(tok, DeviceTokenPrefix))
			return err
		}},
		{"API key with device prefix", func() error {
			_, err := s.AuthenticateDevice(ctx, DeviceTokenPrefix+strings.TrimPrefix(key, APIKeyPrefix))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("err = %v, want ErrUnauthorized", err)
			}
		})
	}
}

func TestRequireRole(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	_, tok, _ := s.AddDevice(ctx, "d", "", nil)
	_, viewer, _ := s.AddAPIKey(ctx, "v", RoleViewer)
	_, admin, _ := s.AddAPIKey(ctx, "a", RoleAdmin)
	rk, revoked, _ := s.AddAPIKey(ctx, "r", RoleViewer)
	s.RevokeAPIKey(ctx, rk.ID)

	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, found := KeyFromContext(r.Context()); !found {
			t.Error("no key in context")
		}
		w.WriteHeader(http.StatusTeapot)
	})
	tests := []struct {
		name, role, auth string
		want             int
	}{
		{"no header, viewer route", RoleViewer, "", 401},
		{"no header, admin route", RoleAdmin, "", 401},
		{"basic auth", RoleViewer, "Basic dXNlcjpwYXNz", 401},
		{"garbage", RoleViewer, "Bearer nonsense", 401},
		{"device token", RoleViewer, "Bearer " + tok, 401},
		{"revoked key", RoleViewer, "Bearer " + revoked, 401},
		{"viewer on viewer", RoleViewer, "Bearer " + viewer, 418},
		{"viewer on admin", RoleAdmin, "Bearer " + viewer, 403},
		{"admin on viewer", RoleViewer, "Bearer " + admin, 418},
		{"admin on admin", RoleAdmin, "Bearer " + admin, 418},
		{"lowercase scheme", RoleAdmin, "bearer " + admin, 418},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/x", nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			s.RequireRole(tt.role, ok).ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tt.want, rec.Body)
			}
			if tt.want == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
}

func TestRequireRoleUnknownRolePanics(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	s.RequireRole("root", http.NotFoundHandler())
}

func TestEnsureAdminKey(t *testing.T) {
	ctx := context.Background()
	configured := "mak_" + strings.Repeat("0123456789abcdef", 4)
	t.Run("empty store creates and prints once", func(t *testing.T) {
		s, _, _, _ := newTestService(DefaultConfig())
		key, err := s.EnsureAdminKey(ctx, "")
		if err != nil || !apiKeyRe.MatchString(key) {
			t.Fatalf("EnsureAdminKey = %q, %v", key, err)
		}
		if k, err := s.AuthenticateOperator(ctx, key); err != nil || k.Role != RoleAdmin {
			t.Fatalf("printed key: %+v, %v", k, err)
		}
		if again, err := s.EnsureAdminKey(ctx, ""); again != "" || err != nil {
			t.Fatalf("second call = %q, %v", again, err)
		}
	})
	t.Run("store with a revoked key only stays locked", func(t *testing.T) {
		s, _, _, _ := newTestService(DefaultConfig())
		k, _, _ := s.AddAPIKey(ctx, "v", RoleViewer)
		s.RevokeAPIKey(ctx, k.ID)
		if got, err := s.EnsureAdminKey(ctx, ""); got != "" || err != nil {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("configured key is registered, not printed", func(t *testing.T) {
		s, repo, _, _ := newTestService(DefaultConfig())
		s.AddAPIKey(ctx, "existing", RoleViewer)
		for range 2 { // idempotent
			got, err := s.EnsureAdminKey(ctx, configured)
			if got != "" || err != nil {
				t.Fatalf("got %q, %v", got, err)
			}
		}
		if len(repo.keys) != 2 {
			t.Fatalf("%d keys stored, want 2", len(repo.keys))
		}
		if k, err := s.AuthenticateOperator(ctx, configured); err != nil || k.Role != RoleAdmin {
			t.Fatalf("configured key: %+v, %v", k, err)
		}
	})
	t.Run("malformed configured key", func(t *testing.T) {
		s, _, _, _ := newTestService(DefaultConfig())
		if _, err := s.EnsureAdminKey(ctx, "hunter2"); err == nil {
			t.Fatal("accepted")
		}
	})
}
