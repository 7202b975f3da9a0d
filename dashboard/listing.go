package dashboard

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Device states as the fleet page shows and filters them. A disabled
// device is "disabled" whatever its connection; "never" has no reading or
// connection on record.
const (
	StateOnline   = "online"
	StateOffline  = "offline"
	StateNever    = "never"
	StateDisabled = "disabled"
)

func deviceState(dev storage.Device, b brief) string {
	switch {
	case !dev.Enabled:
		return StateDisabled
	case b.online:
		return StateOnline
	case b.lastSeen == 0 && dev.LastSeen == nil:
		return StateNever
	}
	return StateOffline
}

// stateText is a state in words, as the pages show it.
func stateText(state string) string {
	if state == StateNever {
		return "never seen"
	}
	return state
}

// stateOrder sorts states the way an operator triages: what is up first.
var stateOrder = map[string]int{StateOnline: 0, StateOffline: 1, StateNever: 2, StateDisabled: 3}

type deviceRow struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Enabled bool              `json:"enabled"`
	State   string            `json:"state"`
	LiveStats
}

// stateCounts are the fleet's devices by state, over the search and label
// filter but before the state filter, so the filter buttons show what each
// would select.
type stateCounts struct {
	Online   int `json:"online"`
	Offline  int `json:"offline"`
	Never    int `json:"never"`
	Disabled int `json:"disabled"`
	All      int `json:"all"`
}

func (c *stateCounts) add(state string) {
	c.All++
	switch state {
	case StateOnline:
		c.Online++
	case StateOffline:
		c.Offline++
	case StateNever:
		c.Never++
	case StateDisabled:
		c.Disabled++
	}
}

type devicePage struct {
	Total   int         `json:"total"` // matching every filter
	Offset  int         `json:"offset"`
	Limit   int         `json:"limit"`
	Sort    string      `json:"sort"`
	Desc    bool        `json:"desc"`
	Counts  stateCounts `json:"counts"`
	Devices []deviceRow `json:"devices"`
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// sortKeys are the fleet list's sortable columns.
var sortKeys = []string{"id", "name", "state", "last_seen", "rate"}

// listQuery is a parsed GET /ui/api/devices.
type listQuery struct {
	offset, limit int
	search        string
	labels        map[string]string
	state         string // "" for all
	sort          string
	desc          bool
}

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

func parseListQuery(q url.Values) (listQuery, error) {
	lq := listQuery{labels: map[string]string{}, sort: "id"}
	var err error
	if lq.offset, err = intParam(q, "offset", 0, 0, 1<<30); err != nil {
		return lq, err
	}
	if lq.limit, err = intParam(q, "limit", defaultPageSize, 1, maxPageSize); err != nil {
		return lq, err
	}
	for _, l := range q["label"] {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return lq, fmt.Errorf("label: must be key=value, got %q", l)
		}
		lq.labels[k] = v
	}
	lq.search = strings.ToLower(strings.TrimSpace(q.Get("q")))
	switch st := q.Get("state"); st {
	case "", "all":
	case StateOnline, StateOffline, StateNever, StateDisabled:
		lq.state = st
	default:
		return lq, fmt.Errorf("state: must be one of online, offline, never, disabled, got %q", st)
	}
	if s := q.Get("sort"); s != "" {
		if !slices.Contains(sortKeys, s) {
			return lq, fmt.Errorf("sort: must be one of %s, got %q", strings.Join(sortKeys, ", "), s)
		}
		lq.sort = s
	}
	switch dir := q.Get("dir"); dir {
	case "", "asc":
	case "desc":
		lq.desc = true
	default:
		return lq, fmt.Errorf("dir: must be asc or desc, got %q", dir)
	}
	return lq, nil
}

// apiDevices: GET /ui/api/devices?offset=&limit=&q=&label=k=v&state=&sort=&dir=
// (label repeatable, all must match; q matches id or name,
// case-insensitive; state one of online, offline, never, disabled; sort one
// of id, name, state, last_seen, rate; dir asc or desc). Filtering, sorting
// and paging happen here, over the cached registry list and the hub's live
// state, so the browser only ever gets one page.
func (d *Dashboard) apiDevices(w http.ResponseWriter, r *http.Request, _ Principal) {
	lq, err := parseListQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	all, err := d.allDevices(ctx)
	if err != nil {
		d.log.Error("dashboard: list devices", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "unavailable", Detail: "the device registry cannot be read right now; the server keeps retrying — check the storage status on the System page"})
		return
	}
	writeJSON(w, http.StatusOK, d.listDevices(all, lq))
}

// listDevices filters, counts, sorts and pages. O(n log n) in the matching
// devices with one fleet read lock; only the page's rows copy live values.
func (d *Dashboard) listDevices(all []storage.Device, lq listQuery) devicePage {
	briefs := d.hub.fleet.briefs()
	type item struct {
		dev   *storage.Device
		b     brief
		state string
	}
	page := devicePage{Offset: lq.offset, Limit: lq.limit, Sort: lq.sort, Desc: lq.desc, Devices: []deviceRow{}}
	items := make([]item, 0, len(all))
	for i := range all {
		dev := &all[i]
		if !matches(*dev, lq.search, lq.labels) {
			continue
		}
		b := briefs[dev.ID]
		if b.lastSeen == 0 && dev.LastSeen != nil {
			b.lastSeen = dev.LastSeen.UnixMilli()
		}
		st := deviceState(*dev, b)
		page.Counts.add(st)
		if lq.state != "" && st != lq.state {
			continue
		}
		items = append(items, item{dev, b, st})
	}
	page.Total = len(items)
	// all is sorted by id, and SortStableFunc keeps that as the tie-break.
	if lq.sort != "id" || lq.desc {
		var by func(a, b item) int
		switch lq.sort {
		case "id":
			by = func(a, b item) int { return strings.Compare(a.dev.ID, b.dev.ID) }
		case "name":
			by = func(a, b item) int { return cmp.Compare(strings.ToLower(a.dev.Name), strings.ToLower(b.dev.Name)) }
		case "state":
			by = func(a, b item) int { return cmp.Compare(stateOrder[a.state], stateOrder[b.state]) }
		case "last_seen":
			by = func(a, b item) int { return cmp.Compare(a.b.lastSeen, b.b.lastSeen) }
		case "rate":
			by = func(a, b item) int { return cmp.Compare(a.b.rate, b.b.rate) }
		}
		if lq.desc {
			asc := by
			by = func(a, b item) int { return asc(b, a) }
		}
		slices.SortStableFunc(items, by)
	}
	if lq.offset < len(items) {
		for _, it := range items[lq.offset:min(len(items), lq.offset+lq.limit)] {
			live, _ := d.hub.fleet.stats(it.dev.ID)
			live.LastSeen = it.b.lastSeen
			page.Devices = append(page.Devices, deviceRow{ID: it.dev.ID, Name: it.dev.Name, Labels: it.dev.Labels, Enabled: it.dev.Enabled, State: it.state, LiveStats: live})
		}
	}
	return page
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
