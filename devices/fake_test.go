package devices

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// fakeRepo is an in-memory Repo following the storagetest.Backend contract
// for the registry methods.
type fakeRepo struct {
	mu       sync.Mutex
	devices  map[string]storage.Device
	tokens   []storage.DeviceToken
	keys     []storage.APIKey
	sessions map[string][]storage.Session
	// loose makes token lookups match on the first byte of the hash only,
	// like a broken backend, to prove the service compares full hashes.
	loose bool
	// fail, when set, is returned by every method.
	fail error
	// acked holds devices' watermarks, read with their tokens.
	acked map[string]uint64
}

func newFakeRepo() *fakeRepo {
	return &fakeRepo{devices: map[string]storage.Device{}, sessions: map[string][]storage.Session{}}
}

func (f *fakeRepo) CreateDevice(_ context.Context, d storage.Device) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if _, ok := f.devices[d.ID]; ok {
		return storage.ErrExists
	}
	d.Labels = maps.Clone(d.Labels)
	f.devices[d.ID] = d
	return nil
}

func (f *fakeRepo) GetDevice(_ context.Context, id string) (storage.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return storage.Device{}, f.fail
	}
	d, ok := f.devices[id]
	if !ok {
		return storage.Device{}, storage.ErrNotFound
	}
	return d, nil
}

func (f *fakeRepo) ListDevices(context.Context) ([]storage.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	return slices.Collect(maps.Values(f.devices)), nil
}

func (f *fakeRepo) SetDeviceEnabled(_ context.Context, id string, enabled bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	d, ok := f.devices[id]
	if !ok {
		return storage.ErrNotFound
	}
	d.Enabled = enabled
	f.devices[id] = d
	return nil
}

func (f *fakeRepo) DeleteDevice(_ context.Context, id string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if _, ok := f.devices[id]; !ok {
		return storage.ErrNotFound
	}
	delete(f.devices, id)
	delete(f.sessions, id)
	f.tokens = slices.DeleteFunc(f.tokens, func(t storage.DeviceToken) bool { return t.DeviceID == id })
	return nil
}

func (f *fakeRepo) ListSessions(_ context.Context, device string, limit int) ([]storage.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	s := f.sessions[device]
	if len(s) > limit {
		s = s[:limit]
	}
	return slices.Clone(s), nil
}

func (f *fakeRepo) AddDeviceToken(_ context.Context, t storage.DeviceToken) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.tokens = append(f.tokens, t)
	return nil
}

func (f *fakeRepo) ExpireDeviceTokens(_ context.Context, device string, keep []byte, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	for i, t := range f.tokens {
		if t.DeviceID != device || (keep != nil && bytes.Equal(t.Hash, keep)) {
			continue
		}
		if t.ExpiresAt == nil || t.ExpiresAt.After(at) {
			at := at
			f.tokens[i].ExpiresAt = &at
		}
	}
	return nil
}

func (f *fakeRepo) LookupDeviceToken(_ context.Context, hash []byte) (storage.DeviceToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return storage.DeviceToken{}, f.fail
	}
	for _, t := range f.tokens {
		if bytes.Equal(t.Hash, hash) || (f.loose && len(hash) > 0 && t.Hash[0] == hash[0]) {
			d, ok := f.devices[t.DeviceID]
			if !ok { // as the stores' join: a deleted device's tokens are gone
				break
			}
			t.DeviceEnabled = d.Enabled
			t.DeviceAcked = f.acked[t.DeviceID]
			return t, nil
		}
	}
	return storage.DeviceToken{}, storage.ErrNotFound
}

func (f *fakeRepo) AddAPIKey(_ context.Context, k storage.APIKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	for _, o := range f.keys {
		if o.ID == k.ID || bytes.Equal(o.Hash, k.Hash) {
			return storage.ErrExists
		}
	}
	f.keys = append(f.keys, k)
	return nil
}

func (f *fakeRepo) LookupAPIKey(_ context.Context, hash []byte) (storage.APIKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return storage.APIKey{}, f.fail
	}
	for _, k := range f.keys {
		if bytes.Equal(k.Hash, hash) || (f.loose && len(hash) > 0 && k.Hash[0] == hash[0]) {
			return k, nil
		}
	}
	return storage.APIKey{}, storage.ErrNotFound
}

func (f *fakeRepo) ListAPIKeys(context.Context) ([]storage.APIKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	ks := slices.Clone(f.keys)
	slices.SortFunc(ks, func(a, b storage.APIKey) int { return strings.Compare(a.ID, b.ID) })
	return ks, nil
}

func (f *fakeRepo) RevokeAPIKey(_ context.Context, id string, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	for i, k := range f.keys {
		if k.ID == id {
			f.keys[i].RevokedAt = &at
			return nil
		}
	}
	return storage.ErrNotFound
}

// clock is a manual clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// kicks records OnKick calls.
type kicks struct {
	mu  sync.Mutex
	got []string
}

func (k *kicks) record(device, reason string) {
	k.mu.Lock()
	k.got = append(k.got, device+": "+reason)
	k.mu.Unlock()
}

func (k *kicks) take() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	g := k.got
	k.got = nil
	return g
}

// newTestService returns a service on a fresh fake with a manual clock and a
// kick recorder.
func newTestService(cfg Config) (*Service, *fakeRepo, *clock, *kicks) {
	repo := newFakeRepo()
	s := NewService(repo, cfg, nil)
	clk := newClock()
	s.now = clk.Now
	k := &kicks{}
	s.OnKick(k.record)
	return s, repo, clk, k
}
