package devices

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fixture is a service with one device "d" and keys of every kind.
type fixture struct {
	s                    *Service
	h                    http.Handler
	token, viewer, admin string
	spareKeyID           string
	k                    *kicks
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Provisioning.Key = testProvKey
	if mod != nil {
		mod(&cfg)
	}
	s, _, _, k := newTestService(cfg)
	ctx := context.Background()
	f := &fixture{s: s, h: s.AdminHandler(), k: k}
	var err error
	if _, f.token, err = s.AddDevice(ctx, "d", "Dee", map[string]string{"site": "north"}); err != nil {
		t.Fatal(err)
	}
	_, f.viewer, _ = s.AddAPIKey(ctx, "viewer", RoleViewer)
	_, f.admin, _ = s.AddAPIKey(ctx, "admin", RoleAdmin)
	spare, _, _ := s.AddAPIKey(ctx, "spare", RoleViewer)
	f.spareKeyID = spare.ID
	return f
}

func (f *fixture) do(method, path, cred, body string) *httptest.ResponseRecorder {
	var req *http.Request
	if body != "" {
		req = httptest.NewRequest(method, path, strings.NewReader(body))
	} else {
		req = httptest.NewRequest(method, path, nil)
	}
	if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	return rec
}

// TestRouteCredentials walks every route with no credential, a device token,
// a viewer key and an admin key (issue 4's route-table test, for the routes
// this package serves).
func TestRouteCredentials(t *testing.T) {
	success := map[string]int{
		"GET /v1/admin/devices":                     200,
		"POST /v1/admin/devices":                    201,
		"GET /v1/admin/devices/{id}":                200,
		"DELETE /v1/admin/devices/{id}":             204,
		"POST /v1/admin/devices/{id}/disable":       200,
		"POST /v1/admin/devices/{id}/enable":        200,
		"POST /v1/admin/devices/{id}/rotate-token":  200,
		"POST /v1/admin/devices/{id}/revoke-tokens": 204,
		"GET /v1/admin/apikeys":                     200,
		"POST /v1/admin/apikeys":                    201,
		"DELETE /v1/admin/apikeys/{id}":             204,
		"POST /v1/provision":                        200,
	}
	bodies := map[string]string{
		"POST /v1/admin/devices": `{"id":"new1","labels":{"a":"b"}}`,
		"POST /v1/admin/apikeys": `{"name":"ci","role":"viewer"}`,
		"POST /v1/provision":     `{"device":"new1","key":"` + testProvKey + `"}`,
	}
	routes := Routes()
	if len(routes) != len(success) {
		t.Fatalf("%d routes but %d expectations: update the test", len(routes), len(success))
	}
	for _, r := range routes {
		key := r.Method + " " + r.Path
		ok, found := success[key]
		if !found {
			t.Fatalf("no expectation for %s", key)
		}
		for _, cred := range []string{"none", "device", "viewer", "admin"} {
			t.Run(key+" as "+cred, func(t *testing.T) {
				f := newFixture(t, nil)
				path := r.Path
				if strings.Contains(path, "apikeys") {
					path = strings.Replace(path, "{id}", f.spareKeyID, 1)
				} else {
					path = strings.Replace(path, "{id}", "d", 1)
				}
				c := map[string]string{"none": "", "device": f.token, "viewer": f.viewer, "admin": f.admin}[cred]
				want := ok
				switch {
				case r.Credential == CredProvisioningKey:
					// The key is in the body; headers neither help nor hurt.
				case cred == "none" || cred == "device":
					want = 401
				case cred == "viewer" && r.Credential == CredAdmin:
					want = 403
				}
				rec := f.do(r.Method, path, c, bodies[key])
				if rec.Code != want {
					t.Fatalf("status %d, want %d: %s", rec.Code, want, rec.Body)
				}
				if ct := rec.Header().Get("Content-Type"); rec.Code != 204 && ct != "application/json" {
					t.Fatalf("Content-Type %q", ct)
				}
			})
		}
	}
}

func TestAdminAPI(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		cfg                      func(*Config)
		want                     int
		wantField                string
		wantIn                   string
	}{
		{name: "create returns token once", method: "POST", path: "/v1/admin/devices", body: `{"id":"x","name":"X"}`, want: 201, wantIn: `"token": "mdt_`},
		{name: "create generated id", method: "POST", path: "/v1/admin/devices", body: `{}`, want: 201, wantIn: `"id": "dev-`},
		{name: "create empty body", method: "POST", path: "/v1/admin/devices", want: 400, wantField: "body"},
		{name: "create bad json", method: "POST", path: "/v1/admin/devices", body: `{"id":`, want: 400, wantField: "body"},
		{name: "create two objects", method: "POST", path: "/v1/admin/devices", body: `{}{}`, want: 400, wantField: "body"},
		{name: "create unknown field", method: "POST", path: "/v1/admin/devices", body: `{"colour":"red"}`, want: 400, wantField: "colour"},
		{name: "create wrong type", method: "POST", path: "/v1/admin/devices", body: `{"labels":["a"]}`, want: 400, wantField: "labels"},
		{name: "create bad id", method: "POST", path: "/v1/admin/devices", body: `{"id":"A B"}`, want: 400, wantField: "id"},
		{name: "create duplicate", method: "POST", path: "/v1/admin/devices", body: `{"id":"d"}`, want: 409},
		{name: "create huge body", method: "POST", path: "/v1/admin/devices", body: `{"name":"` + strings.Repeat("a", 70000) + `"}`, want: 400, wantField: "body"},
		{name: "list filter", method: "GET", path: "/v1/admin/devices?label=site=north", want: 200, wantIn: `"id": "d"`},
		{name: "list filter no match", method: "GET", path: "/v1/admin/devices?label=site=south", want: 200, wantIn: `"devices": []`},
		{name: "list bad label", method: "GET", path: "/v1/admin/devices?label=site", want: 400, wantField: "label"},
		{name: "show unknown", method: "GET", path: "/v1/admin/devices/nope", want: 404},
		{name: "show has sessions", method: "GET", path: "/v1/admin/devices/d", want: 200, wantIn: `"sessions": []`},
		{name: "disable unknown", method: "POST", path: "/v1/admin/devices/nope/disable", want: 404},
		{name: "disable", method: "POST", path: "/v1/admin/devices/d/disable", want: 200, wantIn: `"enabled": false`},
		{name: "rotate unknown", method: "POST", path: "/v1/admin/devices/nope/rotate-token", want: 404},
		{name: "rotate", method: "POST", path: "/v1/admin/devices/d/rotate-token", want: 200, wantIn: `"previous_valid_until": "2026-11-28T09:00:00Z"`},
		{name: "delete bad purge", method: "DELETE", path: "/v1/admin/devices/d?purge=maybe", want: 400, wantField: "purge"},
		{name: "delete unknown", method: "DELETE", path: "/v1/admin/devices/nope", want: 404},
		{name: "delete purge", method: "DELETE", path: "/v1/admin/devices/d?purge=true", want: 204},
		{name: "wrong method", method: "PUT", path: "/v1/admin/devices/d", want: 405, wantIn: "not allowed"},
		{name: "unknown path", method: "GET", path: "/v1/admin/nothing", want: 404, wantIn: `"error"`},
		{name: "apikey bad role", method: "POST", path: "/v1/admin/apikeys", body: `{"name":"x","role":"root"}`, want: 400, wantField: "role"},
		{name: "apikey create", method: "POST", path: "/v1/admin/apikeys", body: `{"name":"x","role":"admin"}`, want: 201, wantIn: `"key": "mak_`},
		{name: "apikey list hides hashes", method: "GET", path: "/v1/admin/apikeys", want: 200, wantIn: `"role": "viewer"`},
		{name: "apikey revoke unknown", method: "DELETE", path: "/v1/admin/apikeys/nope", want: 404},
		{name: "provision off", cfg: func(c *Config) { c.Provisioning.Key = "" }, method: "POST", path: "/v1/provision",
			body: `{"device":"n","key":"x"}`, want: 404},
		{name: "provision wrong key", method: "POST", path: "/v1/provision", body: `{"device":"n","key":"nope"}`, want: 403},
		{name: "provision registered", method: "POST", path: "/v1/provision", body: `{"device":"d","key":"` + testProvKey + `"}`, want: 409},
		{name: "provision reprovision", cfg: func(c *Config) { c.Provisioning.AllowReprovision = true }, method: "POST", path: "/v1/provision",
			body: `{"device":"d","key":"` + testProvKey + `"}`, want: 200, wantIn: `"token": "mdt_`},
		{name: "provision bad id", method: "POST", path: "/v1/provision", body: `{"device":"A","key":"` + testProvKey + `"}`, want: 400, wantField: "device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.cfg)
			rec := f.do(tt.method, tt.path, f.admin, tt.body)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			body := rec.Body.String()
			if tt.wantIn != "" && !strings.Contains(body, tt.wantIn) {
				t.Fatalf("body lacks %q:\n%s", tt.wantIn, body)
			}
			if strings.Contains(body, `"Hash"`) || strings.Contains(body, `"hash"`) {
				t.Fatalf("hash leaked: %s", body)
			}
			if tt.wantField != "" {
				var e struct{ Error, Field string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Field != tt.wantField {
					t.Fatalf("field %q, want %q (%s)", e.Field, tt.wantField, body)
				}
			}
			if strings.Contains(body, `"token"`) || strings.Contains(body, `"key"`) {
				if rec.Header().Get("Cache-Control") != "no-store" {
					t.Fatal("secret without Cache-Control: no-store")
				}
			}
		})
	}
}

func TestAdminAPICreatedTokenWorks(t *testing.T) {
	f := newFixture(t, nil)
	rec := f.do("POST", "/v1/admin/devices", f.admin, `{"id":"x","labels":{"k":"v"}}`)
	var resp struct {
		Device struct{ ID string }
		Token  string
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	if got, err := f.s.AuthenticateDevice(context.Background(), resp.Token); err != nil || got != "x" {
		t.Fatalf("token from API: %q, %v", got, err)
	}
	// The token never appears in a later read.
	if body := f.do("GET", "/v1/admin/devices/x", f.admin, "").Body.String(); strings.Contains(body, resp.Token) {
		t.Fatal("token shown twice")
	}
}

func TestAdminAPIKicks(t *testing.T) {
	f := newFixture(t, nil)
	f.k.take()
	f.do("POST", "/v1/admin/devices/d/disable", f.admin, "")
	f.do("POST", "/v1/admin/devices/d/revoke-tokens", f.admin, "")
	if got := f.k.take(); len(got) != 2 {
		t.Fatalf("kicks %v", got)
	}
}

func TestAdminAPILastAdmin(t *testing.T) {
	f := newFixture(t, nil)
	k, _ := f.s.AuthenticateOperator(context.Background(), f.admin)
	if rec := f.do("DELETE", "/v1/admin/apikeys/"+k.ID, f.admin, ""); rec.Code != 409 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
}

func TestAdminAPIPresence(t *testing.T) {
	f := newFixture(t, nil)
	if body := f.do("GET", "/v1/admin/devices", f.viewer, "").Body.String(); strings.Contains(body, "online") {
		t.Fatalf("online without presence source: %s", body)
	}
	f.s.SetPresence(func(id string) bool { return id == "d" })
	if body := f.do("GET", "/v1/admin/devices/d", f.viewer, "").Body.String(); !strings.Contains(body, `"online": true`) {
		t.Fatalf("no online: %s", body)
	}
}

func TestProvisionRateLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Provisioning.RatePerMinute = 3 })
	send := func(addr string) int {
		req := httptest.NewRequest("POST", "/v1/provision", strings.NewReader(`{"device":"z","key":"wrong"}`))
		req.RemoteAddr = addr
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 3 {
		if got := send("192.0.2.1:1000"); got != 403 {
			t.Fatalf("attempt %d: %d", i+1, got)
		}
	}
	// Another port of the same host shares the budget; another host does not.
	if got := send("192.0.2.1:2000"); got != 429 {
		t.Fatalf("over the limit: %d, want 429", got)
	}
	if got := send("192.0.2.2:1000"); got != 403 {
		t.Fatalf("other address: %d, want 403", got)
	}
	// Even the right key is refused while limited.
	req := httptest.NewRequest("POST", "/v1/provision", strings.NewReader(`{"device":"z","key":"`+testProvKey+`"}`))
	req.RemoteAddr = "192.0.2.1:1000"
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != 429 || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
}
