package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/devices"
)

// Credentials a route requires, beyond the devices package's
// (devices.CredViewer, devices.CredAdmin, devices.CredProvisioningKey).
const (
	credNone   = "none"         // open: health checks, the login form, static assets
	credDevice = "device-token" // a device token (Bearer or ?token=); operator keys are refused
	// credOperator is a dashboard login session (cookie) or an API key
	// (viewer or admin) as Bearer; pages without one redirect to /login.
	credOperator = "operator-session"
	// credMetrics is a viewer key unless server.metrics.open.
	credMetrics = "viewer-unless-open"
)

// serverRoute is one route `meridian serve` mounts and the credential it
// needs. The table documents the whole HTTP surface in one place
// (docs/api.md mirrors it) and TestRouteCredentials walks it with every kind
// of credential, so a route added without auth fails a test. It lives with
// the tests because only they read it: newMux mounts each part's handler
// by prefix, and the parts check the credentials.
type serverRoute struct {
	Method, Path, Credential, Owner string
}

func serverRoutes() []serverRoute {
	rs := []serverRoute{
		{"GET", "/healthz", credNone, "cmd"},
		{"GET", "/readyz", credNone, "cmd"},
		{"GET", "/metrics", credMetrics, "cmd"},
		{"GET", "/v1/device", credDevice, "ingest (WebSocket upgrade)"},
		{"GET", "/v1/device/hello", credDevice, "ingest"},
		{"POST", "/v1/device/batches", credDevice, "ingest"},
		{"GET", "/v1/query", devices.CredViewer, "queryapi"},
		{"GET", "/v1/series", devices.CredViewer, "queryapi"},
		{"POST", "/v1/admin/devices/{id}/commands", devices.CredAdmin, "bridge"},
		{"GET", "/", credOperator, "dashboard"},
		{"GET", "/login", credNone, "dashboard"},
		{"POST", "/login", credNone, "dashboard (checks the key it is given)"},
		{"POST", "/logout", credNone, "dashboard (clears the session, always answers 303 to /login)"},
		{"GET", "/assets/app.css", credNone, "dashboard"},
		{"GET", "/ui/devices/{id}", credOperator, "dashboard"},
		{"GET", "/ui/system", credOperator, "dashboard"},
		{"GET", "/ui/api/devices", credOperator, "dashboard"},
		{"GET", "/ui/api/devices/{id}", credOperator, "dashboard"},
		{"GET", "/ui/api/series", credOperator, "dashboard"},
		{"POST", "/ui/api/devices/{id}/commands", devices.CredAdmin, "dashboard (admin session + CSRF token)"},
		{"GET", "/ui/api/system", credOperator, "dashboard"},
		{"GET", "/v1/live", credOperator, "dashboard (WebSocket, Origin checked)"},
		{"GET", "/v1/live/sse", credOperator, "dashboard"},
	}
	for _, r := range devices.Routes() {
		rs = append(rs, serverRoute{r.Method, r.Path, r.Credential, "devices"})
	}
	return rs
}

// TestRouteCredentials walks every route of serverRoutes with no
// credential, a device token, a viewer key and an admin key, and checks that
// each is refused or admitted as its credential says: device tokens never
// work on operator routes, API keys never on device routes, viewers never on
// admin routes. "Admitted" means the auth layer let the request through
// (any answer but 401/403 and the login redirect); what the handler then
// says about the empty or dummy request is not this test's business.
// loginRedirect stands for "303 to /login": how pages refuse a visitor.
const loginRedirect = 1303

func TestRouteCredentials(t *testing.T) {
	ts := startServe(t, testConfig(t))
	admin := waitAdminKey(t, ts)

	call := func(method, path, key string, body []byte) (int, string) {
		t.Helper()
		// Streams (SSE) never end: bound each call, and read only a little.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, ts.base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		code := resp.StatusCode
		if code == http.StatusSeeOther && strings.HasPrefix(resp.Header.Get("Location"), "/login") {
			return loginRedirect, ""
		}
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			return code, "(event stream)"
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return code, string(b)
	}
	status, body := call("POST", "/v1/admin/devices", admin, []byte(`{"id":"route-dev"}`))
	var dev struct{ Token string }
	if err := json.Unmarshal([]byte(body), &dev); status != 201 && status != 200 || err != nil || dev.Token == "" {
		t.Fatalf("add device: %d %s", status, body)
	}
	status, body = call("POST", "/v1/admin/apikeys", admin, []byte(`{"name":"ro","role":"viewer"}`))
	var vk struct {
		Key, Secret string
	}
	_ = json.Unmarshal([]byte(body), &vk)
	viewer := vk.Key
	if viewer == "" {
		viewer = vk.Secret
	}
	if status >= 300 || !strings.HasPrefix(viewer, "mak_") {
		t.Fatalf("add viewer key: %d %s", status, body)
	}

	refused := func(code int) bool {
		return code == http.StatusUnauthorized || code == http.StatusForbidden || code == loginRedirect
	}
	creds := []struct {
		name, key string
	}{{"none", ""}, {"device", dev.Token}, {"viewer", viewer}, {"admin", admin}}
	// allowed[credential][who] says whether that caller gets past auth.
	allowed := map[string]map[string]bool{
		credNone:                    {"none": true, "device": true, "viewer": true, "admin": true},
		credDevice:                  {"device": true},
		devices.CredViewer:          {"viewer": true, "admin": true},
		devices.CredAdmin:           {"admin": true},
		credOperator:                {"viewer": true, "admin": true},
		credMetrics:                 {"viewer": true, "admin": true},
		devices.CredProvisioningKey: {}, // provisioning is off by default: refused (404) for everyone
	}
	for _, r := range serverRoutes() {
		path := strings.ReplaceAll(r.Path, "{id}", "route-dev")
		for _, c := range creds {
			if r.Credential == devices.CredProvisioningKey || (r.Method == "POST" && (r.Path == "/login" || r.Path == "/logout")) {
				continue // checked below / take no credential: login checks the key it is given, logout always redirects
			}
			name := fmt.Sprintf("%s %s as %s", r.Method, r.Path, c.name)
			var body []byte
			if r.Method != "GET" && r.Method != "DELETE" {
				body = []byte(`{}`)
			}
			if r.Method == "DELETE" && c.name == "admin" {
				continue // admitted deletes would destroy the fixtures; admin is covered by the viewer refusals
			}
			code, resp := call(r.Method, path, c.key, body)
			want := allowed[r.Credential][c.name]
			if got := !refused(code); got != want {
				t.Errorf("%s: status %d (%.80q), want admitted=%v", name, code, resp, want)
			}
		}
	}
	// Provisioning is off by default: 404 whatever credential is sent.
	if code, _ := call("POST", "/v1/provision", admin, []byte(`{"device":"x","key":"y"}`)); code != http.StatusNotFound {
		t.Errorf("POST /v1/provision with provisioning off: %d, want 404", code)
	}
}

// TestRoutesDocumented: docs/api.md lists every route serve mounts.
func TestRoutesDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range serverRoutes() {
		row := fmt.Sprintf("| %s | `%s` |", r.Method, r.Path)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/api.md has no row %q", row)
		}
	}
}
