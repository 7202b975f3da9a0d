package meridian

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// byteConn is a net.Conn that reads fixed bytes, then EOF, and discards
// writes.
type byteConn struct {
	net.Conn
	r io.Reader
}

func (c *byteConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *byteConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *byteConn) Close() error                     { return nil }
func (c *byteConn) SetReadDeadline(time.Time) error  { return nil }
func (c *byteConn) SetWriteDeadline(time.Time) error { return nil }

func serverFrame(p []byte) []byte {
	var buf bytes.Buffer
	_ = ws.WriteFrame(&buf, ws.NewBinaryFrame(p))
	return buf.Bytes()
}

// FuzzClientRead: whatever a server (or something posing as one) sends, a
// Client's read path — frame parser, control frames, ack and command
// decoding, result encoding — never panics and ends with an error or EOF.
func FuzzClientRead(f *testing.F) {
	ackB, _ := (&wire.Ack{Type: wire.TypeAck, Seq: 1, Accepted: 2, Errors: []string{}}).MarshalMsg(nil)
	cmdB, _ := (&wire.Command{Type: wire.TypeCommand, ID: "c-1", Name: "reboot", Payload: []byte{0x81, 0xa1, 'x', 0x05}}).MarshalMsg(nil)
	errB, _ := (&wire.Error{Type: wire.TypeError, Code: "policy", Message: "disabled"}).MarshalMsg(nil)
	var ping bytes.Buffer
	_ = ws.WriteFrame(&ping, ws.NewPingFrame([]byte("hi")))
	var closeF bytes.Buffer
	_ = ws.WriteFrame(&closeF, ws.NewCloseFrame(ws.NewCloseFrameBody(1008, "policy")))
	f.Add(serverFrame(ackB))
	f.Add(append(append(serverFrame(cmdB), ping.Bytes()...), serverFrame(errB)...))
	f.Add(append(serverFrame(errB), closeF.Bytes()...))
	f.Add(serverFrame(ackB[:len(ackB)-3]))
	f.Add(serverFrame(cmdB[:10]))
	f.Add([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := New(Config{URL: "http://x", Token: "t", OnCommand: func(context.Context, Command) Result { return Result{OK: true} }})
		if err != nil {
			t.Fatal(err)
		}
		conn := &Conn{nc: &byteConn{r: bytes.NewReader(b)}, maxFrame: 1 << 16, rbuf: make([]byte, 0, 512),
			opt: DialOptions{WriteTimeout: time.Second, Rand: func() uint32 { return 1 }}}
		for range len(b) + 2 {
			err := conn.Poll(time.Now(), func(typ string, p []byte) error { return c.handle(context.Background(), conn, typ, p) })
			if err != nil {
				return
			}
		}
		t.Fatalf("Poll never reported the end of %d bytes", len(b))
	})
}
