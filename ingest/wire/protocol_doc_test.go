package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"
)

// docPath is docs/protocol.md relative to this package (go test runs in the
// package directory).
const docPath = "../../docs/protocol.md"

// docBlock is a fenced block of docs/protocol.md announced by an HTML
// comment such as <!-- example: hello --> on the line before its fence.
type docBlock struct {
	kind, name string // "example" or "walkthrough"; the message's name
	line       int    // line of the opening fence, for messages
	body       string // text between the fences, lines joined with \n
}

var blockTag = regexp.MustCompile(`^<!--\s*(example|walkthrough):\s*([a-z0-9-]+)\s*-->\s*$`)

// readDocBlocks returns the tagged blocks of the protocol document.
func readDocBlocks(t *testing.T) []docBlock {
	t.Helper()
	f, err := os.Open(docPath)
	if err != nil {
		t.Fatalf("open protocol doc: %v", err)
	}
	defer f.Close()
	var (
		blocks  []docBlock
		pending *docBlock // tag seen, fence not yet
		open    *docBlock // inside a tagged fence
		lines   []string
		n       int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case open != nil:
			if strings.HasPrefix(line, "```") {
				open.body = strings.Join(lines, "\n")
				blocks = append(blocks, *open)
				open, lines = nil, nil
				continue
			}
			lines = append(lines, line)
		case pending != nil:
			if strings.TrimSpace(line) == "" {
				continue
			}
			if !strings.HasPrefix(line, "```") {
				t.Fatalf("%s:%d: %s %q: the tag must be followed by a fenced block", docPath, n, pending.kind, pending.name)
			}
			pending.line = n
			open, pending = pending, nil
		default:
			if m := blockTag.FindStringSubmatch(line); m != nil {
				pending = &docBlock{kind: m[1], name: m[2]}
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read protocol doc: %v", err)
	}
	if open != nil || pending != nil {
		t.Fatalf("%s: unterminated tagged block at end of file", docPath)
	}
	return blocks
}

// hexdumpC renders b like `hexdump -C`, without the final offset line.
func hexdumpC(b []byte) string {
	var sb strings.Builder
	for off := 0; off < len(b); off += 16 {
		row := b[off:min(off+16, len(b))]
		fmt.Fprintf(&sb, "%08x  ", off)
		for i := 0; i < 16; i++ {
			if i < len(row) {
				fmt.Fprintf(&sb, "%02x ", row[i])
			} else {
				sb.WriteString("   ")
			}
			if i == 7 {
				sb.WriteByte(' ')
			}
		}
		sb.WriteString(" |")
		for _, c := range row {
			if c >= 0x20 && c < 0x7f {
				sb.WriteByte(c)
			} else {
				sb.WriteByte('.')
			}
		}
		sb.WriteString("|\n")
	}
	return strings.TrimSuffix(sb.String(), "\n")
}

// walkthroughBytes concatenates the bytes of a walk-through: each line
// starts with hex byte pairs separated by single spaces; the explanation
// follows after two or more spaces. A line starting with a space carries
// explanation only.
func walkthroughBytes(body string) ([]byte, error) {
	var out []byte
	for i, line := range strings.Split(body, "\n") {
		hexPart, _, _ := strings.Cut(line, "  ")
		if strings.TrimSpace(hexPart) == "" {
			continue
		}
		for _, tok := range strings.Split(hexPart, " ") {
			if len(tok) != 2 {
				return nil, fmt.Errorf("line %d: %q is not a hex byte", i+1, tok)
			}
			v, err := hex.DecodeString(tok)
			if err != nil {
				return nil, fmt.Errorf("line %d: %q is not a hex byte", i+1, tok)
			}
			out = append(out, v...)
		}
	}
	return out, nil
}

// The document's example values.
var (
	docTime  = time.UnixMilli(1_767_225_600_000) // 2026-01-01T00:00:00Z
	docLimit = Limits{MaxBatch: 1000, MaxFuture: time.Hour, MaxPast: 30 * 24 * time.Hour}
	// docReadings is the example batch: one stamped float reading and one
	// clock-less boolean (true arrives as 1).
	docReadings = Readings{
		{T: docTime.UnixMilli(), HasT: true, Metric: "temp", Value: 21.5},
		{Metric: "door", Value: 1},
	}
)

func mustMarshal(t *testing.T, m msgp.Marshaler) []byte {
	t.Helper()
	b, err := m.MarshalMsg(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ackFor builds the ack the server sends for readings, from the real
// validation rules (so the error strings in the document are the real ones).
func ackFor(seq uint64, rs Readings) *Ack {
	ok, rejected, errs := Validate(rs, docTime, docLimit, nil)
	if errs == nil {
		errs = []string{}
	}
	return &Ack{Type: TypeAck, Seq: seq, Accepted: len(ok), Rejected: rejected, Errors: errs}
}

// compactBatch is the example batch as a small C encoder writes it: float32
// value, bool true, smallest int for seq, int64 for t. The Go encoder always
// writes float64 values, so this one is assembled from msgp's primitive
// appenders, and the test also checks the server decodes it to the same
// readings as the full example.
func compactBatch() []byte {
	b := msgp.AppendMapHeader(nil, 3)
	b = msgp.AppendString(b, "type")
	b = msgp.AppendString(b, "batch")
	b = msgp.AppendString(b, "seq")
	b = msgp.AppendUint64(b, 42)
	b = msgp.AppendString(b, "readings")
	b = msgp.AppendArrayHeader(b, 2)
	b = msgp.AppendArrayHeader(b, 3)
	b = append(b, 0xd3) // always int64, as a C encoder with a fixed layout would
	b = binary.BigEndian.AppendUint64(b, uint64(docTime.UnixMilli()))
	b = msgp.AppendString(b, "temp")
	b = msgp.AppendFloat32(b, 21.5)
	b = msgp.AppendArrayHeader(b, 3)
	b = msgp.AppendNil(b)
	b = msgp.AppendString(b, "door")
	b = msgp.AppendBool(b, true)
	return b
}

// docExamples are the encodings every example in docs/protocol.md must show.
func docExamples(t *testing.T) map[string][]byte {
	badMetric := Readings{
		{T: docTime.UnixMilli(), HasT: true, Metric: "temp", Value: 21.5},
		{T: docTime.UnixMilli(), HasT: true, Metric: "boiler temp", Value: 1},
	}
	return map[string][]byte{
		"hello": mustMarshal(t, &Hello{Type: TypeHello, Device: "boiler-7", Session: "9f2c41d07a3b55e1", Acked: 41,
			Time: docTime.UnixMilli(), MaxBatch: 1000, MaxFrame: 64 << 10, Heartbeat: 20}),
		"batch":         mustMarshal(t, &Batch{Type: TypeBatch, Seq: 42, Readings: docReadings}),
		"batch-compact": compactBatch(),
		"ack":           mustMarshal(t, ackFor(42, docReadings)),
		"ack-partial":   mustMarshal(t, ackFor(43, badMetric)),
		"ack-duplicate": mustMarshal(t, &Ack{Type: TypeAck, Seq: 42, Duplicate: true, Errors: []string{}}),
		"command": mustMarshal(t, &Command{Type: TypeCommand, ID: "c-17", Name: "reboot",
			Payload: msgp.AppendInt(msgp.AppendString(msgp.AppendMapHeader(nil, 1), "delay_s"), 5)}),
		"result": mustMarshal(t, &Result{Type: TypeResult, ID: "c-17", OK: true, Payload: msgp.Raw{0xc0}}),
		"error": mustMarshal(t, &Error{Type: TypeError, Code: "seq_not_increasing",
			Message: "seq 7 is not greater than the previous seq 9 on this connection"}),
	}
}

// TestProtocolDocExamples keeps docs/protocol.md honest: every hex dump and
// byte-by-byte walk-through must be exactly what the real encoder produces.
func TestProtocolDocExamples(t *testing.T) {
	want := docExamples(t)
	seen := map[string]bool{}
	for _, blk := range readDocBlocks(t) {
		enc, ok := want[blk.name]
		if !ok {
			t.Errorf("%s:%d: %s %q: no such example in this test; add it to docExamples", docPath, blk.line, blk.kind, blk.name)
			continue
		}
		switch blk.kind {
		case "example":
			seen[blk.name] = true
			if got := strings.TrimRight(blk.body, "\n "); got != hexdumpC(enc) {
				t.Errorf("%s:%d: hex dump of %q differs from the encoder's %d bytes; it should read:\n%s",
					docPath, blk.line, blk.name, len(enc), hexdumpC(enc))
			}
		case "walkthrough":
			got, err := walkthroughBytes(blk.body)
			if err != nil {
				t.Errorf("%s:%d: walk-through of %q: %v", docPath, blk.line, blk.name, err)
				continue
			}
			if !bytes.Equal(got, enc) {
				t.Errorf("%s:%d: walk-through of %q spells\n%s\nthe encoder writes\n%s", docPath, blk.line, blk.name, hexdumpC(got), hexdumpC(enc))
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s: no hex dump for example %q (tag it <!-- example: %s -->)", docPath, name, name)
		}
	}
}

// TestProtocolDocCompactBatch: the compact encoding a C encoder writes
// decodes to exactly the readings of the full example.
func TestProtocolDocCompactBatch(t *testing.T) {
	m, err := Decode(compactBatch())
	if err != nil {
		t.Fatal(err)
	}
	b := m.(*Batch)
	if b.Seq != 42 || len(b.Readings) != len(docReadings) {
		t.Fatalf("decoded %+v", b)
	}
	for i := range docReadings {
		if b.Readings[i] != docReadings[i] {
			t.Errorf("reading %d: got %+v, want %+v", i, b.Readings[i], docReadings[i])
		}
	}
	if err := CheckBatch(b, docLimit); err != nil {
		t.Fatal(err)
	}
}

// TestProtocolDocConstants: the limits and close codes the document states
// are the ones this package enforces.
func TestProtocolDocConstants(t *testing.T) {
	raw, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	for _, s := range []string{
		fmt.Sprintf("`%d`", MaxDepth),
		fmt.Sprintf("1 to %d bytes", MaxMetricLen),
		fmt.Sprintf("up to %d distinct", MaxErrors),
	} {
		if !strings.Contains(doc, s) {
			t.Errorf("%s does not state %q", docPath, s)
		}
	}
	for _, code := range []int{CloseGoingAway, CloseProtocol, CloseUnsupported, CloseInvalidData, ClosePolicy, CloseTooBig, CloseInternal, CloseTryAgainLater} {
		if !strings.Contains(doc, fmt.Sprintf("| %d ", code)) {
			t.Errorf("%s: close code %d missing from the close code table", docPath, code)
		}
	}
}
