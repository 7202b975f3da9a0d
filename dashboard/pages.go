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
		// timeTag renders a <time> the front end rewrites into the
		// dashboard's one format (local time with its zone, or UTC; full
		// date on hover). Without the bundle the UTC text stands.
		"timeTag": func(t any) template.HTML {
			var v time.Time
			switch x := t.(type) {
			case time.Time:
				v = x
			case *time.Time:
				if x == nil {
					return ""
				}
				v = *x
			case int64:
				if x == 0 {
					return `<span class="muted">never</span>`
				}
				v = time.UnixMilli(x)
			}
			if v.IsZero() {
				return ""
			}
			u := v.UTC()
			return template.HTML(fmt.Sprintf(`<time datetime="%s" data-ms="%d" title="%s">%s</time>`,
				u.Format(time.RFC3339Nano), u.UnixMilli(), u.Format("Mon 2006-01-02 15:04:05 UTC"), u.Format("2006-01-02 15:04:05 UTC")))
		},
	}
	funcs["stateText"] = stateText
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
	Detail     deviceDetail
	Live       LiveStats
	Metrics    []metricRow
	CanCommand bool
}

type metricRow struct {
	Name, Value, Unit string
	Time              time.Time
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
	dd, err := d.deviceDetail(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		d.render(w, http.StatusNotFound, "error", view{Title: "No such device", Page: "error", User: p, Error: fmt.Sprintf("There is no device %q. Devices are added with `meridian device add ID` or POST /v1/admin/devices.", id)})
		return
	}
	if err != nil {
		d.log.Error("dashboard: device page", "device", id, "err", err)
		d.render(w, http.StatusServiceUnavailable, "error", view{Title: "Unavailable", Page: "error", User: p, Error: "The device registry cannot be read right now (storage unreachable). The server keeps retrying; this page works again once storage answers."})
		return
	}
	live := dd.Live
	names := make([]string, 0, len(live.Latest))
	for m := range live.Latest {
		names = append(names, m)
	}
	slices.Sort(names)
	rows := make([]metricRow, 0, len(names))
	for _, m := range names {
		l := live.Latest[m]
		rows = append(rows, metricRow{Name: m, Value: formatValue(l.V), Unit: unitOf(m), Time: time.UnixMilli(l.T)})
	}
	canCommand := p.Admin() && d.deps.Commands != nil
	d.render(w, http.StatusOK, "device", view{
		Title: dd.Device.Name, Page: "device", User: p,
		Device: dd.Device, Detail: dd, Live: live, Metrics: rows, CanCommand: canCommand,
		Data: map[string]any{
			"device":    dd.Device.ID,
			"metrics":   names,
			"latest":    live.Latest,
			"last_seen": live.LastSeen,
			"created":   dd.Device.CreatedAt.UnixMilli(),
			"csrf":      p.CSRF,
			"commands":  canCommand,
			"max_rate":  d.cfg.MaxUpdatesPerSecond,
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

// deviceDetail is GET /ui/api/devices/{id}: everything the device page
// refreshes while it is open.
type deviceDetail struct {
	Device   storage.Device `json:"device"`
	State    string         `json:"state"`
	Sessions []sessionView  `json:"sessions"`
	Live     LiveStats      `json:"live"`
}

// deviceDetail merges the registry record with the hub's live state: the
// acked seq and last seen move with every committed batch, the record only
// when read.
func (d *Dashboard) deviceDetail(ctx context.Context, id string) (deviceDetail, error) {
	dev, sess, err := d.deps.Registry.Device(ctx, id)
	if err == nil && dev.ID == "" {
		err = fmt.Errorf("device %q: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return deviceDetail{}, err
	}
	live, _ := d.hub.fleet.stats(id)
	dev.Acked = max(dev.Acked, live.Acked)
	live.Acked = dev.Acked
	if live.LastSeen == 0 && dev.LastSeen != nil {
		live.LastSeen = dev.LastSeen.UnixMilli()
	}
	b := brief{online: live.Online, lastSeen: live.LastSeen}
	return deviceDetail{Device: dev, State: deviceState(dev, b), Sessions: sessionViews(sess, live), Live: live}, nil
}

func (d *Dashboard) apiDevice(w http.ResponseWriter, r *http.Request, _ Principal) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	dd, err := d.deviceDetail(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, apiError{Error: "not_found", Detail: "no device " + id})
		return
	}
	if err != nil {
		d.log.Error("dashboard: get device", "device", id, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "the device registry cannot be read right now; the server keeps retrying"})
		return
	}
	writeJSON(w, http.StatusOK, dd)
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
