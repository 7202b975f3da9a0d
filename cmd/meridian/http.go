package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// readyTimeout bounds one /readyz check: a probe must answer before the
// orchestrator's own timeout (typically 1 s to a few seconds).
const readyTimeout = 2 * time.Second

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

// readyChecker is what /readyz asks: ingest (not draining, store reachable)
// and the store itself.
type readyChecker interface {
	Ready(ctx context.Context) error
}

type storeHealth interface {
	Ping(ctx context.Context) error
	Mode() string
}

type readyReport struct {
	Ready   bool         `json:"ready"`
	Storage storageReady `json:"storage"`
	Ingest  checkResult  `json:"ingest"`
}

type storageReady struct {
	Backend string `json:"backend"`
	// Mode is "" while a postgres store has not reached its database yet.
	Mode string `json:"mode"`
	checkResult
}

type checkResult struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func check(err error) checkResult {
	if err != nil {
		return checkResult{Error: err.Error()}
	}
	return checkResult{OK: true}
}

// readyzHandler answers 200 when devices can be acknowledged (store reachable,
// ingest not shutting down) and 503 otherwise, with JSON details either way.
func readyzHandler(ing readyChecker, st storeHealth, backendKind string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		rep := readyReport{
			Storage: storageReady{Backend: backendKind, Mode: st.Mode(), checkResult: check(st.Ping(ctx))},
			Ingest:  check(ing.Ready(ctx)),
		}
		rep.Ready = rep.Storage.OK && rep.Ingest.OK
		status := http.StatusOK
		if !rep.Ready {
			status = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(rep)
	})
}

// trustProxies rewrites r.RemoteAddr to the client address a trusted reverse
// proxy reports in X-Forwarded-For. The header is read right to left and
// trusted hops are skipped, so a client cannot inject an address by sending
// the header itself; requests from untrusted peers keep their socket address.
func trustProxies(trusted []netip.Prefix, next http.Handler) http.Handler {
	if len(trusted) == 0 {
		return next
	}
	isTrusted := func(a netip.Addr) bool {
		a = a.Unmap()
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !isTrusted(peer.Addr()) {
			next.ServeHTTP(w, r)
			return
		}
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break // a malformed hop: stop believing the chain here
			}
			if isTrusted(a) && i > 0 {
				continue
			}
			r2 := r.Clone(r.Context())
			r2.RemoteAddr = net.JoinHostPort(a.Unmap().String(), "0")
			next.ServeHTTP(w, r2)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// parseProxies converts validated server.trusted_proxies entries.
func parseProxies(list []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
