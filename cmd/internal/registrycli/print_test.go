package registrycli

import (
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/storage"
)

func TestPrintDevice(t *testing.T) {
	on := true
	seen := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	ended := seen.Add(time.Minute)
	var b strings.Builder
	err := printDevice(&b, devices.DeviceDetail{
		Device: devices.DeviceView{Device: storage.Device{ID: "boiler-1", Name: "Boiler", Enabled: true,
			CreatedAt: seen, LastSeen: &seen, Acked: 42, Labels: map[string]string{"site": "north", "floor": "2"}}, Online: &on},
		Sessions: []storage.Session{
			{StartedAt: seen, Transport: "ws", Node: "a", RemoteAddr: "10.0.0.1:5", Readings: 7},
			{StartedAt: seen, EndedAt: &ended, Transport: "http", Node: "b", Readings: 3, CloseReason: "1001 shutdown"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"id:         boiler-1", "state:      enabled", "online:     online", "acked seq:  42",
		"labels:     floor=2,site=north", "(open)", "1001 shutdown", "2026-11-30T06:01:00Z",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	b.Reset()
	if err := printDevice(&b, devices.DeviceDetail{Device: devices.DeviceView{Device: storage.Device{ID: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no sessions recorded") || !strings.Contains(b.String(), "last seen:  never") ||
		!strings.Contains(b.String(), "online:     ?") || !strings.Contains(b.String(), "labels:     -") {
		t.Errorf("device without sessions:\n%s", b.String())
	}
}
