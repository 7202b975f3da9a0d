package storage

import "time"

// SessionEnd is the close of a device session: when, why, and how many
// readings it carried.
type SessionEnd struct {
	ID       string
	DeviceID string
	EndedAt  time.Time
	Reason   string
	Readings int64
}

// SessionGroup is a group of session records written in one transaction
// (the device session log's group commit). Opened sessions are inserted
// before Closed ones are applied, so a close written in the same group as
// its open still finds the row; an Opened session with EndedAt set was
// closed before it could be written and is recorded closed at once. Every
// device's last_seen advances to the latest start or end it has in the group
// and never moves back.
//
// A group never fails because of one record: an open of a device that no
// longer exists (deleted mid-handshake) or of an id already recorded (a
// retried group) is skipped, and so is a close of an unknown session.
type SessionGroup struct {
	Opened []Session
	Closed []SessionEnd
}

// Len is the number of records in the group.
func (g SessionGroup) Len() int { return len(g.Opened) + len(g.Closed) }

// LastSeen is, per device, the latest time the group shows it connected:
// the coalesced last_seen update of the group.
func (g SessionGroup) LastSeen() map[string]time.Time {
	seen := make(map[string]time.Time, len(g.Opened)+len(g.Closed))
	bump := func(device string, t time.Time) {
		if old, ok := seen[device]; !ok || t.After(old) {
			seen[device] = t
		}
	}
	for _, s := range g.Opened {
		bump(s.DeviceID, s.StartedAt)
		if s.EndedAt != nil {
			bump(s.DeviceID, *s.EndedAt)
		}
	}
	for _, e := range g.Closed {
		bump(e.DeviceID, e.EndedAt)
	}
	return seen
}
