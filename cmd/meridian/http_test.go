package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMuxRoutes(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(name)) })
	}
	mux := newMux(routes{device: named("device"), admin: named("admin"), metrics: named("metrics"), ready: named("ready")})
	tests := []struct{ method, path, want string }{
		{"GET", "/v1/device", "device"},
		{"POST", "/v1/device/batches", "device"},
		{"GET", "/v1/device/hello", "device"},
		{"GET", "/v1/admin/devices", "admin"},
		{"POST", "/v1/provision", "admin"},
		{"GET", "/metrics", "metrics"},
		{"GET", "/readyz", "ready"},
		{"GET", "/healthz", "ok\n"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Body.String() != tt.want {
			t.Errorf("%s %s -> %q, want %q", tt.method, tt.path, rec.Body.String(), tt.want)
		}
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/nope", nil))
	if rec.Code != 404 {
		t.Errorf("unknown path: %d, want 404", rec.Code)
	}
}
