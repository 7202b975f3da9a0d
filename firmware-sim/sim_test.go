package sim

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/wire"
)

func TestSignalsDeterministic(t *testing.T) {
	profiles, err := ResolveProfiles(nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC).UnixMilli()
	run := func(seed uint64) wire.Readings {
		s := NewSignals(profiles, seed, start, 10)
		var out wire.Readings
		for now := start; now < start+10*60_000; now += 700 {
			out = s.Sample(now, out, 0)
		}
		return out
	}
	a, b, c := run(42), run(42), run(43)
	if len(a) == 0 || !reflect.DeepEqual(a, b) {
		t.Fatal("same seed must give the same readings")
	}
	if reflect.DeepEqual(a, c) {
		t.Fatal("different seeds gave identical readings")
	}
	last := map[string]int64{}
	seen := map[string]bool{}
	for _, r := range a {
		if r.T <= last[r.Metric] {
			t.Fatalf("%s: t %d not after %d", r.Metric, r.T, last[r.Metric])
		}
		last[r.Metric] = r.T
		seen[r.Metric] = true
		if !validReading(&r) || math.IsNaN(r.Value) {
			t.Fatalf("generated an invalid reading %+v", r)
		}
		switch r.Metric {
		case "door.open":
			if r.Value != 0 && r.Value != 1 {
				t.Fatalf("door value %v", r.Value)
			}
		case "humidity", "battery.pct":
			if r.Value < 0 || r.Value > 100 {
				t.Fatalf("%s out of range: %v", r.Metric, r.Value)
			}
		}
	}
	for _, m := range []string{"temp", "humidity", "pressure", "battery.pct", "battery.v", "vibration.rms", "door.open"} {
		if !seen[m] {
			t.Errorf("metric %s never sampled", m)
		}
	}
}

func TestSignalsInvalidKeepsTUnique(t *testing.T) {
	p, _ := ResolveProfiles([]string{"temperature"})
	s := NewSignals(p, 1, 1000, 1)
	got := s.Sample(100_000, nil, 0)
	bad := s.Invalid(50) // an old "now": t must still move past the last
	if validReading(&bad) {
		t.Fatalf("Invalid returned a valid reading %+v", bad)
	}
	if bad.T <= got[len(got)-1].T {
		t.Fatalf("invalid reading reuses an old t: %d <= %d", bad.T, got[len(got)-1].T)
	}
	next := s.Sample(200_000, nil, 0)
	if next[0].T <= bad.T {
		t.Fatalf("next reading t %d not after the invalid one %d", next[0].T, bad.T)
	}
}

func TestSampleLimitAndCatchUp(t *testing.T) {
	p, _ := ResolveProfiles([]string{"vibration"}) // 1 s period
	s := NewSignals(p, 1, 0, 1)
	if got := s.Sample(3_500, nil, 3); len(got) != 3 {
		t.Fatalf("limit 3 gave %d", len(got))
	}
	// An hour later the device does not replay 3600 missed samples.
	if got := s.Sample(3_600_000, nil, 0); len(got) > 5 {
		t.Fatalf("caught up with %d samples after a long pause", len(got))
	}
}

func sent(l *DeviceLedger, seq uint64, rs ...wire.Reading) *SentBatch {
	return l.Sent(seq, wire.Readings(rs))
}

func rd(metric string, t int64, v float64) wire.Reading {
	return wire.Reading{T: t, HasT: true, Metric: metric, Value: v}
}

func TestLedgerCheck(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name  string
		build func(l *DeviceLedger)
		rows  []Row
		want  Counts
	}{
		{
			name: "acked batch stored once",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1), rd("temp", 20, 2))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 2})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 20, 2}},
			want: Counts{Devices: 1, Sent: 2, Required: 2, Stored: 2},
		},
		{
			name: "acked reading missing and another duplicated",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1), rd("temp", 20, 2))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 2})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 10, 1}},
			want: Counts{Devices: 1, Sent: 2, Required: 2, Stored: 1, Missing: 1, Duplicated: 1, PartialBatches: 1},
		},
		{
			name: "phantom row and rows from an earlier run",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 100, 1))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 1})
			},
			rows: []Row{{"temp", 100, 1}, {"temp", 150, 9}, {"temp", 50, 3}},
			want: Counts{Devices: 1, Sent: 1, Required: 1, Stored: 1, Phantom: 1, Ignored: 1},
		},
		{
			name: "rejected readings must be absent; ack counts checked",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1), rd("temp", 11, nan), rd("bad metric", 12, 1))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 1, Rejected: 2})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 11, 0}},
			want: Counts{Devices: 1, Sent: 3, Required: 1, Stored: 1, Rejected: 2, RejectedStored: 1},
		},
		{
			name: "ack counts differing from the prediction",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 0, Rejected: 1})
			},
			rows: []Row{{"temp", 10, 1}},
			want: Counts{Devices: 1, Sent: 1, Required: 1, Stored: 1, AckMismatch: 1},
		},
		{
			name: "duplicate ack: the single version is required",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1))
				l.Ack(b, &wire.Ack{Seq: 1, Duplicate: true})
			},
			rows: nil,
			want: Counts{Devices: 1, Sent: 1, Required: 1, Missing: 1},
		},
		{
			name: "covered by hello.acked without an ack",
			build: func(l *DeviceLedger) {
				sent(l, 1, rd("temp", 10, 1))
				sent(l, 2, rd("temp", 20, 2))
				l.Cover(1)
			},
			rows: []Row{{"temp", 10, 1}},
			want: Counts{Devices: 1, Sent: 2, Required: 1, Stored: 1},
		},
		{
			name: "batch lost in a reboot proves nothing from a later watermark",
			build: func(l *DeviceLedger) {
				l.Abandon(sent(l, 3, rd("temp", 10, 1)))
				b := sent(l, 3+64, rd("temp", 20, 2))
				l.Ack(b, &wire.Ack{Seq: 67, Accepted: 1})
			},
			rows: []Row{{"temp", 20, 2}},
			want: Counts{Devices: 1, Sent: 2, Required: 1, Stored: 1},
		},
		{
			name: "unacked batch may be stored once, not twice, not half",
			build: func(l *DeviceLedger) {
				sent(l, 1, rd("temp", 10, 1), rd("temp", 20, 2))
				sent(l, 2, rd("temp", 30, 3))
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 30, 3}, {"temp", 30, 3}},
			want: Counts{Devices: 1, Sent: 3, OptionalStored: 2, Duplicated: 1, PartialBatches: 1},
		},
		{
			name: "value changed in storage",
			build: func(l *DeviceLedger) {
				b := sent(l, 1, rd("temp", 10, 1.5))
				l.Ack(b, &wire.Ack{Seq: 1, Accepted: 1})
			},
			rows: []Row{{"temp", 10, 1.25}},
			want: Counts{Devices: 1, Sent: 1, Required: 1, Stored: 1, ValueMismatch: 1},
		},
		{
			name: "reused seq: duplicate ack, first version stored whole",
			build: func(l *DeviceLedger) {
				sent(l, 5, rd("temp", 10, 1), rd("temp", 20, 2)) // lost in a reboot, committed late
				b := sent(l, 5, rd("temp", 30, 3))
				l.Ack(b, &wire.Ack{Seq: 5, Duplicate: true})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 20, 2}},
			want: Counts{Devices: 1, Sent: 3, Required: 2, Stored: 2},
		},
		{
			name: "reused seq: both versions stored is a failure",
			build: func(l *DeviceLedger) {
				sent(l, 5, rd("temp", 10, 1))
				b := sent(l, 5, rd("temp", 30, 3))
				l.Ack(b, &wire.Ack{Seq: 5, Duplicate: true})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 30, 3}},
			want: Counts{Devices: 1, Sent: 2, AmbiguousFailed: 1},
		},
		{
			name: "reused seq: the acked version wins, the other must be absent",
			build: func(l *DeviceLedger) {
				sent(l, 5, rd("temp", 10, 1))
				b := sent(l, 5, rd("temp", 30, 3))
				l.Ack(b, &wire.Ack{Seq: 5, Accepted: 1})
			},
			rows: []Row{{"temp", 10, 1}, {"temp", 30, 3}},
			want: Counts{Devices: 1, Sent: 2, Required: 1, Stored: 1, Superseded: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := NewDeviceLedger("d")
			tc.build(l)
			got, detail := l.Check(tc.rows)
			if got != tc.want {
				t.Fatalf("counts\n got %+v\nwant %+v\ndetail %v", got, tc.want, detail)
			}
			if got.Failed() != (len(detail) > 0) {
				t.Fatalf("Failed()=%v but details %v", got.Failed(), detail)
			}
		})
	}
}

func TestParseRowTimes(t *testing.T) {
	want := time.Date(2026, 11, 27, 9, 0, 0, 123e6, time.UTC).UnixMilli()
	for _, v := range []any{
		time.UnixMilli(want),
		"2026-11-27T09:00:00.123Z",
		"2026-11-27 09:00:00.123",
		"2026-11-27 09:00:00.123+00:00",
		want,
	} {
		row, dev, err := parseRow([]any{"d", "temp", v, 1.5})
		if err != nil || dev != "d" || row.T != want || row.Value != 1.5 {
			t.Errorf("%T %v: %+v %v", v, v, row, err)
		}
	}
}

func TestTokensFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	in := map[string]string{"sim-1": "mdt_a", "sim-0": "mdt_b"}
	if err := SaveTokensFile(path, in); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("tokens file mode %v", fi.Mode().Perm())
	}
	out, err := LoadTokensFile(path)
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip: %v %v", out, err)
	}
	if _, err := LoadTokens(strings.NewReader("sim-1\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad line: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"url", func(c *Config) { c.URL = "ws://x" }, "url: must be an http:// or https:// base URL"},
		{"prefix", func(c *Config) { c.Prefix = "Sim " }, "prefix: must be"},
		{"no bound", func(c *Config) { c.Duration = 0 }, "duration: duration or total readings must be set"},
		{"profile", func(c *Config) { c.Profiles = []string{"smell"} }, `unknown profile "smell"`},
		{"skew", func(c *Config) { c.Chaos.ClockSkew = 2 * time.Hour }, "chaos-skew: must be between 0 and 30m"},
		{"share", func(c *Config) { c.HTTPShare = 1.5 }, "http-share: must be between 0 and 1, got 1.5"},
		{"stall", func(c *Config) { c.Chaos.StallEvery, c.Chaos.StallFor = time.Second, 0 }, "chaos-stall-for"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mut(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDeviceIDs(t *testing.T) {
	c := DefaultConfig()
	c.Devices, c.Prefix = 1000, "x-"
	ids := c.DeviceIDs()
	if ids[0] != "x-000" || ids[999] != "x-999" {
		t.Fatalf("ids %s .. %s", ids[0], ids[999])
	}
}

func TestQuantile(t *testing.T) {
	var h histogram
	for i := 1; i <= 100; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	c := h.snapshot(false)
	p50, p99 := quantile(c, 0.5), quantile(c, 0.99)
	if p50 < 48*time.Millisecond || p50 > 53*time.Millisecond || p99 < 97*time.Millisecond || p99 > 105*time.Millisecond {
		t.Fatalf("p50 %s p99 %s", p50, p99)
	}
	if quantile(make([]int64, histBuckets), 0.5) != 0 {
		t.Fatal("empty histogram")
	}
}
