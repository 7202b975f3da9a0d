package storagetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// testSessionGroups: RecordSessions writes opens before closes (a close in
// the same group as its open finds the row), skips stale records instead of
// failing the group, is idempotent when a group is retried, and advances
// last_seen per device to the latest time, never backwards.
func testSessionGroups(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	now := time.Now().UTC().Truncate(time.Second)
	for _, id := range []string{"grp-1", "grp-2"} {
		if err := b.CreateDevice(ctx, storage.Device{ID: id, Enabled: true, CreatedAt: now}); err != nil {
			t.Fatalf("CreateDevice: %v", err)
		}
	}
	ended := now.Add(30 * time.Second)
	g := storage.SessionGroup{
		Opened: []storage.Session{
			{ID: "g-1", DeviceID: "grp-1", Node: "n1", RemoteAddr: "10.0.0.1:1", Transport: "ws", StartedAt: now},
			{ID: "g-2", DeviceID: "grp-1", Node: "n1", Transport: "ws", StartedAt: now.Add(10 * time.Second)},
			// Closed before it was written: recorded closed at once.
			{ID: "g-3", DeviceID: "grp-2", Node: "n1", Transport: "ws", StartedAt: now, EndedAt: &ended, CloseReason: "1000 bye", Readings: 7},
			// Device deleted mid-handshake: skipped, the group still commits.
			{ID: "g-4", DeviceID: "gone", Node: "n1", Transport: "ws", StartedAt: now},
		},
		Closed: []storage.SessionEnd{
			{ID: "g-1", DeviceID: "grp-1", EndedAt: now.Add(5 * time.Second), Reason: "1008 session taken over", Readings: 3},
			{ID: "nope", DeviceID: "gone", EndedAt: now.Add(time.Hour), Reason: "x"}, // unknown session: skipped
		},
	}
	if err := b.RecordSessions(ctx, g); err != nil {
		t.Fatalf("RecordSessions: %v", err)
	}
	// A retried group (the first attempt's commit outcome unknown) changes
	// nothing and does not fail on the ids it already wrote.
	if err := b.RecordSessions(ctx, g); err != nil {
		t.Fatalf("RecordSessions (retried): %v", err)
	}
	if err := b.RecordSessions(ctx, storage.SessionGroup{}); err != nil {
		t.Fatalf("RecordSessions (empty): %v", err)
	}
	byID := map[string]storage.Session{}
	for _, dev := range []string{"grp-1", "grp-2", "gone"} {
		list, err := b.ListSessions(ctx, dev, 100)
		if err != nil {
			t.Fatalf("ListSessions(%s): %v", dev, err)
		}
		for _, s := range list {
			byID[s.ID] = s
		}
	}
	if len(byID) != 3 {
		t.Fatalf("sessions recorded = %v, want g-1, g-2, g-3", byID)
	}
	if s := byID["g-1"]; s.EndedAt == nil || !s.EndedAt.Equal(now.Add(5*time.Second)) || s.Readings != 3 ||
		s.CloseReason != "1008 session taken over" || s.RemoteAddr != "10.0.0.1:1" || !s.StartedAt.Equal(now) {
		t.Fatalf("g-1 = %+v, want closed at +5s with 3 readings", s)
	}
	if s := byID["g-2"]; s.EndedAt != nil {
		t.Fatalf("g-2 = %+v, want still open", s)
	}
	if s := byID["g-3"]; s.EndedAt == nil || !s.EndedAt.Equal(ended) || s.Readings != 7 || s.CloseReason != "1000 bye" {
		t.Fatalf("g-3 = %+v, want recorded closed", s)
	}
	wantSeen := map[string]time.Time{"grp-1": now.Add(10 * time.Second), "grp-2": ended}
	for dev, want := range wantSeen {
		d, err := b.GetDevice(ctx, dev)
		if err != nil || d.LastSeen == nil || !d.LastSeen.Equal(want) {
			t.Fatalf("%s last_seen = %v, %v; want %v", dev, d.LastSeen, err, want)
		}
	}
	testSessionGroupsLater(t, b, now, wantSeen["grp-1"])
}

// testSessionGroupsLater goes on from testSessionGroups' state: an older
// group leaves last_seen alone, and a storm-sized group is one call.
func testSessionGroupsLater(t *testing.T, b Backend, now, grp1Seen time.Time) {
	ctx := ctxFor(t)
	// An older group never moves last_seen back.
	old := storage.SessionGroup{Opened: []storage.Session{{ID: "g-old", DeviceID: "grp-1", Transport: "ws", StartedAt: now.Add(-time.Hour)}}}
	if err := b.RecordSessions(ctx, old); err != nil {
		t.Fatalf("RecordSessions (old): %v", err)
	}
	if d, err := b.GetDevice(ctx, "grp-1"); err != nil || d.LastSeen == nil || !d.LastSeen.Equal(grp1Seen) {
		t.Fatalf("grp-1 last_seen after an older group = %v, %v", d.LastSeen, err)
	}
	// A large group (a reconnect storm's worth) is one call.
	big := storage.SessionGroup{}
	for i := range 2000 {
		big.Opened = append(big.Opened, storage.Session{ID: fmt.Sprintf("big-%d", i), DeviceID: "grp-2", Transport: "ws", StartedAt: now.Add(time.Duration(i) * time.Millisecond)})
	}
	if err := b.RecordSessions(ctx, big); err != nil {
		t.Fatalf("RecordSessions (2000 opens): %v", err)
	}
	if list, err := b.ListSessions(ctx, "grp-2", 5000); err != nil || len(list) != 2001 {
		t.Fatalf("grp-2 sessions = %d, %v; want 2001", len(list), err)
	}
}
