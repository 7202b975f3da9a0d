package main

import "net/http"

// routes are the handlers serve mounts; the mux itself has no logic.
type routes struct {
	device   http.Handler // ingest: /v1/device, /v1/device/batches, /v1/device/hello
	admin    http.Handler // devices: /v1/admin/..., /v1/provision
	metrics  http.Handler // already wrapped in operator auth unless metrics are open
	ready    http.Handler
	query    http.Handler // queryapi: /v1/query, /v1/series (wrapped in viewer auth)
	commands http.Handler // bridge: POST /v1/admin/devices/{id}/commands (admin auth); may be nil
	ui       http.Handler // dashboard: pages, assets, /v1/live; may be nil
}

func newMux(r routes) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/v1/device", r.device)
	mux.Handle("/v1/device/", r.device)
	mux.Handle("/v1/admin/", r.admin)
	mux.Handle("/v1/provision", r.admin)
	mux.Handle("GET /metrics", r.metrics)
	mux.Handle("GET /readyz", r.ready)
	if r.query != nil {
		mux.Handle("GET /v1/query", r.query)
		mux.Handle("GET /v1/series", r.query)
	}
	if r.commands != nil {
		mux.Handle("POST /v1/admin/devices/{id}/commands", r.commands)
	}
	if r.ui != nil {
		// Last and at "/": the dashboard registers only its own paths, and
		// the more specific patterns above win anyway.
		mux.Handle("/", r.ui)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Alive means the process serves HTTP; nothing else is checked, so
		// a storage outage never makes an orchestrator restart the server.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
