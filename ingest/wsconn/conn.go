package wsconn

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// Close codes (RFC 6455 section 7.4.1 and the IANA registry). Protocols on
// top use these names; no bare numbers.
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseProtocol      = 1002
	CloseUnsupported   = 1003
	CloseAbnormal      = 1006 // never sent: the socket is already gone
	CloseInvalidData   = 1007
	ClosePolicy        = 1008
	CloseTooBig        = 1009
	CloseInternal      = 1011
	CloseTryAgainLater = 1013
)

// Kinds of endings the core itself detects. Protocols map them to their own
// vocabulary (the device protocol sends Kind as its error code).
const (
	KindBadFrame    = "bad_frame"
	KindUnmasked    = "unmasked_frame"
	KindTooBig      = "frame_too_big"
	KindTimeout     = "timeout"
	KindPeerClosed  = "peer_closed"
	KindLost        = "connection_lost"
	KindWriteFailed = "write_failed"
)

// Error is why a connection ends: the close code to send, a short
// machine-readable kind and a human reason (the close frame's text).
type Error struct {
	Code   int
	Kind   string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("websocket %d %s: %s", e.Code, e.Kind, e.Reason) }

// Transport is the part of net.Conn the core uses, so tests can run it over
// net.Pipe and TLS connections fit as well as TCP ones.
type Transport interface {
	io.ReadWriteCloser
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// Handler is a protocol on top of the core.
type Handler interface {
	// Message handles one complete (reassembled, unmasked) data message of
	// either opcode; payload is the handler's to keep. It may block: reading
	// the socket pauses meanwhile. A non-nil return ends the connection
	// through Ending.
	Message(op ws.OpCode, payload []byte) *Error
	// Ending is told why the connection is ending when the core or Message
	// decided it (bad frame, idle, peer close, lost socket). Reading has
	// stopped; the handler must call Close with e, now or later (the device
	// protocol first lets acks of committed batches be queued).
	Ending(e Error)
	// Farewell returns an optional data frame written after the queued
	// frames and before the close frame (the device protocol's error map).
	Farewell(e Error) []byte
	// Closed is called once, after the socket is closed and the reader has
	// stopped: the place for the protocol's cleanup.
	Closed(e Error)
}

// Ticker is an optional Handler extension: Tick is called from the timer
// wheel at every ping interval and must not block.
type Ticker interface{ Tick() }

// Config is a connection's protocol settings. Zero durations disable the
// corresponding timer.
type Config struct {
	// MaxMessage bounds a reassembled data message; larger closes 1009.
	MaxMessage int64
	// Idle: no frame at all for this long closes 1001 (kind timeout).
	Idle time.Duration
	// Ping is the interval of server pings.
	Ping time.Duration
	// WriteTimeout bounds one write of everything queued.
	WriteTimeout time.Duration
	// OpText, when true, sends data frames as text (live); else binary.
	OpText bool
}

type outFrame struct {
	b    []byte
	done func() // called once written or dropped; may be nil
	pong bool   // a pong, which a newer one replaces while queued (sendPong)
}

// Conn is one WebSocket connection driven by an Engine.
//
// Its fields are ordered and sized to keep an idle connection small (it is
// most of what one costs): the wheel slot and the fd are narrow integers, the
// flags sit together, and the ReadStopped channel exists only once somebody
// asks for it.
type Conn struct {
	e   *Engine
	t   Transport
	cfg *Config
	h   Handler

	pre []byte // bytes read past the handshake (or the byte waited on), consumed first

	lastRead atomic.Int64 // unix nanos of the last frame read
	lastPing int64        // wheel-owned
	due      int64        // wheel tick number; under wheel.mu

	mu   sync.Mutex
	fd   int32  // registered with the poller, or -1
	pgen uint32 // the poller registration's generation (poll_linux.go)
	wpos int32  // index+1 in its wheel slot, 0 if not filed; under wheel.mu
	// inHandler is set while Handler.Message runs. A handler may block on
	// purpose (the device's queue is full, storage is slow, the device is
	// paced): the peer's pongs then wait unread in the socket, and the
	// idle check must not take that for silence.
	inHandler  atomic.Bool
	slot       uint8   // wheel slot (wheelSlots); under wheel.mu
	one        [1]byte // the blocking reader waits on this, not on a buffer
	writing    bool
	reading    bool
	stopRead   bool
	readerGone bool
	closed     bool // transport closed
	finished   bool
	queue      []outFrame
	closing    *Error
	readDone   chan struct{} // made by ReadStopped; closed when the reader is gone
}

// rawReader is what the pooled bufio.Reader reads from: the pending bytes
// first, then the transport.
type rawReader Conn

func (r *rawReader) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		if len(r.pre) == 0 {
			r.pre = nil
		}
		return n, nil
	}
	return r.t.Read(p)
}

// ReadStopped is closed when the reader has stopped for good (after
// StopReading or Close): no Message call happens after it. The channel is
// made on the first call: most connections never need it.
func (c *Conn) ReadStopped() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readDone == nil {
		c.readDone = make(chan struct{})
		if c.readerGone {
			close(c.readDone)
		}
	}
	return c.readDone
}

// Polled reports whether the connection is readiness-driven (no reader
// goroutine while idle).
func (c *Conn) Polled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fd >= 0
}

// Start begins reading. Call it once the handler is ready to get messages.
func (c *Conn) Start() {
	now := time.Now().UnixNano()
	c.lastRead.Store(now)
	c.lastPing = now
	c.e.wheel.add(c, c.nextDue(now))
	c.mu.Lock()
	if c.stopRead || c.reading {
		c.mu.Unlock()
		return
	}
	if c.fd >= 0 {
		if err := c.e.poll.add(c); err == nil {
			// Bytes that came with the handshake will not wake the poller.
			if len(c.pre) > 0 {
				c.reading = true
				c.mu.Unlock()
				go c.pollRead()
				return
			}
			c.mu.Unlock()
			return
		}
		c.fd = -1 // cannot poll it: fall back to a blocking reader
	}
	c.reading = true
	c.mu.Unlock()
	go c.blockingLoop()
}

// blockingLoop is the reader of a connection the poller cannot watch: it
// waits for one byte in c.one, then reads like the polled reader does.
func (c *Conn) blockingLoop() {
	for {
		if len(c.pre) == 0 {
			n, err := c.t.Read(c.one[:])
			if n > 0 {
				c.pre = c.one[:n]
			}
			if err != nil && n == 0 {
				c.readFailed(err)
				break
			}
		}
		if !c.readSome() {
			break
		}
	}
	c.readerExit()
}

// pollRead runs when the poller saw the socket readable.
func (c *Conn) pollRead() {
	again := c.readSome()
	c.mu.Lock()
	if again && !c.stopRead && c.fd >= 0 {
		c.reading = false
		if err := c.e.poll.arm(c); err == nil {
			c.mu.Unlock()
			return
		}
		c.reading = true
		c.mu.Unlock()
		// Cannot re-arm (should not happen): keep a blocking reader.
		go c.blockingLoop()
		return
	}
	c.mu.Unlock()
	c.readerExit()
}

// readReady is called by the poller; it starts a reader unless reading
// stopped meanwhile.
func (c *Conn) readReady() {
	c.mu.Lock()
	if c.stopRead || c.reading || c.fd < 0 {
		c.mu.Unlock()
		return
	}
	c.reading = true
	c.mu.Unlock()
	go c.pollRead()
}

func (c *Conn) readerExit() {
	c.mu.Lock()
	c.reading = false
	c.stopRead = true
	fin := c.markReaderGone()
	c.mu.Unlock()
	if fin {
		c.finish()
	}
}

// markReaderGone records that no reader will run again; it reports whether
// the connection is now ready for its final cleanup. Called with mu held.
func (c *Conn) markReaderGone() bool {
	if c.readerGone {
		return false
	}
	c.readerGone = true
	if c.readDone != nil {
		close(c.readDone)
	}
	return c.closed && !c.finished
}

func (c *Conn) stopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopRead
}

// readSome reads and handles every message already buffered through one
// pooled reader. It reports whether reading should continue.
func (c *Conn) readSome() bool {
	br := c.e.readers.Get().(*bufio.Reader)
	br.Reset((*rawReader)(c))
	defer func() {
		// A frame is never left half-read here (a message is read to its
		// end), so bytes still buffered are whole frames: keep them.
		if n := br.Buffered(); n > 0 {
			rest, _ := br.Peek(n)
			c.pre = append(c.pre[:0:0], rest...)
		}
		br.Reset(nil)
		c.e.readers.Put(br)
	}()
	for {
		if c.stopping() {
			return false
		}
		op, payload, err := c.readMessage(br)
		if err != nil {
			c.readFailed(err)
			return false
		}
		if payload != nil {
			c.inHandler.Store(true)
			e := c.h.Message(op, payload)
			c.lastRead.Store(time.Now().UnixNano())
			c.inHandler.Store(false)
			if e != nil {
				c.end(*e)
				return false
			}
		}
		if br.Buffered() == 0 && len(c.pre) == 0 {
			return true
		}
	}
}

// end stops reading and lets the handler decide when to close.
func (c *Conn) end(e Error) {
	c.StopReading()
	c.h.Ending(e)
}

func (c *Conn) readFailed(err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case c.stopping():
		return // StopReading or Close interrupted the read
	case errors.Is(err, os.ErrDeadlineExceeded):
		e = &Error{Code: CloseGoingAway, Kind: KindTimeout, Reason: "no frame within the idle timeout"}
	default:
		e = &Error{Code: CloseAbnormal, Kind: KindLost, Reason: "connection lost"}
	}
	c.end(*e)
}

var errPeerClosed = &Error{Code: CloseNormal, Kind: KindPeerClosed}

// readMessage reads one complete data message, reassembling fragments.
// Control frames are answered in between; a message of only control frames
// returns a nil payload.
func (c *Conn) readMessage(br *bufio.Reader) (ws.OpCode, []byte, error) {
	var msg []byte
	var op ws.OpCode
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthUnexpected) || errors.Is(err, ws.ErrHeaderLengthMSB) {
				return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: "invalid WebSocket frame header"}
			}
			return 0, nil, err
		}
		c.lastRead.Store(time.Now().UnixNano())
		if !h.Masked {
			return 0, nil, &Error{Code: CloseProtocol, Kind: KindUnmasked, Reason: "client frames must be masked (RFC 6455 5.1)"}
		}
		if h.Rsv != 0 {
			return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: "reserved bits set without a negotiated extension"}
		}
		if h.OpCode.IsControl() {
			if h.Length > 125 || !h.Fin {
				return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: "invalid control frame"}
			}
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(br, p); err != nil {
				return 0, nil, err
			}
			ws.Cipher(p, h.Mask, 0)
			switch h.OpCode {
			case ws.OpPing:
				c.sendPong(p)
			case ws.OpClose:
				return 0, nil, errPeerClosed
			}
			if msg == nil {
				return 0, nil, nil
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpContinuation && msg == nil:
			return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: "continuation frame without a message to continue"}
		case h.OpCode != ws.OpContinuation && msg != nil:
			return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: "new message before the previous one's final fragment"}
		case h.OpCode != ws.OpText && h.OpCode != ws.OpBinary && h.OpCode != ws.OpContinuation:
			return 0, nil, &Error{Code: CloseProtocol, Kind: KindBadFrame, Reason: fmt.Sprintf("unknown opcode %d", h.OpCode)}
		}
		// Compared without adding: a header may claim up to 2^63-1 bytes,
		// and len(msg)+h.Length would wrap negative and pass.
		if h.Length < 0 || h.Length > c.cfg.MaxMessage-int64(len(msg)) {
			return 0, nil, &Error{Code: CloseTooBig, Kind: KindTooBig, Reason: fmt.Sprintf("message exceeds %d bytes", c.cfg.MaxMessage)}
		}
		if msg == nil {
			op = h.OpCode
			msg = make([]byte, 0, h.Length)
		}
		start := len(msg)
		msg = append(msg, make([]byte, h.Length)...)
		if _, err := io.ReadFull(br, msg[start:]); err != nil {
			return 0, nil, err
		}
		ws.Cipher(msg[start:], h.Mask, 0)
		if h.Fin {
			return op, msg, nil
		}
	}
}

// Send queues a frame; done (optional) runs once it was written or dropped.
// It reports false, without calling done, once the connection is closing.
func (c *Conn) Send(op ws.OpCode, payload []byte, done func()) bool {
	return c.enqueue(outFrame{b: appendFrame(make([]byte, 0, headerLen(len(payload))+len(payload)), op, payload), done: done})
}

// sendPong answers a ping. A pong still queued is replaced rather than
// joined by another: a peer that floods pings without reading its socket
// gets one pending pong instead of a queue growing with every ping
// (RFC 6455 5.5.3: answering only the most recent ping is allowed).
func (c *Conn) sendPong(payload []byte) {
	c.enqueue(outFrame{b: appendFrame(make([]byte, 0, headerLen(len(payload))+len(payload)), ws.OpPong, payload), pong: true})
}

// enqueue adds f to the write queue (or, for a pong, replaces a queued
// pong) and starts the writer if none runs.
func (c *Conn) enqueue(f outFrame) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	replaced := false
	if f.pong {
		for i := len(c.queue) - 1; i >= 0; i-- {
			if c.queue[i].pong {
				c.queue[i].b = f.b
				replaced = true
				break
			}
		}
	}
	if !replaced {
		c.queue = append(c.queue, f)
	}
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		go c.writeLoop()
	}
	return true
}

// SendData queues a data frame of the connection's data opcode.
func (c *Conn) SendData(payload []byte, done func()) bool {
	op := ws.OpBinary
	if c.cfg.OpText {
		op = ws.OpText
	}
	return c.Send(op, payload, done)
}

// StopReading makes the reader stop without closing: queued and later
// frames are still written (a graceful drain acks what was read).
func (c *Conn) StopReading() {
	c.mu.Lock()
	if c.stopRead {
		c.mu.Unlock()
		return
	}
	c.stopRead = true
	fin := false
	if !c.reading {
		fin = c.markReaderGone()
	}
	c.mu.Unlock()
	// Unblock a reader waiting for bytes; a polled idle connection has none.
	_ = c.t.SetReadDeadline(time.Now())
	if fin {
		c.finish()
	}
}

// Close ends the connection with e: queued frames, the handler's farewell,
// then the close frame (not for CloseAbnormal), then the socket closes. The
// first call wins; it never blocks on the peer.
func (c *Conn) Close(e Error) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	c.closing = &e
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.StopReading()
	if start {
		go c.writeLoop()
	}
}

// Abort closes the socket now, dropping queued frames: for a peer that does
// not take writes when the shutdown deadline has passed.
func (c *Conn) Abort() {
	c.Close(Error{Code: CloseAbnormal, Kind: KindLost, Reason: "aborted"})
	c.closeTransport()
}

// Closing reports whether Close was called.
func (c *Conn) Closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing != nil
}

// writeLoop runs only while frames are queued or a close is pending.
func (c *Conn) writeLoop() {
	broken := false
	for {
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		closing := c.closing
		if len(q) == 0 && closing == nil {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if len(q) > 0 {
			if !broken && (closing == nil || closing.Code != CloseAbnormal) {
				if err := c.write(q); err != nil {
					broken = true
					c.end(Error{Code: CloseAbnormal, Kind: KindWriteFailed, Reason: "write failed"})
				}
			}
			for _, f := range q {
				if f.done != nil {
					f.done()
				}
			}
			continue
		}
		if !broken && closing.Code != CloseAbnormal {
			var frames []outFrame
			if fw := c.h.Farewell(*closing); fw != nil {
				frames = append(frames, outFrame{b: appendFrame(nil, c.dataOp(), fw)})
			}
			frames = append(frames, outFrame{b: appendFrame(nil, ws.OpClose, closeBody(closing.Code, closing.Reason))})
			_ = c.write(frames)
		}
		c.closeTransport()
		return
	}
}

func (c *Conn) dataOp() ws.OpCode {
	if c.cfg.OpText {
		return ws.OpText
	}
	return ws.OpBinary
}

// vectorWriter is a Transport that writes several buffers with one
// syscall (rawconn_linux.go; a net.Conn does it inside net.Buffers.WriteTo).
type vectorWriter interface {
	writev(bufs [][]byte) (int, error)
}

// write sends frames with one writev under the write timeout; a single
// frame (hello, an ack, a ping: the common case) with a plain write, because
// a socket that did one writev keeps its iovec array for the rest of its
// life (internal/poll caches it per fd), tens of bytes per idle connection.
func (c *Conn) write(q []outFrame) error {
	if c.cfg.WriteTimeout > 0 {
		_ = c.t.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	}
	var err error
	if len(q) == 1 {
		_, err = c.t.Write(q[0].b)
	} else {
		bufs := make(net.Buffers, len(q))
		for i, f := range q {
			bufs[i] = f.b
		}
		if vw, ok := c.t.(vectorWriter); ok {
			_, err = vw.writev(bufs)
		} else {
			_, err = bufs.WriteTo(c.t)
		}
	}
	if c.cfg.WriteTimeout > 0 && err == nil {
		// Disarm it: a deadline left set is a runtime timer per recently
		// written connection, and the timer heap keeps its peak size.
		_ = c.t.SetWriteDeadline(time.Time{})
	}
	return err
}

// closeTransport leaves the poller (before the fd can be reused) and
// closes the socket, once.
func (c *Conn) closeTransport() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if c.fd >= 0 {
		c.e.poll.remove(c)
		c.fd = -1
	}
	_ = c.t.Close()
	fin := c.readerGone && !c.finished
	c.mu.Unlock()
	if fin {
		c.finish()
	}
}

// finish runs the handler's cleanup once the socket is closed and the
// reader gone.
func (c *Conn) finish() {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return
	}
	c.finished = true
	e := Error{Code: CloseAbnormal, Kind: KindLost}
	if c.closing != nil {
		e = *c.closing
	}
	// Frames queued after the close (none are accepted) or left by a
	// broken writer: release their callbacks.
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, f := range q {
		if f.done != nil {
			f.done()
		}
	}
	c.e.wheel.remove(c)
	c.e.conns.Done()
	c.h.Closed(e)
}

// tick is called by the wheel when c is due: close an idle connection,
// ping, and return the next due time (0: nothing more to do).
func (c *Conn) tick(now int64) int64 {
	if c.Closing() {
		return 0
	}
	if c.cfg.Idle > 0 && !c.inHandler.Load() && now-c.lastRead.Load() >= int64(c.cfg.Idle) {
		c.end(Error{Code: CloseGoingAway, Kind: KindTimeout, Reason: "no frame or pong for two heartbeat intervals"})
		return 0
	}
	if c.cfg.Ping > 0 && now-c.lastPing >= int64(c.cfg.Ping) {
		c.lastPing = now
		if t, ok := c.h.(Ticker); ok {
			t.Tick()
		}
		c.Send(ws.OpPing, nil, nil)
	}
	return c.nextDue(now)
}

func (c *Conn) nextDue(now int64) int64 {
	next := int64(0)
	if c.cfg.Idle > 0 {
		next = c.lastRead.Load() + int64(c.cfg.Idle)
	}
	if c.cfg.Ping > 0 {
		if p := c.lastPing + int64(c.cfg.Ping); next == 0 || p < next {
			next = p
		}
	}
	if next != 0 && next <= now {
		next = now + 1
	}
	return next
}

func headerLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// appendFrame appends one final, unmasked server frame (RFC 6455 5.2).
func appendFrame(b []byte, op ws.OpCode, payload []byte) []byte {
	n := len(payload)
	b = append(b, 0x80|byte(op))
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, payload...)
}

// closeBody is a close frame's payload: the code and a reason cut to fit
// a 125-byte control frame.
func closeBody(code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	b := []byte{byte(code >> 8), byte(code)}
	return append(b, reason...)
}
