package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

func TestCloseReason(t *testing.T) {
	cases := map[string]struct {
		stored string
		code   int
		words  string
	}{
		"device closed":  {"1000 ", 1000, "closed by the device"},
		"shutdown":       {"1001 server shutting down", 1001, "going away: server shutting down"},
		"lost":           {"1006 connection lost", 1006, "connection lost"},
		"policy":         {"1008 device disabled", 1008, "closed by policy: device disabled"},
		"unknown code":   {"4001 custom", 4001, "closed with code 4001: custom"},
		"not a code":     {"going away", 0, "going away"},
		"empty":          {"", 0, ""},
		"rate limited":   {"1013 over the readings rate", 1013, "try again later: over the readings rate"},
		"trailing space": {"1011  ", 1011, "server error"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, words := closeReason(tc.stored)
			if code != tc.code || words != tc.words {
				t.Errorf("closeReason(%q) = %d %q, want %d %q", tc.stored, code, words, tc.code, tc.words)
			}
		})
	}
}

func TestSessionViewsRunningCount(t *testing.T) {
	ended := time.Now()
	sess := []storage.Session{
		{ID: "s2", StartedAt: time.Now()}, // open: its stored count is 0 until close
		{ID: "s1", EndedAt: &ended, CloseReason: "1000 ", Readings: 10},
	}
	since := sess[0].StartedAt.UnixMilli()
	v := sessionViews(sess, LiveStats{Online: true, SessionReadings: 42, SessionSince: since})
	if !v[0].Open || v[0].Readings != 42 {
		t.Errorf("open session: %+v, want open with the live count 42", v[0])
	}
	if v[1].Open || v[1].Readings != 10 || v[1].CloseText != "closed by the device" || v[1].CloseCode != 1000 {
		t.Errorf("closed session: %+v", v[1])
	}
	// Offline: the hub's count belongs to no open session.
	if v := sessionViews(sess, LiveStats{SessionReadings: 42, SessionSince: since}); v[0].Readings != 0 {
		t.Errorf("offline device: open session readings %d, want the stored 0", v[0].Readings)
	}
	// Online, but the count started with another session (held by another
	// node, or no presence seen here).
	for _, other := range []int64{0, since - 60_000} {
		if v := sessionViews(sess, LiveStats{Online: true, SessionReadings: 42, SessionSince: other}); v[0].Readings != 0 {
			t.Errorf("count since %d applied to a session started at %d", other, since)
		}
	}
}

// TestDeviceAPILive: acked seq and the open session's readings move with
// committed batches, between registry reads.
func TestDeviceAPILive(t *testing.T) {
	e := newTestEnv(t, nil)
	cookie, _ := e.login(t, viewerKey)
	e.d.Presence(telemetry.Presence{Device: "boiler-7", Online: true, At: time.Now().UnixMilli()})
	for seq := uint64(1); seq <= 3; seq++ {
		e.d.Publish(telemetry.Batch{Device: "boiler-7", Seq: seq, Readings: []telemetry.Reading{{Time: int64(seq), Metric: "temp_c", Value: 20}, {Time: int64(seq), Metric: "rh_pct", Value: 40}}})
	}
	var dd deviceDetail
	deadline := time.Now().Add(2 * time.Second)
	for {
		if err := json.Unmarshal([]byte(e.get(t, "/ui/api/devices/boiler-7", cookie, 200)), &dd); err != nil {
			t.Fatal(err)
		}
		if dd.Device.Acked == 3 && dd.Live.SessionReadings == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device API: acked %d, session readings %d; want 3 and 6", dd.Device.Acked, dd.Live.SessionReadings)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if dd.State != StateOnline || !dd.Sessions[0].Open || dd.Sessions[0].Readings != 1200 {
		// The fake's open session has 1200 stored (more than the live 6).
		t.Errorf("state %q, sessions %+v", dd.State, dd.Sessions)
	}
	if dd.Sessions[1].CloseText == "" {
		t.Errorf("closed session without words: %+v", dd.Sessions[1])
	}
	// The page itself renders the same fields.
	body := e.get(t, "/ui/devices/boiler-7", cookie, 200)
	for _, want := range []string{`id="acked" class="num">3<`, `<span class="badge on">open</span>`, `<time datetime=`} {
		if !strings.Contains(body, want) {
			t.Errorf("device page lacks %q", want)
		}
	}
}

func TestFleetListSortFilterCounts(t *testing.T) {
	now := time.Now()
	seen := now.Add(-time.Hour)
	reg := &fakeRegistry{devices: []storage.Device{
		{ID: "a-online", Name: "Zulu", Enabled: true},
		{ID: "b-offline", Name: "yankee", Enabled: true, LastSeen: &seen},
		{ID: "c-never", Name: "Xray", Enabled: true},
		{ID: "d-disabled", Name: "whiskey", Enabled: false, LastSeen: &seen},
		{ID: "e-online", Name: "Victor", Enabled: true},
	}}
	e := newTestEnv(t, func(_ *Config, d *Deps) { d.Registry = reg })
	cookie, _ := e.login(t, viewerKey)
	e.d.Presence(telemetry.Presence{Device: "a-online", Online: true, At: now.UnixMilli()})
	e.d.Presence(telemetry.Presence{Device: "e-online", Online: true, At: now.UnixMilli() + 1})
	list := func(q string) devicePage {
		var p devicePage
		if err := json.Unmarshal([]byte(e.get(t, "/ui/api/devices?"+q, cookie, 200)), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	deadline := time.Now().Add(2 * time.Second)
	for list("").Counts.Online != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("presence did not reach the list: %+v", list("").Counts)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ids := func(p devicePage) string {
		var s []string
		for _, d := range p.Devices {
			s = append(s, d.ID)
		}
		return strings.Join(s, ",")
	}
	cases := map[string]struct {
		query string
		want  string
		total int
	}{
		"default by id":        {"", "a-online,b-offline,c-never,d-disabled,e-online", 5},
		"id descending":        {"sort=id&dir=desc", "e-online,d-disabled,c-never,b-offline,a-online", 5},
		"name, no case":        {"sort=name", "e-online,d-disabled,c-never,b-offline,a-online", 5},
		"state":                {"sort=state", "a-online,e-online,b-offline,c-never,d-disabled", 5},
		"state descending":     {"sort=state&dir=desc", "d-disabled,c-never,b-offline,a-online,e-online", 5},
		"last seen, newest":    {"sort=last_seen&dir=desc", "e-online,a-online,b-offline,d-disabled,c-never", 5},
		"online only":          {"state=online", "a-online,e-online", 2},
		"never seen":           {"state=never", "c-never", 1},
		"disabled":             {"state=disabled", "d-disabled", 1},
		"offline":              {"state=offline", "b-offline", 1},
		"state and paging":     {"sort=state&limit=2&offset=2", "b-offline,c-never", 5},
		"search within filter": {"state=online&q=victor", "e-online", 1},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := list(tc.query)
			if got := ids(p); got != tc.want || p.Total != tc.total {
				t.Errorf("%s: %s (total %d), want %s (total %d)", tc.query, got, p.Total, tc.want, tc.total)
			}
		})
	}
	// Counts ignore the state filter, so each button shows what it selects.
	if c := list("state=never").Counts; c != (stateCounts{Online: 2, Offline: 1, Never: 1, Disabled: 1, All: 5}) {
		t.Errorf("counts %+v", c)
	}
	for _, bad := range []string{"state=up", "sort=colour", "dir=sideways"} {
		if body := e.get(t, "/ui/api/devices?"+bad, cookie, http.StatusBadRequest); !strings.Contains(body, "must be") {
			t.Errorf("%s: %s", bad, body)
		}
	}
}

func TestSystemHistory(t *testing.T) {
	reg := prometheus.NewRegistry()
	stored := prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_readings_stored_total", Help: "x"})
	conns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_device_connections", Help: "x"})
	flush := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_flush_seconds", Help: "x"})
	reg.MustRegister(stored, conns, flush)
	h := newHistory(reg, time.Second)
	t0 := time.Unix(1_700_000_000, 0)
	h.take(t0)
	stored.Add(100)
	conns.Set(3)
	flush.Observe(0.010)
	flush.Observe(0.030)
	h.take(t0.Add(2 * time.Second))
	s, last := h.series()
	if len(s.T) != 2 || last == nil {
		t.Fatalf("%d samples", len(s.T))
	}
	if s.ReadingsPerSec[0] != nil || *s.ReadingsPerSec[1] != 50 {
		t.Errorf("readings/s %v, want [nil 50]", s.ReadingsPerSec)
	}
	if math.Abs(*s.FlushMs[1]-20) > 1e-9 {
		t.Errorf("flush ms %v, want 20 (mean of 10 and 30)", *s.FlushMs[1])
	}
	if *s.Connections[1] != 3 || s.MQTTQueue[1] != nil {
		t.Errorf("connections %v, mqtt queue %v (absent metric must be null)", *s.Connections[1], s.MQTTQueue[1])
	}
	// The ring is bounded: 15 minutes of samples at most.
	for i := range 2000 {
		h.take(t0.Add(time.Duration(3+i) * time.Second))
	}
	if s, _ := h.series(); len(s.T) != int(historySpan/time.Second)+1 || s.T[len(s.T)-1] != t0.Add(2002*time.Second).UnixMilli() {
		t.Errorf("ring holds %d samples ending %d", len(s.T), s.T[len(s.T)-1])
	}
}

func TestSystemAPIv2(t *testing.T) {
	cases := map[string]struct {
		storageErr error
		wantErr    string
	}{
		"storage up":   {},
		"storage down": {storageErr: errors.New("dial tcp: connection refused"), wantErr: "storage unreachable: dial tcp: connection refused"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			e := newTestEnv(t, func(c *Config, d *Deps) {
				c.HistoryInterval = 100 * time.Millisecond
				d.Gatherer, d.Registerer = reg, reg
				d.Build = BuildInfo{Version: "v1.2.3", Commit: "abc123", Node: "node-a"}
				d.Storage = func(context.Context) (StorageInfo, error) {
					return StorageInfo{Backend: "sqlite", Mode: "sqlite", SizeBytes: 1234}, tc.storageErr
				}
				d.Now = time.Now // the sampler's ticker runs on the real clock
			})
			var v systemView
			deadline := time.Now().Add(3 * time.Second)
			for {
				req, _ := http.NewRequest("GET", e.srv.URL+"/ui/api/system", nil)
				req.Header.Set("Authorization", "Bearer "+viewerKey)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				err = json.NewDecoder(res.Body).Decode(&v)
				res.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if len(v.History.T) >= 3 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("history has %d samples after 3 s at 100 ms", len(v.History.T))
				}
				time.Sleep(50 * time.Millisecond)
			}
			if v.Version != "v1.2.3" || v.Commit != "abc123" || v.Node != "node-a" || v.Storage.SizeBytes != 1234 || v.Storage.Backend != "sqlite" {
				t.Errorf("system view %+v", v)
			}
			if v.MQTT != nil {
				t.Errorf("mqtt %+v without any MQTT metric, want null", v.MQTT)
			}
			if n := len(v.History.LiveClients); n == 0 || v.History.LiveClients[n-1] == nil {
				t.Errorf("live clients history %v: the dashboard's own gauge is in the registry", v.History.LiveClients)
			}
			if !strings.Contains(v.StorageError, tc.wantErr) || (tc.wantErr == "" && v.StorageError != "") {
				t.Errorf("storage error %q, want %q", v.StorageError, tc.wantErr)
			}
		})
	}
}

func TestHistoryIntervalValidate(t *testing.T) {
	for _, d := range []time.Duration{0, 10 * time.Millisecond, 2 * time.Minute} {
		c := DefaultConfig()
		c.HistoryInterval = d
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("dashboard.history_interval: must be between 100ms and 1m, got %s", d)) {
			t.Errorf("HistoryInterval %s: %v", d, err)
		}
	}
}

// TestFleetSessionCount: the running count restarts with every session,
// including a takeover (a new online event without an offline one).
func TestFleetSessionCount(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	f := newFleet(func() time.Time { return now })
	batch := func(seq uint64, n int) telemetry.Batch {
		return telemetry.Batch{Device: "d", Seq: seq, Readings: make([]telemetry.Reading, n)}
	}
	f.presence(telemetry.Presence{Device: "d", Online: true, At: 1000})
	f.observe(batch(1, 3), now)
	f.observe(batch(2, 4), now)
	if s, _ := f.stats("d"); s.SessionReadings != 7 || s.SessionSince != 1000 || s.Acked != 2 {
		t.Fatalf("first session: %+v", s)
	}
	f.presence(telemetry.Presence{Device: "d", Online: true, At: 2000}) // takeover
	f.observe(batch(3, 5), now)
	if s, _ := f.stats("d"); s.SessionReadings != 5 || s.SessionSince != 2000 || s.Acked != 3 {
		t.Fatalf("after takeover: %+v", s)
	}
	f.observe(batch(2, 1), now) // a late batch never lowers acked
	if s, _ := f.stats("d"); s.Acked != 3 {
		t.Fatalf("acked went back to %d", s.Acked)
	}
}

// downRegistry is a registry whose storage is unreachable.
type downRegistry struct{}

func (downRegistry) ListDevices(context.Context, map[string]string) ([]storage.Device, error) {
	return nil, errors.New("dial tcp 127.0.0.1:5432: connection refused")
}

func (downRegistry) Device(context.Context, string) (storage.Device, []storage.Session, error) {
	return storage.Device{}, nil, errors.New("dial tcp 127.0.0.1:5432: connection refused")
}

// TestStorageDownSaysWhatHappens: with the registry unreachable the pages
// and their JSON say so and what the server does, instead of an empty list.
func TestStorageDownSaysWhatHappens(t *testing.T) {
	e := newTestEnv(t, func(_ *Config, d *Deps) { d.Registry = downRegistry{} })
	cookie, _ := e.login(t, viewerKey)
	cases := map[string]struct {
		path string
		want string
	}{
		"fleet list":  {"/ui/api/devices", "the server keeps retrying"},
		"device JSON": {"/ui/api/devices/boiler-7", "the server keeps retrying"},
		"device page": {"/ui/devices/boiler-7", "The server keeps retrying"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if body := e.get(t, tc.path, cookie, http.StatusServiceUnavailable); !strings.Contains(body, tc.want) {
				t.Errorf("%s: %s, want it to say %q", tc.path, body, tc.want)
			}
		})
	}
}
