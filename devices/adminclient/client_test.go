package adminclient_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/devices/adminclient"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// newServer runs the real admin handler over the real embedded store and
// returns an admin key and a viewer key for it.
func newServer(t *testing.T) (url, admin, viewer string) {
	t.Helper()
	ctx := context.Background()
	cfg := sqlite.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "meridian.db")
	cfg.Migrate = true
	st, err := sqlite.Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	svc := devices.NewService(st, devices.DefaultConfig(), nil)
	if admin, err = svc.EnsureAdminKey(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, viewer, err = svc.AddAPIKey(ctx, "dash", devices.RoleViewer); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.AdminHandler())
	t.Cleanup(srv.Close)
	return srv.URL, admin, viewer
}

func TestClientAgainstAdminAPI(t *testing.T) {
	ctx := context.Background()
	url, adminKey, viewerKey := newServer(t)
	c, err := adminclient.New(url, adminKey, adminclient.Options{})
	if err != nil {
		t.Fatal(err)
	}

	created, err := c.AddDevice(ctx, "boiler-1", "Boiler", map[string]string{"site": "north"})
	if err != nil {
		t.Fatal(err)
	}
	if created.Device.ID != "boiler-1" || created.Token == "" || created.Device.Labels["site"] != "north" {
		t.Fatalf("AddDevice = %+v", created)
	}
	if _, err := c.AddDevice(ctx, "other", "", nil); err != nil {
		t.Fatal(err)
	}

	list, err := c.ListDevices(ctx, map[string]string{"site": "north"})
	if err != nil || len(list) != 1 || list[0].ID != "boiler-1" {
		t.Fatalf("ListDevices(site=north) = %+v, %v", list, err)
	}
	detail, err := c.Device(ctx, "boiler-1")
	if err != nil || detail.Device.Name != "Boiler" || detail.Sessions == nil {
		t.Fatalf("Device = %+v, %v", detail, err)
	}
	if err := c.SetEnabled(ctx, "boiler-1", false); err != nil {
		t.Fatal(err)
	}
	if detail, _ := c.Device(ctx, "boiler-1"); detail.Device.Enabled {
		t.Fatal("device still enabled after SetEnabled(false)")
	}
	rot, err := c.RotateToken(ctx, "boiler-1")
	if err != nil || rot.Token == "" || rot.Token == created.Token || rot.PreviousValidUntil == "" {
		t.Fatalf("RotateToken = %+v, %v", rot, err)
	}
	if err := c.RevokeTokens(ctx, "boiler-1"); err != nil {
		t.Fatal(err)
	}

	key, err := c.AddAPIKey(ctx, "ci", devices.RoleViewer)
	if err != nil || key.Key == "" || key.APIKey.Role != devices.RoleViewer {
		t.Fatalf("AddAPIKey = %+v, %v", key, err)
	}
	keys, err := c.ListAPIKeys(ctx)
	if err != nil || len(keys) != 3 {
		t.Fatalf("ListAPIKeys = %d keys, %v; want 3", len(keys), err)
	}
	if err := c.RevokeAPIKey(ctx, key.APIKey.ID); err != nil {
		t.Fatal(err)
	}

	if err := c.DeleteDevice(ctx, "boiler-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Device(ctx, "boiler-1"); !adminclient.IsNotFound(err) {
		t.Fatalf("Device after delete: %v, want a 404", err)
	}

	// A viewer key reads but may not change anything; a 400 names the field.
	vc, _ := adminclient.New(url, viewerKey, adminclient.Options{})
	if _, err := vc.ListDevices(ctx, nil); err != nil {
		t.Fatalf("viewer ListDevices: %v", err)
	}
	var apiErr *adminclient.Error
	if _, err := vc.AddDevice(ctx, "x", "", nil); !errors.As(err, &apiErr) || apiErr.Status != 403 {
		t.Fatalf("viewer AddDevice: %v, want 403", err)
	}
	if _, err := c.AddAPIKey(ctx, "bad", "root"); !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Field != "role" {
		t.Fatalf("AddAPIKey(role=root): %+v, want 400 naming the field role", err)
	}
}

func TestNewRejectsBadArguments(t *testing.T) {
	for _, tc := range []struct{ base, key string }{
		{"ftp://x", "mak_x"}, {"localhost:8470", "mak_x"}, {"http://", "mak_x"}, {"http://h", ""},
	} {
		if _, err := adminclient.New(tc.base, tc.key, adminclient.Options{}); err == nil {
			t.Errorf("New(%q, %q) accepted", tc.base, tc.key)
		}
	}
}
