package devices

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-iot/meridian/storage"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/sqlite"
)

// groupRecorder is a SessionWriter that keeps every group it was given and
// can be made to block or fail.
type groupRecorder struct {
	mu     sync.Mutex
	groups []storage.SessionGroup
	fail   int           // fail this many calls first
	gate   chan struct{} // when set, each call waits for a receive
}

func (r *groupRecorder) RecordSessions(ctx context.Context, g storage.SessionGroup) error {
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("store unavailable")
	}
	r.groups = append(r.groups, g)
	return nil
}

// applied replays the groups as the stores do (opens, then closes) and
// checks that no close was written before its open.
func (r *groupRecorder) applied(t *testing.T) map[string]storage.Session {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	rows := map[string]storage.Session{}
	for gi, g := range r.groups {
		for _, s := range g.Opened {
			if _, dup := rows[s.ID]; dup {
				t.Fatalf("group %d: session %s opened twice", gi, s.ID)
			}
			rows[s.ID] = s
		}
		for _, e := range g.Closed {
			s, ok := rows[e.ID]
			if !ok {
				t.Fatalf("group %d: close of %s written before its open", gi, e.ID)
			}
			s.EndedAt, s.CloseReason, s.Readings = &e.EndedAt, e.Reason, e.Readings
			rows[e.ID] = s
		}
	}
	return rows
}

func startLog(t *testing.T, w SessionWriter, o SessionLogOptions) (*SessionLog, <-chan error) {
	t.Helper()
	l := NewSessionLog(w, o)
	done := make(chan error, 1)
	go func() { done <- l.Run(context.Background()) }()
	return l, done
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSessionLogOrderAndDrain(t *testing.T) {
	defer goleak.VerifyNone(t)
	cases := []struct {
		name     string
		maxGroup int
		fail     int
	}{
		{"one group", 0, 0},
		{"small groups", 7, 0},
		{"store failing at first", 7, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &groupRecorder{fail: c.fail}
			l, done := startLog(t, w, SessionLogOptions{MaxGroup: c.maxGroup})
			ctx := ctxTimeout(t, 10*time.Second)
			const devices, perDevice = 20, 15
			var wg sync.WaitGroup
			for d := range devices {
				wg.Go(func() {
					for i := range perDevice {
						id := fmt.Sprintf("d%d-s%d", d, i)
						dev := fmt.Sprintf("d%d", d)
						if err := l.Opened(ctx, storage.Session{ID: id, DeviceID: dev, Transport: "ws"}); err != nil {
							t.Errorf("Opened: %v", err)
						}
						if err := l.Closed(ctx, storage.SessionEnd{ID: id, DeviceID: dev, Reason: "1000 bye", Readings: int64(i)}); err != nil {
							t.Errorf("Closed: %v", err)
						}
					}
				})
			}
			wg.Wait()
			// The last sessions stay open: their closes come after Close
			// and are refused, the opens are still written by the drain.
			if err := l.Opened(ctx, storage.Session{ID: "late", DeviceID: "d0"}); err != nil {
				t.Fatalf("Opened: %v", err)
			}
			if err := l.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			if err := l.Closed(ctx, storage.SessionEnd{ID: "late", DeviceID: "d0"}); !errors.Is(err, ErrSessionLogClosed) {
				t.Fatalf("Closed after Close = %v, want ErrSessionLogClosed", err)
			}
			rows := w.applied(t)
			if len(rows) != devices*perDevice+1 {
				t.Fatalf("%d sessions written, want %d", len(rows), devices*perDevice+1)
			}
			for id, s := range rows {
				if id != "late" && (s.EndedAt == nil || s.CloseReason != "1000 bye") {
					t.Fatalf("session %s not recorded closed: %+v", id, s)
				}
			}
			if c.maxGroup > 0 {
				for _, g := range w.groups {
					if g.Len() > c.maxGroup {
						t.Fatalf("group of %d records, MaxGroup %d", g.Len(), c.maxGroup)
					}
				}
			}
		})
	}
}

func TestSessionLogBounded(t *testing.T) {
	defer goleak.VerifyNone(t)
	w := &groupRecorder{gate: make(chan struct{})}
	l, done := startLog(t, w, SessionLogOptions{MaxPending: 4, MaxGroup: 2})
	ctx := ctxTimeout(t, 10*time.Second)
	for i := range 4 {
		if err := l.Opened(ctx, storage.Session{ID: fmt.Sprint("s", i), DeviceID: "d"}); err != nil {
			t.Fatalf("Opened %d: %v", i, err)
		}
	}
	// Full: a new record waits for room, and is refused when its context
	// ends first.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := l.Opened(short, storage.Session{ID: "s4", DeviceID: "d"}); !errors.Is(err, ErrSessionLogFull) {
		t.Fatalf("Opened on a full log = %v, want ErrSessionLogFull", err)
	}
	// The writer holds s0,s1; the close of a still-queued open folds into
	// it and needs no room, even now.
	if err := l.Closed(short, storage.SessionEnd{ID: "s3", DeviceID: "d", Reason: "gone"}); err != nil {
		t.Fatalf("Closed folding into its queued open: %v", err)
	}
	// A waiting record gets in as soon as a group is written.
	got := make(chan error, 1)
	go func() { got <- l.Opened(ctx, storage.Session{ID: "s5", DeviceID: "d"}) }()
	select {
	case err := <-got:
		t.Fatalf("Opened returned %v while the log was full", err)
	case <-time.After(20 * time.Millisecond):
	}
	w.gate <- struct{}{}
	if err := <-got; err != nil {
		t.Fatalf("Opened after room was made: %v", err)
	}
	close(w.gate) // let every later write through
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	rows := w.applied(t)
	if len(rows) != 5 || rows["s3"].CloseReason != "gone" || rows["s3"].EndedAt == nil {
		t.Fatalf("written %v; want s0-s3 and s5, s3 closed", rows)
	}
}

func TestSessionLogShutdownDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	w := &groupRecorder{fail: 1 << 30} // the store never comes back
	l, done := startLog(t, w, SessionLogOptions{})
	ctx := ctxTimeout(t, 10*time.Second)
	for i := range 3 {
		if err := l.Opened(ctx, storage.Session{ID: fmt.Sprint("s", i), DeviceID: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	// Close drains itself or through Run, whichever started first.
	if err := l.Close(dctx); err == nil || !strings.Contains(err.Error(), "3 record") {
		t.Fatalf("Close with the store down = %v, want 3 records not written", err)
	}
	<-done
}

func TestSessionLogCloseWithoutRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	w := &groupRecorder{}
	l := NewSessionLog(w, SessionLogOptions{})
	ctx := ctxTimeout(t, 5*time.Second)
	if err := l.Opened(ctx, storage.Session{ID: "s", DeviceID: "d"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Run(ctx); err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	if rows := w.applied(t); len(rows) != 1 {
		t.Fatalf("written %v, want s", rows)
	}
}

// sessionStore is what the real-store scenario needs.
type sessionStore interface {
	SessionWriter
	CreateDevice(ctx context.Context, d storage.Device) error
	DeleteDevice(ctx context.Context, id string, purge bool) error
	GetDevice(ctx context.Context, id string) (storage.Device, error)
	ListSessions(ctx context.Context, device string, limit int) ([]storage.Session, error)
}

// exerciseSessionLog drives the log against a real store the way a
// reconnect storm does: many devices opening and closing sessions at once,
// a device deleted mid-storm, then shutdown. Every record must be there.
func exerciseSessionLog(t *testing.T, st sessionStore) {
	ctx := ctxTimeout(t, 60*time.Second)
	const devices, perDevice = 50, 6
	base := time.Now().UTC().Truncate(time.Millisecond)
	for d := range devices {
		if err := st.CreateDevice(ctx, storage.Device{ID: fmt.Sprint("dev-", d), Enabled: true, CreatedAt: base}); err != nil {
			t.Fatal(err)
		}
	}
	l, done := startLog(t, st, SessionLogOptions{MaxGroup: 64, MaxPending: 128})
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			dev := fmt.Sprint("dev-", d)
			for i := range perDevice {
				id := fmt.Sprintf("%s-%d", dev, i)
				start := base.Add(time.Duration(i) * time.Second)
				if err := l.Opened(ctx, storage.Session{ID: id, DeviceID: dev, Node: "n1", Transport: "ws", StartedAt: start}); err != nil {
					t.Errorf("Opened: %v", err)
				}
				if i == perDevice-1 {
					break // the last session stays open
				}
				if err := l.Closed(ctx, storage.SessionEnd{ID: id, DeviceID: dev, EndedAt: start.Add(500 * time.Millisecond), Reason: "1001 going away", Readings: 1}); err != nil {
					t.Errorf("Closed: %v", err)
				}
			}
		})
	}
	// A device deleted while its records are queued must not fail the
	// groups it shares with others.
	if err := st.DeleteDevice(ctx, "dev-0", false); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	for d := 1; d < devices; d++ {
		dev := fmt.Sprint("dev-", d)
		list, err := st.ListSessions(ctx, dev, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != perDevice {
			t.Fatalf("%s: %d sessions recorded, want %d", dev, len(list), perDevice)
		}
		for _, s := range list {
			open := s.ID == fmt.Sprintf("%s-%d", dev, perDevice-1)
			if open != (s.EndedAt == nil) {
				t.Fatalf("%s: session %+v, want only the last one open", dev, s)
			}
		}
		last := base.Add(time.Duration(perDevice-1) * time.Second)
		if got, err := st.GetDevice(ctx, dev); err != nil || got.LastSeen == nil || !got.LastSeen.Equal(last) {
			t.Fatalf("%s last_seen = %v, %v; want %v", dev, got.LastSeen, err, last)
		}
	}
}

func TestSessionLogOnSQLite(t *testing.T) {
	cfg := sqlite.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "meridian.db")
	cfg.Migrate = true
	st, err := sqlite.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	exerciseSessionLog(t, st)
}

func TestSessionLogOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	cfg := postgres.DefaultConfig()
	cfg.URL = newPGDatabase(t)
	ctx := ctxTimeout(t, 30*time.Second)
	st, err := postgres.Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := st.WaitReady(ctx); err != nil {
		t.Fatalf("postgres store not ready: %v", err)
	}
	exerciseSessionLog(t, st)
}
