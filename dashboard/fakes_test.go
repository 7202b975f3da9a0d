package dashboard

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// unauthorized mimics devices.ErrUnauthorized's shape.
type unauthorized struct{}

func (unauthorized) Error() string      { return "unauthorized" }
func (unauthorized) Unauthorized() bool { return true }

// fakeAuth knows two keys; "mak_down" simulates an unreachable store.
type fakeAuth struct {
	mu      sync.Mutex
	revoked map[string]bool
}

const (
	adminKey  = "mak_admin_0123456789abcdef0123456789abcdef"
	viewerKey = "mak_viewer_0123456789abcdef0123456789abcdef"
)

func (f *fakeAuth) AuthenticateOperator(_ context.Context, key string) (storage.APIKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revoked[key] {
		return storage.APIKey{}, unauthorized{}
	}
	switch key {
	case adminKey:
		return storage.APIKey{ID: "mak_admin", Name: "ops admin", Role: RoleAdmin}, nil
	case viewerKey:
		return storage.APIKey{ID: "mak_viewer", Name: "night shift", Role: RoleViewer}, nil
	case "mak_down":
		return storage.APIKey{}, errors.New("database is down")
	}
	return storage.APIKey{}, unauthorized{}
}

func (f *fakeAuth) revoke(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revoked == nil {
		f.revoked = map[string]bool{}
	}
	f.revoked[key] = true
}

type fakeRegistry struct {
	devices []storage.Device
}

func (r *fakeRegistry) ListDevices(_ context.Context, labels map[string]string) ([]storage.Device, error) {
	var out []storage.Device
	for _, d := range r.devices {
		ok := true
		for k, v := range labels {
			if d.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, d)
		}
	}
	return out, nil
}

func (r *fakeRegistry) Device(_ context.Context, id string) (storage.Device, []storage.Session, error) {
	for _, d := range r.devices {
		if d.ID == id {
			ended := time.Now().Add(-time.Hour)
			return d, []storage.Session{
				{ID: "s2", DeviceID: id, Node: "node-a", RemoteAddr: "10.0.0.7:51234", Transport: "ws", StartedAt: time.Now().Add(-30 * time.Minute), Readings: 1200},
				{ID: "s1", DeviceID: id, Node: "node-a", RemoteAddr: "10.0.0.7:49811", Transport: "ws", StartedAt: time.Now().Add(-3 * time.Hour), EndedAt: &ended, CloseReason: "going away", Readings: 8812},
			}, nil
		}
	}
	return storage.Device{}, nil, storage.ErrNotFound
}

// readingStore keeps committed readings so Series answers from them, like a
// backend would for raw data.
type readingStore struct {
	mu       sync.Mutex
	readings map[string][]telemetry.Reading // by device
}

func newReadingStore() *readingStore {
	return &readingStore{readings: map[string][]telemetry.Reading{}}
}

func (s *readingStore) add(b telemetry.Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readings[b.Device] = append(s.readings[b.Device], b.Readings...)
}

func (s *readingStore) Series(_ context.Context, req storage.SeriesRequest) (storage.Series, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := storage.Series{Device: req.Device, Metric: req.Metric, Source: "raw", Points: []storage.SeriesPoint{}}
	from, to := req.From.UnixMilli(), req.To.UnixMilli()
	for _, r := range s.readings[req.Device] {
		if r.Metric == req.Metric && r.Time >= from && r.Time < to {
			out.Points = append(out.Points, storage.SeriesPoint{Time: time.UnixMilli(r.Time).UTC(), Min: r.Value, Max: r.Value, Avg: r.Value, Last: r.Value, Count: 1})
		}
	}
	slices.SortFunc(out.Points, func(a, b storage.SeriesPoint) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// fakeCommands answers every command at once.
type fakeCommands struct {
	mu   sync.Mutex
	sent []telemetry.Command
}

func (f *fakeCommands) Send(_ context.Context, device string, c telemetry.Command, _ time.Duration) (telemetry.CommandResult, error) {
	f.mu.Lock()
	f.sent = append(f.sent, c)
	f.mu.Unlock()
	if strings.HasPrefix(device, "off") {
		return telemetry.CommandResult{Device: device, ID: c.ID, Error: "offline"}, nil
	}
	return telemetry.CommandResult{Device: device, ID: c.ID, OK: true, Payload: []byte{0x81, 0xa2, 'o', 'k', 0xc3}}, nil
}
