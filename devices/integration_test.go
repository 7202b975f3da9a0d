package devices

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// sessionRepo is the extra a backend needs for the integration scenario to
// record a session the way ingest's wiring does.
type sessionRepo interface {
	Repo
	OpenSession(ctx context.Context, s storage.Session) error
}

// exerciseRegistry runs the registry's main paths against a real backend:
// what the fake cannot prove is that the SQL keeps the contracts the service
// relies on (expiry comparisons, revocation, cascades, label round trips).
func exerciseRegistry(t *testing.T, repo sessionRepo) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.TokenGrace = time.Hour
	cfg.Provisioning.Key = testProvKey
	s := NewService(repo, cfg, nil)
	// Start from the wall clock (rounded for the database's microsecond
	// precision) so backend defaults and ours agree.
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	s.now = clk.Now
	k := &kicks{}
	s.OnKick(k.record)

	admin, err := s.EnsureAdminKey(ctx, "")
	if err != nil || admin == "" {
		t.Fatalf("EnsureAdminKey = %q, %v", admin, err)
	}
	if again, err := s.EnsureAdminKey(ctx, ""); again != "" || err != nil {
		t.Fatalf("second EnsureAdminKey = %q, %v", again, err)
	}
	if key, err := s.AuthenticateOperator(ctx, admin); err != nil || key.Role != RoleAdmin {
		t.Fatalf("admin key: %+v, %v", key, err)
	}

	d, tok, err := s.AddDevice(ctx, "boiler-7", "Boiler 7", map[string]string{"site": "north", "kind": "boiler"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddDevice(ctx, "boiler-7", "", nil); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, _, err := s.AddDevice(ctx, "pump-1", "", map[string]string{"site": "south"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListDevices(ctx, map[string]string{"site": "north"})
	if err != nil || len(got) != 1 || got[0].ID != d.ID || got[0].Labels["kind"] != "boiler" || got[0].Name != "Boiler 7" {
		t.Fatalf("ListDevices = %+v, %v", got, err)
	}
	mustDevice(t, s, tok, "boiler-7")
	if _, err := s.AuthenticateDevice(ctx, admin); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("API key as device: %v", err)
	}
	if _, err := s.AuthenticateOperator(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("device token as operator: %v", err)
	}

	// Rotation: the old token lives exactly TokenGrace.
	newTok, err := s.RotateToken(ctx, "boiler-7")
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour - time.Second)
	mustDevice(t, s, tok, "boiler-7")
	clk.Advance(time.Second)
	mustRefuse(t, s, tok)
	mustDevice(t, s, newTok, "boiler-7")

	// Disable and enable.
	if err := s.SetEnabled(ctx, "boiler-7", false); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, s, newTok)
	if err := s.SetEnabled(ctx, "boiler-7", true); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, newTok, "boiler-7")

	// Revocation is immediate.
	if err := s.RevokeTokens(ctx, "boiler-7"); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, s, newTok)
	if got := k.take(); !slices.Equal(got, []string{"boiler-7: " + KickDisabled, "boiler-7: " + KickRevoked}) {
		t.Fatalf("kicks = %v", got)
	}

	// Sessions show up in Device.
	if err := repo.OpenSession(ctx, storage.Session{ID: "s-1", DeviceID: "boiler-7", Node: "n1", RemoteAddr: "10.0.0.7:5000", Transport: "ws", StartedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	_, sess, err := s.Device(ctx, "boiler-7")
	if err != nil || len(sess) != 1 || sess[0].ID != "s-1" || sess[0].EndedAt != nil {
		t.Fatalf("Device sessions = %+v, %v", sess, err)
	}

	// Provisioning: new id, taken id, reprovision.
	ptok, err := s.Provision(ctx, "esp-01", testProvKey)
	if err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, ptok, "esp-01")
	if _, err := s.Provision(ctx, "esp-01", testProvKey); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("provision taken id: %v", err)
	}
	s.cfg.Provisioning.AllowReprovision = true
	ptok2, err := s.Provision(ctx, "esp-01", testProvKey)
	if err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, s, ptok)
	mustDevice(t, s, ptok2, "esp-01")

	// Delete removes tokens; the device is gone.
	if err := s.DeleteDevice(ctx, "esp-01", true); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, s, ptok2)
	if _, _, err := s.Device(ctx, "esp-01"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted device: %v", err)
	}
	if err := s.DeleteDevice(ctx, "esp-01", false); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}

	// API keys: the last admin stays; a viewer is revoked at once.
	adminKey, _ := s.AuthenticateOperator(ctx, admin)
	if err := s.RevokeAPIKey(ctx, adminKey.ID); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("revoke last admin: %v", err)
	}
	vk, viewer, err := s.AddAPIKey(ctx, "wall", RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeAPIKey(ctx, vk.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateOperator(ctx, viewer); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("revoked viewer: %v", err)
	}

	// The admin API over real HTTP on the real store.
	srv := httptest.NewServer(s.AdminHandler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/admin/devices?label=site=south", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"id": "pump-1"`) || strings.Contains(string(body), "boiler-7") {
		t.Fatalf("GET devices: %d %s", resp.StatusCode, body)
	}
}

func mustDevice(t *testing.T, s *Service, tok, want string) {
	t.Helper()
	got, err := s.AuthenticateDevice(context.Background(), tok)
	if err != nil || got != want {
		t.Fatalf("AuthenticateDevice = %q, %v; want %q", got, err, want)
	}
}

func mustRefuse(t *testing.T, s *Service, tok string) {
	t.Helper()
	if _, err := s.AuthenticateDevice(context.Background(), tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("token accepted or wrong error: %v", err)
	}
}
