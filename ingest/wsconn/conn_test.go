package wsconn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo is a test protocol: it echoes data messages, closes on a "quit"
// message, and says goodbye with the error kind.
type echo struct {
	c      *Conn
	msgs   chan []byte
	closed chan Error
}

func (h *echo) Message(op ws.OpCode, p []byte) *Error {
	if string(p) == "quit" {
		return &Error{Code: ClosePolicy, Kind: "quit", Reason: "asked to"}
	}
	h.msgs <- p
	h.c.SendData(p, nil)
	return nil
}
func (h *echo) Ending(e Error) { h.c.Close(e) }
func (h *echo) Farewell(e Error) []byte {
	if e.Kind == "" || e.Kind == KindPeerClosed {
		return nil
	}
	return []byte("bye:" + e.Kind)
}
func (h *echo) Closed(e Error) { h.closed <- e }

type peer struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func (p *peer) send(f ws.Frame) {
	p.t.Helper()
	_ = p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteFrame(p.conn, f); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *peer) read() ws.Frame {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(p.br)
	if err != nil {
		p.t.Fatalf("read: %v", err)
	}
	return f
}

// expectClose reads until the close frame, returning its code and any data
// frames before it.
func (p *peer) expectClose() (int, []string) {
	p.t.Helper()
	var data []string
	for {
		f := p.read()
		switch f.Header.OpCode {
		case ws.OpClose:
			return int(binary.BigEndian.Uint16(f.Payload)), data
		case ws.OpPing, ws.OpPong:
		default:
			data = append(data, string(f.Payload))
		}
	}
}

type setup struct {
	name string
	dial func(t *testing.T) (server, client net.Conn)
	eng  EngineConfig
}

func pipeSetup() setup {
	return setup{name: "pipe", eng: EngineConfig{Tick: 20 * time.Millisecond, Blocking: true},
		dial: func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }}
}

func tcpSetup() setup {
	return setup{name: "tcp-poll", eng: EngineConfig{Tick: 20 * time.Millisecond}, dial: func(t *testing.T) (net.Conn, net.Conn) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return tcpPair(t, l)
	}}
}

// tcpPair connects to ln and returns both ends.
func tcpPair(t *testing.T, ln net.Listener) (server, client net.Conn) {
	t.Helper()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return sv, cl
}

// pollEngine is an engine with the readiness poller (where there is one)
// and a loopback listener; both close when the test ends.
func pollEngine(t *testing.T, tick time.Duration) (*Engine, net.Listener) {
	t.Helper()
	eng, err := NewEngine(EngineConfig{Tick: tick})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return eng, ln
}

func start(t *testing.T, s setup, cfg Config) (*echo, *peer, *Engine) {
	t.Helper()
	e, err := NewEngine(s.eng)
	if err != nil {
		t.Fatal(err)
	}
	sv, cl := s.dial(t)
	h := &echo{msgs: make(chan []byte, 16), closed: make(chan Error, 1)}
	h.c = e.Attach(sv, nil, &cfg, h)
	h.c.Start()
	if want := !s.eng.Blocking; h.c.Polled() != want {
		t.Fatalf("Polled() = %v, want %v", !want, want)
	}
	t.Cleanup(func() {
		cl.Close()
		h.c.Abort()
		e.Close()
	})
	return h, &peer{t: t, conn: cl, br: bufio.NewReader(cl)}, e
}

var baseCfg = Config{MaxMessage: 64, WriteTimeout: time.Second}

func masked(op ws.OpCode, fin bool, p []byte) ws.Frame {
	return ws.MaskFrame(ws.NewFrame(op, fin, p))
}

func TestMessagesAndFragments(t *testing.T) {
	for _, s := range []setup{pipeSetup(), tcpSetup()} {
		t.Run(s.name, func(t *testing.T) {
			h, p, _ := start(t, s, baseCfg)
			p.send(masked(ws.OpBinary, true, []byte("one")))
			if f := p.read(); string(f.Payload) != "one" {
				t.Fatalf("echo %q", f.Payload)
			}
			// A fragmented message with a ping in the middle (RFC 6455 5.4).
			p.send(masked(ws.OpBinary, false, []byte("tw")))
			p.send(masked(ws.OpPing, true, []byte("hi")))
			p.send(masked(ws.OpContinuation, true, []byte("o")))
			if f := p.read(); f.Header.OpCode != ws.OpPong || string(f.Payload) != "hi" {
				t.Fatalf("want pong hi, got %v %q", f.Header.OpCode, f.Payload)
			}
			if f := p.read(); string(f.Payload) != "two" {
				t.Fatalf("reassembled %q", f.Payload)
			}
			if got := <-h.msgs; string(got) != "one" {
				t.Fatalf("handler got %q", got)
			}
			p.send(masked(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
			if code, _ := p.expectClose(); code != CloseNormal {
				t.Fatalf("close %d", code)
			}
			if e := <-h.closed; e.Kind != KindPeerClosed {
				t.Fatalf("closed %+v", e)
			}
		})
	}
}

func TestBadFrames(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 65)
	cases := []struct {
		name   string
		frames []ws.Frame
		code   int
		kind   string
	}{
		{"unmasked", []ws.Frame{ws.NewBinaryFrame([]byte("x"))}, CloseProtocol, KindUnmasked},
		{"reserved bit", []ws.Frame{func() ws.Frame {
			f := masked(ws.OpBinary, true, []byte("x"))
			f.Header.Rsv = ws.Rsv(true, false, false)
			return f
		}()}, CloseProtocol, KindBadFrame},
		{"continuation first", []ws.Frame{masked(ws.OpContinuation, true, []byte("x"))}, CloseProtocol, KindBadFrame},
		{"new message mid-fragment", []ws.Frame{masked(ws.OpBinary, false, []byte("x")), masked(ws.OpBinary, true, []byte("y"))}, CloseProtocol, KindBadFrame},
		{"fragmented ping", []ws.Frame{masked(ws.OpPing, false, nil)}, CloseProtocol, KindBadFrame},
		{"long ping", []ws.Frame{masked(ws.OpPing, true, bytes.Repeat([]byte("x"), 126))}, CloseProtocol, KindBadFrame},
		{"unknown opcode", []ws.Frame{masked(ws.OpCode(3), true, nil)}, CloseProtocol, KindBadFrame},
		{"too big", []ws.Frame{masked(ws.OpBinary, true, big)}, CloseTooBig, KindTooBig},
		{"too big across fragments", []ws.Frame{masked(ws.OpBinary, false, big[:40]), masked(ws.OpContinuation, true, big[:40])}, CloseTooBig, KindTooBig},
		{"handler refuses", []ws.Frame{masked(ws.OpText, true, []byte("quit"))}, ClosePolicy, "quit"},
	}
	for _, s := range []setup{pipeSetup(), tcpSetup()} {
		for _, c := range cases {
			t.Run(s.name+"/"+c.name, func(t *testing.T) {
				h, p, _ := start(t, s, baseCfg)
				go func() {
					for _, f := range c.frames {
						_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
						_ = ws.WriteFrame(p.conn, f)
					}
				}()
				code, data := p.expectClose()
				if code != c.code || len(data) != 1 || data[0] != "bye:"+c.kind {
					t.Fatalf("got close %d after %q, want %d after bye:%s", code, data, c.code, c.kind)
				}
				if e := <-h.closed; e.Kind != c.kind {
					t.Fatalf("closed %+v", e)
				}
			})
		}
	}
}

func TestIdlePingAndTimeout(t *testing.T) {
	for _, s := range []setup{pipeSetup(), tcpSetup()} {
		t.Run(s.name, func(t *testing.T) {
			cfg := baseCfg
			cfg.Ping, cfg.Idle = 50*time.Millisecond, 200*time.Millisecond
			h, p, _ := start(t, s, cfg)
			if f := p.read(); f.Header.OpCode != ws.OpPing {
				t.Fatalf("want ping, got %v", f.Header.OpCode)
			}
			if code, _ := p.expectClose(); code != CloseGoingAway {
				t.Fatalf("close %d", code)
			}
			if e := <-h.closed; e.Kind != KindTimeout {
				t.Fatalf("closed %+v", e)
			}
		})
	}
}

func TestCloseWritesQueuedFirst(t *testing.T) {
	for _, s := range []setup{pipeSetup(), tcpSetup()} {
		t.Run(s.name, func(t *testing.T) {
			h, p, _ := start(t, s, baseCfg)
			written := make(chan struct{}, 3)
			for _, m := range []string{"a1", "a2", "a3"} {
				h.c.SendData([]byte(m), func() { written <- struct{}{} })
			}
			h.c.Close(Error{Code: CloseTryAgainLater, Kind: "later", Reason: "busy"})
			if h.c.SendData([]byte("late"), nil) {
				t.Fatal("Send accepted after Close")
			}
			code, data := p.expectClose()
			if code != CloseTryAgainLater || len(data) != 4 || data[0] != "a1" || data[3] != "bye:later" {
				t.Fatalf("got %d after %q", code, data)
			}
			for range 3 {
				<-written
			}
			<-h.closed
			select {
			case <-h.c.ReadStopped():
			default:
				t.Fatal("reader still running after Closed")
			}
		})
	}
}

func TestStopReadingKeepsWriting(t *testing.T) {
	h, p, _ := start(t, pipeSetup(), baseCfg)
	h.c.StopReading()
	<-h.c.ReadStopped()
	h.c.SendData([]byte("ack"), nil)
	if f := p.read(); string(f.Payload) != "ack" {
		t.Fatalf("got %q", f.Payload)
	}
	h.c.Close(Error{Code: CloseGoingAway, Reason: "shutdown"})
	if code, _ := p.expectClose(); code != CloseGoingAway {
		t.Fatalf("close %d", code)
	}
	<-h.closed
}

func TestPreBytesAreRead(t *testing.T) {
	for _, s := range []setup{pipeSetup(), tcpSetup()} {
		t.Run(s.name, func(t *testing.T) {
			e, err := NewEngine(s.eng)
			if err != nil {
				t.Fatal(err)
			}
			sv, cl := s.dial(t)
			var pre bytes.Buffer
			_ = ws.WriteFrame(&pre, masked(ws.OpBinary, true, []byte("early")))
			h := &echo{msgs: make(chan []byte, 4), closed: make(chan Error, 1)}
			h.c = e.Attach(sv, pre.Bytes(), &baseCfg, h)
			h.c.Start()
			p := &peer{t: t, conn: cl, br: bufio.NewReader(cl)}
			if f := p.read(); string(f.Payload) != "early" {
				t.Fatalf("got %q", f.Payload)
			}
			cl.Close()
			if e := <-h.closed; e.Code != CloseAbnormal {
				t.Fatalf("closed %+v", e)
			}
			e.Close()
		})
	}
}
