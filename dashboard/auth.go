package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Roles an operator key can have (see devices).
const (
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

const (
	sessionCookie = "meridian_session"
	// maxSessions bounds the in-memory session table. A login that would
	// pass it is refused (503), never paid for with someone else's session.
	maxSessions = 10_000
	// maxSessionsPerKey bounds one API key's sessions: a key's login beyond
	// it evicts that key's own session closest to expiry, so a flood of
	// logins with one (viewer) key can log out only that key. 64 covers one
	// operator's browsers and devices many times over; at 10,000 total it
	// takes 157 distinct keys to fill the table.
	maxSessionsPerKey = 64
	// recheckEvery: a session re-checks its API key this often, so revoking
	// a key ends the sessions opened with it within this delay.
	recheckEvery = time.Minute
)

var (
	// ErrUnauthenticated: no session cookie or API key, or an invalid,
	// expired or revoked one.
	ErrUnauthenticated = errors.New("not authenticated")
)

// Principal is who a request acts for.
type Principal struct {
	KeyID string // the API key's public id
	Name  string
	Role  string // RoleAdmin or RoleViewer
	// Session is the session id's hash prefix when the request came with the
	// session cookie; "" for Authorization: Bearer. Cookie requests need the
	// CSRF token for anything that changes state.
	Session string
	CSRF    string
}

// Admin reports whether p may send commands.
func (p Principal) Admin() bool { return p.Role == RoleAdmin }

type session struct {
	key     string // the API key, to re-check revocation; never logged
	keyID   string
	name    string
	role    string
	csrf    string
	expires time.Time
	checked time.Time
}

// sessions is the in-memory session table, keyed by the SHA-256 of the
// cookie value so the table never holds a usable cookie.
type sessions struct {
	ttl  time.Duration
	now  func() time.Time
	auth Authenticator

	mu sync.Mutex
	m  map[[32]byte]*session
}

func newSessions(ttl time.Duration, auth Authenticator, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, auth: auth, m: make(map[[32]byte]*session)}
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather)
	return base64.RawURLEncoding.EncodeToString(b)
}

// errTooManySessions: the session table is full of other keys' sessions.
var errTooManySessions = errors.New("too many dashboard sessions")

// create opens a session for the authenticated key and returns the cookie
// value. A key at maxSessionsPerKey loses its own oldest session; a full
// table refuses the login rather than evict another key's session.
func (s *sessions) create(key string, k storage.APIKey) (string, error) {
	tok := randomToken(32)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		own    int
		oldest [32]byte
		at     time.Time
	)
	for h, ss := range s.m {
		if ss.keyID != k.ID {
			continue
		}
		own++
		if at.IsZero() || ss.expires.Before(at) {
			oldest, at = h, ss.expires
		}
	}
	if own >= maxSessionsPerKey {
		delete(s.m, oldest)
	}
	if len(s.m) >= maxSessions {
		s.sweepLocked(now)
	}
	if len(s.m) >= maxSessions {
		if own == 0 {
			return "", errTooManySessions
		}
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(tok))] = &session{
		key: key, keyID: k.ID, name: k.Name, role: k.Role,
		csrf: randomToken(24), expires: now.Add(s.ttl), checked: now,
	}
	return tok, nil
}

func (s *sessions) delete(tok string) {
	s.mu.Lock()
	delete(s.m, sha256.Sum256([]byte(tok)))
	s.mu.Unlock()
}

// lookup returns the session for a cookie value, renewing its expiry and
// re-checking its key every recheckEvery.
func (s *sessions) lookup(ctx context.Context, tok string) (Principal, error) {
	h := sha256.Sum256([]byte(tok))
	now := s.now()
	s.mu.Lock()
	ss := s.m[h]
	if ss == nil || !now.Before(ss.expires) {
		delete(s.m, h)
		s.mu.Unlock()
		return Principal{}, ErrUnauthenticated
	}
	ss.expires = now.Add(s.ttl)
	recheck := now.Sub(ss.checked) >= recheckEvery
	key := ss.key
	p := Principal{KeyID: ss.keyID, Name: ss.name, Role: ss.role, Session: fmt.Sprintf("%x", h[:6]), CSRF: ss.csrf}
	s.mu.Unlock()
	if recheck {
		k, err := s.auth.AuthenticateOperator(ctx, key)
		if isUnauthorized(err) {
			s.mu.Lock()
			delete(s.m, h)
			s.mu.Unlock()
			return Principal{}, ErrUnauthenticated
		}
		if err != nil {
			// The store is down: keep the session, ask again next time.
			return p, nil
		}
		s.mu.Lock()
		ss.checked, ss.role, ss.name = now, k.Role, k.Name
		s.mu.Unlock()
		p.Role, p.Name = k.Role, k.Name
	}
	return p, nil
}

// sweep forgets expired sessions (Run calls it every minute).
func (s *sessions) sweep() {
	s.mu.Lock()
	s.sweepLocked(s.now())
	s.mu.Unlock()
}

func (s *sessions) sweepLocked(now time.Time) {
	for h, ss := range s.m {
		if !now.Before(ss.expires) {
			delete(s.m, h)
		}
	}
}

// exists reports whether the cookie's session is still valid; live
// connections check it so they end with a logout or expiry.
func (s *sessions) exists(tok string) bool {
	h := sha256.Sum256([]byte(tok))
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[h]
	return ss != nil && s.now().Before(ss.expires)
}

// isUnauthorized recognises devices.ErrUnauthorized (and anything else with
// an Unauthorized() bool method) without importing devices.
func isUnauthorized(err error) bool {
	var u interface{ Unauthorized() bool }
	return errors.As(err, &u) && u.Unauthorized()
}

// bearer extracts "Authorization: Bearer <key>".
func bearer(r *http.Request) string {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(cred)
}

// Authenticate resolves the request's operator: the session cookie, or an
// API key in "Authorization: Bearer". It returns an error wrapping
// ErrUnauthenticated when neither is valid; any other error means the
// credential could not be checked (answer 503).
func (d *Dashboard) Authenticate(r *http.Request) (Principal, error) {
	if key := bearer(r); key != "" {
		k, err := d.auth.AuthenticateOperator(r.Context(), key)
		if isUnauthorized(err) {
			return Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
		}
		if err != nil {
			return Principal{}, fmt.Errorf("check API key: %w", err)
		}
		if k.Role != RoleAdmin && k.Role != RoleViewer {
			return Principal{}, fmt.Errorf("%w: role %q", ErrUnauthenticated, k.Role)
		}
		return Principal{KeyID: k.ID, Name: k.Name, Role: k.Role}, nil
	}
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		return d.sessions.lookup(r.Context(), c.Value)
	}
	return Principal{}, ErrUnauthenticated
}

// checkCSRF: a cookie-authenticated request that changes state must carry
// the session's CSRF token (header X-CSRF-Token or form field csrf). Bearer
// requests are not exposed to CSRF (a browser never adds the header).
func checkCSRF(p Principal, r *http.Request) bool {
	if p.Session == "" {
		return true
	}
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(p.CSRF)) == 1
}

// originAllowed: requests without Origin are not from a browser's
// cross-site context (browsers send it on WebSocket upgrades and POSTs);
// with one it must be this host or an allowed origin.
func (d *Dashboard) originAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	norm, err := parseOrigin(o)
	if err != nil {
		return false
	}
	if d.origins[norm] {
		return true
	}
	_, host, _ := strings.Cut(norm, "://")
	return strings.EqualFold(host, r.Host)
}

func secureRequest(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (d *Dashboard) setSessionCookie(w http.ResponseWriter, r *http.Request, tok string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    tok,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   secureRequest(r),
		SameSite: http.SameSiteStrictMode,
	})
}
