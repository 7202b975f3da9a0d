package queryapi

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meridian-iot/meridian/storage"
)

// Writers are the output formats of `meridian query --format` and
// GET /v1/query?format=, shared so the CLI and the API print the same.
var Writers = map[string]func(io.Writer, storage.QueryResult) error{
	"table": WriteTable,
	"json":  WriteJSON,
	"csv":   WriteCSV,
}

// cell renders one value for table and CSV output. NULL is "" in CSV (the
// usual convention) and "NULL" in the table, where an empty string and a
// missing value must look different.
func cell(v any, null string) string {
	switch x := v.(type) {
	case nil:
		return null
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case []byte:
		return fmt.Sprintf("\\x%x", x)
	default:
		return fmt.Sprint(x)
	}
}

func isNumber(v any) bool {
	switch v.(type) {
	case int, int32, int64, uint64, float32, float64:
		return true
	}
	return false
}

// maxCellWidth bounds one table cell, in characters. Every cell of a column
// is padded to its widest, so one long value times many rows would cost
// far more than the result's byte cap (a 8 MB value in a 10,000-row result
// becomes 80 GB of padding); longer values end in "…" — csv and json show
// them whole.
const maxCellWidth = 256

// WriteTable prints an aligned table like psql: numbers right-aligned,
// a row count at the end. Cells longer than maxCellWidth are cut.
func WriteTable(w io.Writer, res storage.QueryResult) error {
	cells := make([][]string, len(res.Rows))
	width := make([]int, len(res.Columns))
	for i, c := range res.Columns {
		width[i] = utf8.RuneCountInString(c)
	}
	for r, row := range res.Rows {
		cells[r] = make([]string, len(res.Columns))
		for i := range res.Columns {
			var v any
			if i < len(row) {
				v = row[i]
			}
			s := strings.NewReplacer("\n", `\n`, "\t", `\t`).Replace(cell(v, "NULL"))
			if utf8.RuneCountInString(s) > maxCellWidth {
				s = string([]rune(s)[:maxCellWidth-1]) + "…"
			}
			cells[r][i] = s
			width[i] = max(width[i], utf8.RuneCountInString(s))
		}
	}
	var b strings.Builder
	line := func(vals []string, right func(i int) bool) {
		for i, s := range vals {
			if i > 0 {
				b.WriteString(" | ")
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(s))
			if right(i) {
				b.WriteString(pad + s)
			} else if i == len(vals)-1 {
				b.WriteString(s) // no trailing spaces
			} else {
				b.WriteString(s + pad)
			}
		}
		b.WriteString("\n")
	}
	line(res.Columns, func(int) bool { return false })
	for i := range width {
		if i > 0 {
			b.WriteString("-+-")
		}
		b.WriteString(strings.Repeat("-", width[i]))
	}
	b.WriteString("\n")
	for r, row := range cells {
		line(row, func(i int) bool { return i < len(res.Rows[r]) && isNumber(res.Rows[r][i]) })
	}
	n := len(res.Rows)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	more := ""
	if res.Truncated {
		more = ", truncated"
	}
	fmt.Fprintf(&b, "(%d row%s%s)\n", n, plural, more)
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the result as the HTTP query API shows it: columns, rows
// as arrays, whether a cap cut it short and which. Rows are encoded and
// written one at a time, so a large answer streams instead of being built
// whole a second time in memory.
func WriteJSON(w io.Writer, res storage.QueryResult) error {
	if res.Columns == nil {
		res.Columns = []string{}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	cols, err := json.MarshalIndent(res.Columns, "  ", "  ")
	if err != nil {
		return err
	}
	bw.WriteString("{\n  \"columns\": ")
	bw.Write(cols)
	bw.WriteString(",\n  \"rows\": [")
	for i, row := range res.Rows {
		b, err := json.MarshalIndent(row, "    ", "  ")
		if err != nil {
			return err
		}
		if i > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n    ")
		if _, err := bw.Write(b); err != nil {
			return err // the client is gone or the deadline passed
		}
	}
	if len(res.Rows) > 0 {
		bw.WriteString("\n  ")
	}
	fmt.Fprintf(bw, "],\n  \"truncated\": %t", res.Truncated)
	if res.TruncatedBy != "" {
		fmt.Fprintf(bw, ",\n  \"truncated_by\": %q", res.TruncatedBy)
	}
	bw.WriteString("\n}\n")
	return bw.Flush()
}

func WriteCSV(w io.Writer, res storage.QueryResult) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(res.Columns); err != nil {
		return err
	}
	rec := make([]string, len(res.Columns))
	for _, row := range res.Rows {
		for i := range rec {
			rec[i] = ""
			if i < len(row) {
				rec[i] = cell(row[i], "")
			}
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
