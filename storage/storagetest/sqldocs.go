package storagetest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// DocsPath is where the example queries live, relative to a backend
// package's directory (storage/<backend>), which is the working directory of
// its tests.
var DocsPath = filepath.Join("..", "..", "docs", "sql.md")

// DocExample is one runnable example of docs/sql.md: a heading and the
// fenced ```sql (PostgreSQL) and ```sqlite blocks under it.
type DocExample struct {
	Heading  string
	Line     int // line of the heading, for error messages
	Postgres []string
	SQLite   []string
}

// For returns the statements to run on a backend in mode: the ```sqlite
// blocks on sqlite when the heading has any, otherwise the ```sql blocks.
func (e DocExample) For(mode string) []string {
	if mode == storage.ModeSQLite && len(e.SQLite) > 0 {
		return e.SQLite
	}
	return e.Postgres
}

// ParseDocExamples reads the headings and their sql/sqlite fenced blocks.
// Other fences (```sh, ```text, ...) and HTML comments are ignored, so only
// blocks meant to run are tagged sql or sqlite.
func ParseDocExamples(r io.Reader) ([]DocExample, error) {
	var (
		out       []DocExample
		cur       *DocExample
		fence     string // tag of the open fence, "" when outside one
		inComment bool
		buf       strings.Builder
		line      int
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line++
		text := sc.Text()
		trimmed := strings.TrimSpace(text)
		if fence != "" {
			if trimmed == "```" {
				if cur == nil {
					return nil, fmt.Errorf("line %d: ```%s block before any heading", line, fence)
				}
				q := strings.TrimSpace(buf.String())
				switch fence {
				case "sql":
					cur.Postgres = append(cur.Postgres, q)
				case "sqlite":
					cur.SQLite = append(cur.SQLite, q)
				}
				fence = ""
				buf.Reset()
				continue
			}
			buf.WriteString(text)
			buf.WriteByte('\n')
			continue
		}
		if inComment {
			inComment = !strings.Contains(trimmed, "-->")
			continue
		}
		if strings.HasPrefix(trimmed, "<!--") {
			inComment = !strings.Contains(trimmed, "-->")
			continue
		}
		if strings.HasPrefix(trimmed, "```") {
			fence = "plain"
			if f := strings.Fields(strings.TrimPrefix(trimmed, "```")); len(f) > 0 {
				fence = f[0]
			}
			continue
		}
		if strings.HasPrefix(trimmed, "#") {
			out = append(out, DocExample{Heading: strings.TrimSpace(strings.TrimLeft(trimmed, "#")), Line: line})
			cur = &out[len(out)-1]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if fence != "" {
		return nil, fmt.Errorf("unterminated ```%s fence at end of file", fence)
	}
	examples := out[:0]
	for _, e := range out {
		if len(e.Postgres)+len(e.SQLite) > 0 {
			examples = append(examples, e)
		}
	}
	return examples, nil
}

// seedDocs writes a small fleet's last two days: three devices reporting
// temperature and humidity every minute, one of which went silent three
// hours ago, and a few late readings; then it runs Maintain so the rollups
// have data.
func seedDocs(t *testing.T, b Backend) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Minute)
	start := now.Add(-48 * time.Hour)
	seq := map[string]uint64{}
	for _, dev := range []string{"boiler-1", "boiler-2", "pump-7"} {
		end := now
		if dev == "pump-7" {
			end = now.Add(-3 * time.Hour)
		}
		var rs []telemetry.Reading
		i := 0
		for at := start; at.Before(end); at = at.Add(time.Minute) {
			// A two-minute gap per device makes the gap query find something.
			if at.Sub(start) >= 10*time.Hour && at.Sub(start) < 10*time.Hour+2*time.Minute {
				continue
			}
			rs = append(rs,
				telemetry.Reading{Time: ms(at), Metric: "temp", Value: 20 + float64(i%50)/10 + float64(len(dev))},
				telemetry.Reading{Time: ms(at.Add(time.Second)), Metric: "humidity", Value: 40 + float64(i%30)},
			)
			i++
			if len(rs) >= 2000 {
				seq[dev]++
				mustCommit(t, b, telemetry.Batch{Device: dev, Seq: seq[dev], Readings: rs})
				rs = nil
			}
		}
		seq[dev]++
		mustCommit(t, b, telemetry.Batch{Device: dev, Seq: seq[dev], Readings: rs})
	}
	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
}

func testDocsSQL(t *testing.T, newStore NewStore) {
	f, err := os.Open(DocsPath)
	if err != nil {
		t.Fatalf("open the documented queries: %v", err)
	}
	examples, err := ParseDocExamples(f)
	f.Close()
	if err != nil {
		t.Fatalf("parse %s: %v", DocsPath, err)
	}
	if len(examples) < 10 {
		t.Fatalf("%s has %d runnable examples, want at least 10", DocsPath, len(examples))
	}
	b := newStore(t, storage.Retention{})
	seedDocs(t, b)
	mode := b.Mode()
	for _, e := range examples {
		for i, q := range e.For(mode) {
			res, err := b.Query(ctxFor(t), q, storage.QueryOptions{})
			if err != nil {
				t.Errorf("%s:%d %q block %d on %s: %v\n%s", DocsPath, e.Line, e.Heading, i, mode, err, q)
				continue
			}
			t.Logf("%q: %d rows", e.Heading, len(res.Rows))
		}
	}
}
