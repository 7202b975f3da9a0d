package dashboard

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

//go:embed templates/*.html
var templateFS embed.FS

type pages struct {
	bundle bundle
	tmpl   map[string]*template.Template
}

func loadPages() (*pages, error) {
	funcs := template.FuncMap{
		"fmtTime": func(t any) string {
			switch v := t.(type) {
			case time.Time:
				return v.UTC().Format("2006-01-02 15:04:05Z")
			case *time.Time:
				if v == nil {
					return ""
				}
				return v.UTC().Format("2006-01-02 15:04:05Z")
			}
			return ""
		},
	}
	p := &pages{bundle: loadBundle(), tmpl: make(map[string]*template.Template)}
	for _, name := range []string{"login", "fleet", "device", "system", "error"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		p.tmpl[name] = t
	}
	return p, nil
}

// view is what every template gets.
type view struct {
	Title  string
	Page   string
	User   Principal
	Bundle struct {
		Built   bool
		Version string
	}
	Data  any // JSON for the page's script, in <script type="application/json">
	Error string
	Next  string

	// device page
	Device     storage.Device
	Sessions   []storage.Session
	Live       LiveStats
	LastSeen   string
	Metrics    []metricRow
	CanCommand bool
}

type metricRow struct {
	Name, Value, Unit, Time string
}

func (d *Dashboard) render(w http.ResponseWriter, status int, name string, v view) {
	v.Bundle.Built, v.Bundle.Version = d.pages.bundle.built, d.pages.bundle.version
	if v.Data == nil {
		v.Data = map[string]any{}
	}
	var buf bytes.Buffer
	if err := d.pages.tmpl[name].ExecuteTemplate(&buf, name+".html", v); err != nil {
		d.log.Error("render page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// page wraps a page handler: without a valid login the browser goes to
// /login and comes back afterwards.
func (d *Dashboard) page(fn func(http.ResponseWriter, *http.Request, Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := d.Authenticate(r)
		if errors.Is(err, ErrUnauthenticated) {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if err != nil {
			d.log.Error("dashboard: authenticate", "err", err)
			d.render(w, http.StatusServiceUnavailable, "error", view{Title: "Unavailable", Page: "error", Error: "Credentials cannot be checked right now (storage unreachable). Try again shortly."})
			return
		}
		fn(w, r, p)
	}
}

// api wraps a JSON handler with authentication.
func (d *Dashboard) api(fn func(http.ResponseWriter, *http.Request, Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := d.Authenticate(r)
		if errors.Is(err, ErrUnauthenticated) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meridian"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "unauthenticated", Detail: "log in, or send Authorization: Bearer <API key>"})
			return
		}
		if err != nil {
			d.log.Error("dashboard: authenticate", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "cannot check credentials now"})
			return
		}
		fn(w, r, p)
	}
}

type apiError struct {
	Error  string `json:"error"`
	Detail string `json:"detail,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ---- login / logout ----

// safeNext keeps a post-login redirect on this site: a local absolute path,
// never "//host", "/\\host" or a scheme. Browsers drop tabs and newlines
// from URLs and treat a backslash as a slash, so "/\t/evil.example" would
// become "//evil.example" (off-site) after the check: any control
// character, space or backslash makes the target "/".
func safeNext(s string) string {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") {
		return "/"
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f || c == '\\' {
			return "/"
		}
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	return s
}

func (d *Dashboard) serveLoginForm(w http.ResponseWriter, r *http.Request) {
	if _, err := d.Authenticate(r); err == nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	d.render(w, http.StatusOK, "login", view{Title: "Log in", Page: "login", Next: safeNext(r.URL.Query().Get("next"))})
}

func (d *Dashboard) serveLogin(w http.ResponseWriter, r *http.Request) {
	// SameSite=Strict keeps the cookie off cross-site requests; the Origin
	// check also stops a cross-site page logging a victim into the
	// attacker's account (login CSRF).
	if !d.originAllowed(r) {
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	key := strings.TrimSpace(r.PostFormValue("key"))
	next := safeNext(r.PostFormValue("next"))
	k, err := d.auth.AuthenticateOperator(r.Context(), key)
	switch {
	case isUnauthorized(err) || (err == nil && k.Role != RoleAdmin && k.Role != RoleViewer):
		d.m.logins.WithLabelValues("invalid").Inc()
		d.log.Info("dashboard login refused", "remote", r.RemoteAddr)
		d.render(w, http.StatusUnauthorized, "login", view{Title: "Log in", Page: "login", Next: next, Error: "That API key is not valid (unknown, revoked, or not an operator key)."})
		return
	case err != nil:
		d.m.logins.WithLabelValues("error").Inc()
		d.log.Error("dashboard login", "err", err)
		d.render(w, http.StatusServiceUnavailable, "login", view{Title: "Log in", Page: "login", Next: next, Error: "Credentials cannot be checked right now; try again shortly."})
		return
	}
	tok, err := d.sessions.create(key, k)
	if err != nil {
		d.m.logins.WithLabelValues("error").Inc()
		d.log.Warn("dashboard login refused: session table full", "key", k.ID, "sessions", maxSessions)
		d.render(w, http.StatusServiceUnavailable, "login", view{Title: "Log in", Page: "login", Next: next, Error: "Too many open dashboard sessions on this server; log out elsewhere or try again later."})
		return
	}
	d.m.logins.WithLabelValues("ok").Inc()
	d.log.Info("dashboard login", "key", k.ID, "role", k.Role, "remote", r.RemoteAddr)
	d.setSessionCookie(w, r, tok, 0)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *Dashboard) serveLogout(w http.ResponseWriter, r *http.Request) {
	if !d.originAllowed(r) {
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		if p, err := d.sessions.lookup(r.Context(), c.Value); err == nil {
			if !checkCSRF(p, r) {
				http.Error(w, "missing or wrong CSRF token", http.StatusForbidden)
				return
			}
			d.sessions.delete(c.Value)
		}
	}
	d.setSessionCookie(w, r, "", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// ---- pages ----

func (d *Dashboard) serveFleet(w http.ResponseWriter, r *http.Request, p Principal) {
	d.render(w, http.StatusOK, "fleet", view{Title: "Fleet", Page: "fleet", User: p, Data: map[string]any{"csrf": p.CSRF}})
}

func (d *Dashboard) serveSystem(w http.ResponseWriter, r *http.Request, p Principal) {
	d.render(w, http.StatusOK, "system", view{Title: "System", Page: "system", User: p, Data: map[string]any{"csrf": p.CSRF}})
}

func (d *Dashboard) serveDevice(w http.ResponseWriter, r *http.Request, p Principal) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	dev, sess, err := d.deps.Registry.Device(ctx, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && dev.ID == "") {
		d.render(w, http.StatusNotFound, "error", view{Title: "No such device", Page: "error", User: p, Error: fmt.Sprintf("There is no device %q.", id)})
		return
	}
	if err != nil {
		d.log.Error("dashboard: device page", "device", id, "err", err)
		d.render(w, http.StatusServiceUnavailable, "error", view{Title: "Unavailable", Page: "error", User: p, Error: "The device registry cannot be read right now."})
		return
	}
	live, _ := d.hub.fleet.stats(id)
	names := make([]string, 0, len(live.Latest))
	for m := range live.Latest {
		names = append(names, m)
	}
	slices.Sort(names)
	rows := make([]metricRow, 0, len(names))
	for _, m := range names {
		l := live.Latest[m]
		rows = append(rows, metricRow{Name: m, Value: formatValue(l.V), Unit: unitOf(m), Time: time.UnixMilli(l.T).UTC().Format("15:04:05")})
	}
	lastSeen := "never"
	if live.LastSeen > 0 {
		lastSeen = time.UnixMilli(live.LastSeen).UTC().Format("2006-01-02 15:04:05Z")
	} else if dev.LastSeen != nil {
		lastSeen = dev.LastSeen.UTC().Format("2006-01-02 15:04:05Z")
	}
	canCommand := p.Admin() && d.deps.Commands != nil
	d.render(w, http.StatusOK, "device", view{
		Title: dev.Name, Page: "device", User: p,
		Device: dev, Sessions: sess, Live: live, LastSeen: lastSeen, Metrics: rows, CanCommand: canCommand,
		Data: map[string]any{
			"device":   dev.ID,
			"metrics":  names,
			"latest":   live.Latest,
			"csrf":     p.CSRF,
			"commands": canCommand,
			"max_rate": d.cfg.MaxUpdatesPerSecond,
		},
	})
}

func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

// unitOf guesses a metric's unit from common name suffixes
// (temp_c, humidity_pct, supply_v...). The front end has the same table.
func unitOf(metric string) string {
	i := strings.LastIndexAny(metric, "_.")
	if i < 0 {
		return ""
	}
	return units[strings.ToLower(metric[i+1:])]
}

var units = map[string]string{
	"c": "°C", "celsius": "°C", "f": "°F", "k": "K",
	"pct": "%", "percent": "%", "rh": "%RH",
	"v": "V", "mv": "mV", "a": "A", "ma": "mA", "w": "W", "kw": "kW", "wh": "Wh", "kwh": "kWh",
	"hz": "Hz", "rpm": "rpm", "pa": "Pa", "hpa": "hPa", "kpa": "kPa", "bar": "bar",
	"ms": "ms", "s": "s", "m": "m", "mm": "mm", "db": "dB", "dbm": "dBm", "lux": "lx", "ppm": "ppm",
}

// ---- JSON API for the pages ----

// deviceCache keeps the registry's device list for a few seconds, so a fleet
// page paging through 10,000 devices (and several open tabs) costs one
// registry read per interval, not one per request.
type deviceCache struct {
	mu      sync.Mutex
	at      time.Time
	devices []storage.Device
}

const deviceCacheTTL = 3 * time.Second

func (d *Dashboard) allDevices(ctx context.Context) ([]storage.Device, error) {
	c := &d.devCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.devices != nil && d.now().Sub(c.at) < deviceCacheTTL {
		return c.devices, nil
	}
	all, err := d.deps.Registry.ListDevices(ctx, nil)
	if err != nil {
		return nil, err
	}
	// Pages must be stable while the user pages through them.
	all = slices.Clone(all)
	slices.SortFunc(all, func(a, b storage.Device) int { return strings.Compare(a.ID, b.ID) })
	c.devices, c.at = all, d.now()
	return all, nil
}

type deviceRow struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Enabled bool              `json:"enabled"`
	LiveStats
}

type devicePage struct {
	Total   int         `json:"total"`
	Offset  int         `json:"offset"`
	Limit   int         `json:"limit"`
	Devices []deviceRow `json:"devices"`
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s: must be an integer between %d and %d, got %q", name, lo, hi, s)
	}
	return n, nil
}

// apiDevices: GET /ui/api/devices?offset=&limit=&q=&label=k=v (label
// repeatable, all must match; q matches id or name, case-insensitive).
func (d *Dashboard) apiDevices(w http.ResponseWriter, r *http.Request, _ Principal) {
	q := r.URL.Query()
	offset, err := intParam(q, "offset", 0, 0, 1<<30)
	if err == nil {
		var limit int
		limit, err = intParam(q, "limit", defaultPageSize, 1, maxPageSize)
		if err == nil {
			d.devicePage(w, r, q, offset, limit)
			return
		}
	}
	writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: err.Error()})
}

func (d *Dashboard) devicePage(w http.ResponseWriter, r *http.Request, q url.Values, offset, limit int) {
	labels := map[string]string{}
	for _, l := range q["label"] {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: fmt.Sprintf("label: must be key=value, got %q", l)})
			return
		}
		labels[k] = v
	}
	search := strings.ToLower(strings.TrimSpace(q.Get("q")))
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	all, err := d.allDevices(ctx)
	if err != nil {
		d.log.Error("dashboard: list devices", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "the device registry cannot be read right now"})
		return
	}
	page := devicePage{Offset: offset, Limit: limit, Devices: []deviceRow{}}
	for _, dev := range all {
		if !matches(dev, search, labels) {
			continue
		}
		if page.Total >= offset && len(page.Devices) < limit {
			live, _ := d.hub.fleet.stats(dev.ID)
			if live.LastSeen == 0 && dev.LastSeen != nil {
				live.LastSeen = dev.LastSeen.UnixMilli()
			}
			page.Devices = append(page.Devices, deviceRow{ID: dev.ID, Name: dev.Name, Labels: dev.Labels, Enabled: dev.Enabled, LiveStats: live})
		}
		page.Total++
	}
	writeJSON(w, http.StatusOK, page)
}

func matches(dev storage.Device, search string, labels map[string]string) bool {
	for k, v := range labels {
		if hv, ok := dev.Labels[k]; !ok || hv != v {
			return false
		}
	}
	if search == "" {
		return true
	}
	return strings.Contains(strings.ToLower(dev.ID), search) || strings.Contains(strings.ToLower(dev.Name), search)
}

func (d *Dashboard) apiDevice(w http.ResponseWriter, r *http.Request, _ Principal) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	dev, sess, err := d.deps.Registry.Device(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, apiError{Error: "not_found", Detail: "no device " + id})
		return
	}
	if err != nil {
		d.log.Error("dashboard: get device", "device", id, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "the device registry cannot be read right now"})
		return
	}
	live, _ := d.hub.fleet.stats(id)
	writeJSON(w, http.StatusOK, struct {
		Device   storage.Device    `json:"device"`
		Sessions []storage.Session `json:"sessions"`
		Live     LiveStats         `json:"live"`
	}{dev, sess, live})
}

const (
	defaultPoints = 600
	maxPoints     = 5000
	maxSeriesSpan = 400 * 24 * time.Hour
)

// parseTime accepts Unix milliseconds or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(n), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// apiSeries: GET /ui/api/series?device=&metric=&from=&to=&points= — the same
// as GET /v1/series, under the dashboard session. from and to are Unix ms or
// RFC 3339; from inclusive, to exclusive; to defaults to now.
func (d *Dashboard) apiSeries(w http.ResponseWriter, r *http.Request, _ Principal) {
	q := r.URL.Query()
	bad := func(format string, args ...any) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: fmt.Sprintf(format, args...)})
	}
	req := storage.SeriesRequest{Device: q.Get("device"), Metric: q.Get("metric"), To: d.now()}
	if !deviceRe.MatchString(req.Device) {
		bad("device: must match [a-z0-9][a-z0-9_.-]{0,63}, got %q", req.Device)
		return
	}
	if !metricRe.MatchString(req.Metric) {
		bad("metric: must be 1-128 of [A-Za-z0-9_.:/-], got %q", req.Metric)
		return
	}
	var err error
	if req.From, err = parseTime(q.Get("from")); err != nil {
		bad("from: must be Unix milliseconds or RFC 3339, got %q", q.Get("from"))
		return
	}
	if s := q.Get("to"); s != "" {
		if req.To, err = parseTime(s); err != nil {
			bad("to: must be Unix milliseconds or RFC 3339, got %q", s)
			return
		}
	}
	if !req.From.Before(req.To) {
		bad("from must be before to")
		return
	}
	if req.To.Sub(req.From) > maxSeriesSpan {
		bad("the range may span at most 400 days")
		return
	}
	if req.Points, err = intParam(q, "points", defaultPoints, 1, maxPoints); err != nil {
		bad("%v", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	s, err := d.deps.Series(ctx, req)
	if errors.Is(err, storage.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, apiError{Error: "not_found", Detail: "no device " + req.Device})
		return
	}
	if err != nil {
		d.log.Error("dashboard: series", "device", req.Device, "metric", req.Metric, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "history cannot be read right now"})
		return
	}
	if s.Points == nil {
		s.Points = []storage.SeriesPoint{}
	}
	writeJSON(w, http.StatusOK, s)
}

// apiSystem: live-feed numbers plus whatever Deps.Stats reports.
func (d *Dashboard) apiSystem(w http.ResponseWriter, r *http.Request, _ Principal) {
	rate, tracked, online := d.hub.fleet.totals()
	out := map[string]any{
		"ingest_rate":     rate,
		"devices_tracked": tracked,
		"devices_online":  online,
		"live_clients":    d.hub.clientCount(),
		"hub_queue":       d.hub.QueueDepth(),
		"hub_queue_cap":   inboxSize,
	}
	var extra map[string]any
	if d.deps.Stats != nil {
		extra = d.deps.Stats()
	}
	if extra == nil {
		extra = map[string]any{}
	}
	out["server"] = extra
	writeJSON(w, http.StatusOK, out)
}
