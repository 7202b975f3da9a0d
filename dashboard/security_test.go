package dashboard

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestLoginRedirectStaysOnSite attacks the post-login redirect with targets
// a browser turns into another site (it strips tabs and newlines and reads
// "\" as "/"): every one must land on "/".
func TestLoginRedirectStaysOnSite(t *testing.T) {
	e := newTestEnv(t, nil)
	h := e.d.Handler()
	cookie, _ := e.login(t, viewerKey)
	for _, next := range []string{
		"/\t/evil.example/x", "/\n/evil.example", "/\r/evil.example", "/ /evil.example",
		"//evil.example", "/\\evil.example", "/\\/evil.example", "https://evil.example/",
		"/x/../\t/evil.example", "\t//evil.example", "/\x00/evil.example", "/\x7f/evil.example",
	} {
		t.Run(strings.ToValidUTF8(url.QueryEscape(next), "?"), func(t *testing.T) {
			// Already logged in: GET /login?next= redirects at once.
			req := httptest.NewRequest("GET", "/login?next="+url.QueryEscape(next), nil)
			req.AddCookie(cookie)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if got := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || got != "/" {
				t.Errorf("GET /login?next=%q: %d Location %q, want 303 to /", next, rec.Code, got)
			}
			// Logging in with the form.
			form := url.Values{"key": {viewerKey}, "next": {next}}
			req = httptest.NewRequest("POST", "/login", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if got := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || got != "/" {
				t.Errorf("POST /login next=%q: %d Location %q, want 303 to /", next, rec.Code, got)
			}
		})
	}
	// A local target with a query survives.
	req := httptest.NewRequest("GET", "/login?next="+url.QueryEscape("/ui/devices/boiler-7?range=1h"), nil)
	req.AddCookie(cookie)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if got := rec.Header().Get("Location"); got != "/ui/devices/boiler-7?range=1h" {
		t.Errorf("local next: Location %q", got)
	}
}

// TestSessionFloodEvictsOnlyOwnSessions: a viewer logs in 10,000 times
// through the real handler; the admin's session survives, and what the
// flood evicted is the viewer's own oldest sessions.
func TestSessionFloodEvictsOnlyOwnSessions(t *testing.T) {
	e := newTestEnv(t, nil)
	h := e.d.Handler()
	admin, _ := e.login(t, adminKey)
	login := func() *http.Cookie {
		form := url.Values{"key": {viewerKey}, "next": {"/"}}
		req := httptest.NewRequest("POST", "/login", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusSeeOther {
			t.Fatalf("viewer login: %d", rec.Code)
		}
		for _, c := range rec.Result().Cookies() {
			if c.Name == sessionCookie {
				return c
			}
		}
		t.Fatal("no session cookie")
		return nil
	}
	first := login()
	var last *http.Cookie
	for i := 0; i < maxSessions; i++ {
		last = login()
	}
	status := func(c *http.Cookie) int {
		req := httptest.NewRequest("GET", "/ui/system", nil)
		req.AddCookie(c)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if got := status(admin); got != http.StatusOK {
		t.Errorf("admin session after a viewer's login flood: %d, want 200 (still logged in)", got)
	}
	if got := status(last); got != http.StatusOK {
		t.Errorf("viewer's newest session: %d, want 200", got)
	}
	if got := status(first); got != http.StatusSeeOther {
		t.Errorf("viewer's first session: %d, want 303 to /login (evicted by its own flood)", got)
	}
	e.d.sessions.mu.Lock()
	n := len(e.d.sessions.m)
	e.d.sessions.mu.Unlock()
	if n != maxSessionsPerKey+1 {
		t.Errorf("session table holds %d sessions, want %d (the viewer's cap + the admin)", n, maxSessionsPerKey+1)
	}
}
