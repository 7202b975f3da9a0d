package front

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

// ReadyChecker is what /readyz asks: ingest (not draining, store reachable)
// and the store itself.
type ReadyChecker interface {
	Ready(ctx context.Context) error
}

type StoreHealth interface {
	Ping(ctx context.Context) error
	Mode() string
}

type ReadyReport struct {
	Ready   bool         `json:"ready"`
	Storage StorageReady `json:"storage"`
	Ingest  CheckResult  `json:"ingest"`
}

type StorageReady struct {
	Backend string `json:"backend"`
	// Mode is "" while a postgres store has not reached its database yet.
	Mode string `json:"mode"`
	CheckResult
}

type CheckResult struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func check(err error) CheckResult {
	if err != nil {
		return CheckResult{Error: err.Error()}
	}
	return CheckResult{OK: true}
}

// Readyz answers 200 when devices can be acknowledged (store reachable,
// ingest not shutting down) and 503 otherwise, with JSON details either way.
func Readyz(ing ReadyChecker, st StoreHealth, backendKind string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		rep := ReadyReport{
			Storage: StorageReady{Backend: backendKind, Mode: st.Mode(), CheckResult: check(st.Ping(ctx))},
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

// TrustProxies rewrites r.RemoteAddr to the client address a trusted reverse
// proxy reports in X-Forwarded-For. The header is read right to left and
// trusted hops are skipped, so a client cannot inject an address by sending
// the header itself; requests from untrusted peers keep their socket address.
func TrustProxies(trusted []netip.Prefix, next http.Handler) http.Handler {
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

// ParseProxies converts validated server.trusted_proxies entries.
func ParseProxies(list []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// parseProxy accepts "10.0.0.1" or "10.0.0.0/8".
func parseProxy(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
