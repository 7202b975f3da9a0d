package wsconn

import (
	"bufio"
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// discard is a Transport that reads nothing and accepts every write.
type discard struct{}

func (discard) Read([]byte) (int, error)         { return 0, io.EOF }
func (discard) Write(p []byte) (int, error)      { return len(p), nil }
func (discard) Close() error                     { return nil }
func (discard) SetReadDeadline(time.Time) error  { return nil }
func (discard) SetWriteDeadline(time.Time) error { return nil }

// FuzzReadMessage feeds untrusted bytes to the frame reader: it must never
// panic, never return a message over MaxMessage, and fail only with an
// *Error or an I/O error.
func FuzzReadMessage(f *testing.F) {
	frame := func(fs ...ws.Frame) []byte {
		var b bytes.Buffer
		for _, fr := range fs {
			_ = ws.WriteFrame(&b, fr)
		}
		return b.Bytes()
	}
	f.Add(frame(masked(ws.OpBinary, true, []byte("hello"))))
	f.Add(frame(masked(ws.OpText, false, []byte("he")), masked(ws.OpPing, true, []byte("p")), masked(ws.OpContinuation, true, []byte("llo"))))
	f.Add(frame(ws.NewBinaryFrame([]byte("unmasked"))))
	f.Add(frame(masked(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))))
	f.Add(frame(masked(ws.OpBinary, true, bytes.Repeat([]byte("x"), 300))))
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	// A fragment, then a continuation claiming 2^63-1 bytes: the sum with
	// the fragment's length must not wrap past the size check.
	f.Add(append(frame(masked(ws.OpBinary, false, []byte("x"))),
		0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		e := &Engine{}
		c := &Conn{e: e, t: discard{}, cfg: &Config{MaxMessage: 256}, h: &echo{}, fd: -1}
		br := bufio.NewReader(bytes.NewReader(data))
		for range 64 {
			_, p, err := c.readMessage(br)
			if err != nil {
				return
			}
			if int64(len(p)) > c.cfg.MaxMessage {
				t.Fatalf("message of %d bytes over MaxMessage", len(p))
			}
		}
	})
}
