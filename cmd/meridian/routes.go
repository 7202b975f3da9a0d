package main

import "github.com/meridian-iot/meridian/devices"

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
// needs. It documents the whole HTTP surface in one place (docs/api.md
// mirrors it) and TestRouteCredentials walks it with every kind of
// credential, so a route added without auth fails a test.
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
