package migrations

import (
	"io/fs"
	"slices"
	"strings"
	"testing"
)

func TestTimescaleOverlay(t *testing.T) {
	pg, err := fs.Glob(Postgres(), "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	ts, err := fs.Glob(Timescale(), "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	// Same versions in both modes, so one version sequence serves both.
	if !slices.Equal(pg, ts) {
		t.Fatalf("postgres files %v, timescale files %v", pg, ts)
	}
	for _, name := range ts {
		pgText, _ := fs.ReadFile(Postgres(), name)
		tsText, err := fs.ReadFile(Timescale(), name)
		if err != nil {
			t.Fatal(err)
		}
		over, _ := fs.ReadFile(sub("timescale"), name)
		switch {
		case over != nil && string(tsText) != string(over):
			t.Errorf("%s: timescale overlay not used", name)
		case over == nil && string(tsText) != string(pgText):
			t.Errorf("%s: shared file differs", name)
		}
		if !strings.Contains(string(tsText), "-- +goose Up") {
			t.Errorf("%s: no goose Up section", name)
		}
	}
	if s, err := fs.ReadFile(Timescale(), "00002_readings.sql"); err != nil || !strings.Contains(string(s), "create_hypertable") {
		t.Fatalf("timescale 00002 not the hypertable version: %v", err)
	}
}
