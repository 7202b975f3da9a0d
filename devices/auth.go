package devices

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// AuthenticateDevice resolves a device token to its device id. It satisfies
// ingest.Authenticator. A missing, malformed, unknown, expired or non-device
// credential, or a disabled or deleted device, gives an error wrapping
// ErrUnauthorized (test with errors.Is, or errors.As against
// interface{ Unauthorized() bool }); any other error is a storage failure.
func (s *Service) AuthenticateDevice(ctx context.Context, token string) (string, error) {
	device, _, _, err := s.AuthenticateDeviceAcked(ctx, token)
	return device, err
}

// AuthenticateDeviceAcked is AuthenticateDevice that also returns the
// device's watermark when it asked the store: the token lookup reads it in
// the same query, so a handshake needs no second read (fresh is false when
// the answer came from the cache, and acked is then 0).
func (s *Service) AuthenticateDeviceAcked(ctx context.Context, token string) (device string, acked uint64, fresh bool, err error) {
	device, rec, err := s.authenticateDevice(ctx, token)
	if err != nil || rec == nil {
		return device, 0, false, err
	}
	return device, rec.DeviceAcked, true, nil
}

// authenticateDevice returns the device and, when it asked the store, the
// token record it read.
func (s *Service) authenticateDevice(ctx context.Context, token string) (string, *storage.DeviceToken, error) {
	switch {
	case token == "":
		return "", nil, unauthorized("no device token")
	case strings.HasPrefix(token, APIKeyPrefix):
		return "", nil, unauthorized("an API key is not a device token")
	case !strings.HasPrefix(token, DeviceTokenPrefix):
		return "", nil, unauthorized("not a device token")
	case len(token) > maxCredentialLen:
		return "", nil, unauthorized("device token too long")
	}
	hash := hashSecret(token)
	now := s.now()
	if dev, ok := s.tokens.get(hash, now); ok {
		if dev.tokenExpires != nil && !now.Before(*dev.tokenExpires) {
			return "", nil, unauthorized("device token expired")
		}
		return dev.device, nil, nil
	}
	// Read before the lookup: a revocation that lands while the store is
	// being asked must keep this answer out of the cache (see credCache).
	gen := s.tokens.generation()
	rec, err := s.repo.LookupDeviceToken(ctx, hash)
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil, unauthorized("unknown device token")
	}
	if err != nil {
		return "", nil, fmt.Errorf("look up device token: %w", err)
	}
	if !sameHash(rec.Hash, hash) {
		return "", nil, unauthorized("unknown device token")
	}
	if rec.ExpiresAt != nil && !s.now().Before(*rec.ExpiresAt) {
		return "", nil, unauthorized("device token expired")
	}
	// The lookup read the device's enabled flag too (a deleted device's
	// tokens go with it): one query per uncached handshake.
	if !rec.DeviceEnabled {
		return "", nil, unauthorized("device disabled")
	}
	s.tokens.put(hash, rec.DeviceID, cachedDevice{device: rec.DeviceID, tokenExpires: rec.ExpiresAt}, gen, s.now())
	return rec.DeviceID, &rec, nil
}

// cachedDevice is what a cached device token resolves to. The token's own
// expiry is kept and checked on every hit, so a rotation grace ends on time
// whatever the cache holds.
type cachedDevice struct {
	device       string
	tokenExpires *time.Time
}

// ForgetDevice drops every cached credential of device so that its next
// authentication asks the store. The service calls it itself whenever it
// disables, deletes, rotates, revokes or reprovisions (through kick); the
// wiring calls it when another node's kick for the device arrives, so a
// revocation made elsewhere holds here at once too, not only after the
// cache's TTL.
func (s *Service) ForgetDevice(device string) { s.tokens.forget(device) }

// Roles of API keys. An admin key satisfies both; a viewer key only viewer.
const (
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

func validRole(r string) bool { return r == RoleAdmin || r == RoleViewer }

// satisfies reports whether a key with role have may use a route needing want.
func satisfies(have, want string) bool {
	return have == RoleAdmin || (have == RoleViewer && want == RoleViewer)
}

// AuthenticateOperator resolves an API key. A device token, an unknown or
// revoked key gives an error wrapping ErrUnauthorized.
func (s *Service) AuthenticateOperator(ctx context.Context, key string) (storage.APIKey, error) {
	switch {
	case key == "":
		return storage.APIKey{}, unauthorized("no API key")
	case strings.HasPrefix(key, DeviceTokenPrefix):
		return storage.APIKey{}, unauthorized("a device token is not an API key")
	case !strings.HasPrefix(key, APIKeyPrefix):
		return storage.APIKey{}, unauthorized("not an API key")
	case len(key) > maxCredentialLen:
		return storage.APIKey{}, unauthorized("API key too long")
	}
	hash := hashSecret(key)
	now := s.now()
	if k, ok := s.keys.get(hash, now); ok {
		return checkAPIKey(k, now)
	}
	gen := s.keys.generation()
	k, err := s.repo.LookupAPIKey(ctx, hash)
	if errors.Is(err, storage.ErrNotFound) {
		return storage.APIKey{}, unauthorized("unknown API key")
	}
	if err != nil {
		return storage.APIKey{}, fmt.Errorf("look up API key: %w", err)
	}
	if !sameHash(k.Hash, hash) {
		return storage.APIKey{}, unauthorized("unknown API key")
	}
	// Cached whatever the verdict on it: a revoked key's refusal is cheap
	// to repeat, and an operator endpoint hammered with it must not reach
	// the store each time.
	s.keys.put(hash, k.ID, k, gen, now)
	return checkAPIKey(k, now)
}

func checkAPIKey(k storage.APIKey, now time.Time) (storage.APIKey, error) {
	if k.RevokedAt != nil && !now.Before(*k.RevokedAt) {
		return storage.APIKey{}, unauthorized("API key revoked")
	}
	if !validRole(k.Role) {
		return storage.APIKey{}, unauthorized("API key has unknown role " + k.Role)
	}
	return k, nil
}

// credCache remembers, for at most credCacheTTL, what a credential hash
// resolved to, so a device posting HTTP batches or a dashboard polling
// /metrics does not cost a store round trip (two, for a device token) on
// every request, and operator endpoints keep answering while a reconnect
// storm has every database connection busy.
//
// Revocation stays immediate: every local change that ends a credential
// forgets its owner's entries (a device's kick, an API key's revocation),
// and a kick from another node does too (Service.ForgetDevice). The TTL is
// only the backstop for a change this node is never told about. A lookup
// that was in flight while an entry was forgotten must not put the stale
// answer back: put is ignored unless the generation read before the lookup
// is still current.
//
// Only credentials that resolved are cached (unknown hashes are not: anyone
// can send endless distinct ones). Bounded: when full, expired entries are
// swept (at most every half TTL) and a credential that finds no room is
// simply not cached.
//
// The zero value is ready to use. Safe for concurrent use.
type credCache[V any] struct {
	mu        sync.Mutex
	gen       uint64
	m         map[string]credEntry[V]
	lastSweep time.Time
}

type credEntry[V any] struct {
	owner string // device id or API key id
	v     V
	until time.Time
}

const (
	// credCacheTTL bounds how long a cached answer is trusted when no
	// invalidation reaches this node (a store changed by another tool).
	// One second keeps "revoked means out within a second" even then.
	credCacheTTL = time.Second
	// credCacheMax bounds entries: 20,000 devices or keys authenticating
	// within one TTL, ~150 bytes each, ~3 MB.
	credCacheMax = 20_000
)

func (c *credCache[V]) get(hash []byte, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[string(hash)]
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *credCache[V]) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *credCache[V]) put(hash []byte, owner string, v V, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return // something was forgotten meanwhile; this answer may be stale
	}
	if c.m == nil {
		c.m = make(map[string]credEntry[V])
	}
	if len(c.m) >= credCacheMax {
		if now.Sub(c.lastSweep) < credCacheTTL/2 {
			return
		}
		c.lastSweep = now
		for k, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= credCacheMax {
			return
		}
	}
	c.m[string(hash)] = credEntry[V]{owner: owner, v: v, until: now.Add(credCacheTTL)}
}

// forget drops the entries of owner ("" drops everything) and invalidates
// lookups in flight.
func (c *credCache[V]) forget(owner string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for k, e := range c.m {
		if owner == "" || e.owner == owner {
			delete(c.m, k)
		}
	}
}

type ctxKey struct{}

// KeyFromContext returns the API key RequireRole authenticated the request
// with, for handlers that log who did what.
func KeyFromContext(ctx context.Context) (storage.APIKey, bool) {
	k, ok := ctx.Value(ctxKey{}).(storage.APIKey)
	return k, ok
}

// bearer extracts the credential of "Authorization: Bearer <key>".
func bearer(r *http.Request) string {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(cred)
}

// RequireRole wraps next so it runs only for a request carrying
// "Authorization: Bearer <API key>" whose role satisfies role ("viewer" or
// "admin"; an admin key satisfies both). Otherwise it answers a JSON error:
// 401 without a valid API key (a device token included), 403 for a viewer on
// an admin route, 503 when the store cannot be asked. It panics on an unknown
// role, which is a wiring mistake.
func (s *Service) RequireRole(role string, next http.Handler) http.Handler {
	if !validRole(role) {
		panic(fmt.Sprintf("devices.RequireRole: unknown role %q", role))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred := bearer(r)
		if cred == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meridian"`)
			writeError(w, http.StatusUnauthorized, "missing API key: send Authorization: Bearer mak_...")
			return
		}
		k, err := s.AuthenticateOperator(r.Context(), cred)
		if errors.Is(err, ErrUnauthorized) {
			s.log.Debug("operator authentication failed", "err", err, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="meridian", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid API key")
			return
		}
		if err != nil {
			s.log.Error("operator authentication", "err", err)
			writeError(w, http.StatusServiceUnavailable, "cannot check credentials now")
			return
		}
		if !satisfies(k.Role, role) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("API key %s has role %s; this needs %s", k.ID, k.Role, role))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, k)))
	})
}

// EnsureAdminKey makes sure operators can get in. With configured set (the
// devices.admin_key setting) it registers that key as an admin key unless the
// store already has it, and returns "" since the operator already knows it.
// Otherwise, if the store has no API key at all (revoked ones count: revoking
// every key is a deliberate lockout, not a reason to mint a new one), it
// creates an admin key and returns its secret, which the caller prints once;
// in every other case it returns "".
func (s *Service) EnsureAdminKey(ctx context.Context, configured string) (string, error) {
	if configured != "" {
		if !adminKeyRe.MatchString(configured) {
			return "", invalid("devices.admin_key", `must be "mak_" followed by 32-200 characters of [A-Za-z0-9_-]`)
		}
		hash := hashSecret(configured)
		k, err := s.repo.LookupAPIKey(ctx, hash)
		switch {
		case err == nil:
			if k.RevokedAt != nil {
				s.log.Warn("the configured admin key was revoked; it will not authenticate", "apikey", k.ID)
			}
			return "", nil
		case !errors.Is(err, storage.ErrNotFound):
			return "", fmt.Errorf("look up configured admin key: %w", err)
		}
		id := apiKeyID(configured)
		if id == "" {
			id = fmt.Sprintf("cfg-%x", hash[:4])
		}
		if err := s.repo.AddAPIKey(ctx, storage.APIKey{ID: id, Hash: hash, Name: "configured admin key", Role: RoleAdmin, CreatedAt: s.now().UTC()}); err != nil {
			return "", fmt.Errorf("register configured admin key: %w", err)
		}
		s.log.Info("registered the configured admin key", "apikey", id)
		return "", nil
	}
	keys, err := s.repo.ListAPIKeys(ctx)
	if err != nil {
		return "", fmt.Errorf("list API keys: %w", err)
	}
	if len(keys) > 0 {
		return "", nil
	}
	k, secret, err := s.AddAPIKey(ctx, "initial admin key", RoleAdmin)
	if err != nil {
		return "", fmt.Errorf("create initial admin key: %w", err)
	}
	s.log.Info("created the initial admin key", "apikey", k.ID)
	return secret, nil
}
