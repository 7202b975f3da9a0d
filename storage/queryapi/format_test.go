package queryapi

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

func TestResultWriters(t *testing.T) {
	res := storage.QueryResult{
		Columns: []string{"device", "n", "avg", "seen", "note"},
		Rows: [][]any{
			{"boiler-1", int64(12), 21.5, time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC), nil},
			{"pump", int64(3), 1e-7, time.Date(2026, 11, 27, 8, 0, 1, 500e6, time.FixedZone("x", 3600)), "a,\"b\"\nc"},
		},
	}
	tests := []struct{ format, want string }{
		{"table", "" +
			"device   | n  | avg   | seen                   | note\n" +
			"---------+----+-------+------------------------+---------\n" +
			"boiler-1 | 12 |  21.5 | 2026-11-27T08:00:00Z   | NULL\n" +
			"pump     |  3 | 1e-07 | 2026-11-27T07:00:01.5Z | a,\"b\"\\nc\n" +
			"(2 rows)\n"},
		{"csv", "" +
			"device,n,avg,seen,note\n" +
			"boiler-1,12,21.5,2026-11-27T08:00:00Z,\n" +
			"pump,3,1e-07,2026-11-27T07:00:01.5Z,\"a,\"\"b\"\"\nc\"\n"},
		{"json", `{
  "columns": [
    "device",
    "n",
    "avg",
    "seen",
    "note"
  ],
  "rows": [
    [
      "boiler-1",
      12,
      21.5,
      "2026-11-27T08:00:00Z",
      null
    ],
    [
      "pump",
      3,
      1e-7,
      "2026-11-27T08:00:01.5+01:00",
      "a,\"b\"\nc"
    ]
  ],
  "truncated": false
}
`},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var b bytes.Buffer
			if err := Writers[tt.format](&b, res); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestJSONEmptyAndTruncated(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, storage.QueryResult{Columns: []string{"x"}, Truncated: true, TruncatedBy: storage.TruncatedBytes}); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"columns\": [\n    \"x\"\n  ],\n  \"rows\": [],\n  \"truncated\": true,\n  \"truncated_by\": \"bytes\"\n}\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestTableEmptyAndTruncated(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, storage.QueryResult{Columns: []string{"x"}, Truncated: true}); err != nil {
		t.Fatal(err)
	}
	if want := "x\n-\n(0 rows, truncated)\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// TestTableCellsCapped: one long value in a many-row result must not make
// every row as wide as it (the padding would multiply a result the byte cap
// allowed); the table cuts it, csv keeps it whole.
func TestTableCellsCapped(t *testing.T) {
	long := strings.Repeat("a", 100_000)
	res := storage.QueryResult{Columns: []string{"a", "b"}}
	for i := range 1000 {
		v := ""
		if i == 0 {
			v = long
		}
		res.Rows = append(res.Rows, []any{v, int64(i)})
	}
	var b strings.Builder
	if err := WriteTable(&b, res); err != nil {
		t.Fatal(err)
	}
	if n := b.Len(); n > 1000*(maxCellWidth*3+20) {
		t.Fatalf("table of 1,000 rows is %d bytes: cells are not capped", n)
	}
	if !strings.Contains(b.String(), strings.Repeat("a", maxCellWidth-1)+"…") {
		t.Fatal("the long value is not shown cut with an ellipsis")
	}
}
