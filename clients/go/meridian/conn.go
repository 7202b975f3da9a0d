package meridian

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// CloseLost is the pseudo close code of a connection that ended without a
// close frame (RFC 6455 7.1.5).
const CloseLost = 1006

// Defaults of DialOptions.
const (
	// DefaultDialTimeout bounds the TCP connect, the upgrade and the wait
	// for hello: the server sends hello right after the 101 unless storage
	// is down, and then it closes with 1013 within its own handshake timeout.
	DefaultDialTimeout = 10 * time.Second
	// DefaultWriteTimeout matches the server's own per-frame write timeout
	// (docs/protocol.md 1): a write that cannot finish in that time means
	// the server stopped reading, and the connection is as good as lost.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultMaxServerFrame bounds one frame from the server. hello, acks
	// and errors are tiny; a command's payload is not bounded by the server
	// (docs/protocol.md 8), so this is the device's own limit: a bigger
	// frame closes the connection with 1009.
	DefaultMaxServerFrame = 1 << 20
)

// DialOptions configure one WebSocket connection. The zero value of each
// field means its default.
type DialOptions struct {
	// Token is the device token, sent as "Authorization: Bearer <token>".
	Token string
	// Timeout bounds connect, upgrade and the wait for hello (DefaultDialTimeout).
	Timeout time.Duration
	// WriteTimeout bounds each frame write (DefaultWriteTimeout).
	WriteTimeout time.Duration
	// MaxServerFrame is the largest server frame accepted (DefaultMaxServerFrame).
	MaxServerFrame int
	// WriteBuffers, when set, is a pool of *[]byte that Conns share for
	// encoding outgoing frames, so an idle connection holds no write
	// buffer. nil: each Conn keeps its own.
	WriteBuffers *sync.Pool
	// Rand draws frame masks (RFC 6455 5.3). nil: math/rand/v2; a caller
	// with its own seeded source (the simulator) passes it for determinism.
	Rand func() uint32
}

// Errors of Dial after the upgrade succeeded.
var (
	// ErrNoHello: the server sent no hello within the dial timeout.
	ErrNoHello = errors.New("meridian: no hello before the dial timeout")
	// ErrBadHello: the first message was not a decodable hello.
	ErrBadHello = errors.New("meridian: bad hello")
)

// errStopPoll, returned by a Poll callback, ends Poll after that message
// and leaves the frames behind it buffered.
var errStopPoll = errors.New("stop poll")

// HandshakeError is a refused upgrade: the server answered with an HTTP
// status instead of 101 (docs/protocol.md 1, "Handshake answers other than
// 101"). 401 means the token is wrong; 503 means retry with backoff.
type HandshakeError struct {
	Status int
	// RetryAfter is the server's Retry-After (a 503 at its connection
	// limit): wait at least this long before the next attempt.
	RetryAfter time.Duration
}

func (e *HandshakeError) Error() string {
	return "meridian: handshake refused with HTTP " + strconv.Itoa(e.Status)
}

// CloseError is how a connection ended: the server's close code and reason,
// the code of the error frame that came before it (docs/protocol.md 4.6), or
// CloseLost with the I/O error when there was no close frame.
type CloseError struct {
	Code      int
	Reason    string
	ErrorCode string // the preceding error frame's code ("" if none)
	Err       error  // the I/O error of a lost connection
}

func (e *CloseError) Error() string {
	if e.Code == CloseLost && e.Err != nil {
		return "meridian: connection lost: " + e.Err.Error()
	}
	s := "meridian: server closed with " + strconv.Itoa(e.Code)
	if e.ErrorCode != "" {
		s += " " + e.ErrorCode
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func (e *CloseError) Unwrap() error { return e.Err }

// Conn is one WebSocket connection of protocol v1, after hello.
//
// It is the building block under Client, exported for callers that run
// their own event loop (the simulator runs thousands of devices with one
// goroutine each): Poll reads with a deadline, so one goroutine can both
// read acks and write batches. Concurrency: Poll must be called from one
// goroutine at a time; WriteMessage, Close and Abort may be called from any
// goroutine (writes are serialized by a mutex).
type Conn struct {
	nc       net.Conn
	opt      DialOptions
	maxFrame int
	rbuf     []byte
	lastErr  wire.Error // the last error frame, for CloseError
	// lastFrame is when Poll last saw a complete frame of any kind (pings
	// included): Client's read loop detects a silent server with it.
	lastFrame time.Time

	wmu  sync.Mutex
	wbuf []byte // used when opt.WriteBuffers is nil
}

// Dial connects to url (ws://host/v1/device, or an http(s) base URL, see
// Endpoints), offers the meridian.v1 subprotocol with the token and reads the
// server's hello. A refused upgrade is a *HandshakeError; a close before
// hello (for example 1013 rate_limited) a *CloseError.
func Dial(ctx context.Context, url string, o DialOptions) (*Conn, *wire.Hello, error) {
	o = dialDefaults(o)
	wsURL, _, err := Endpoints(url)
	if err != nil {
		return nil, nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	nc, br, err := upgrade(dctx, wsURL, o)
	if err != nil {
		return nil, nil, err
	}
	c := newConn(nc, br, o)
	hello, err := c.awaitHello(ctx, o.Timeout)
	if err != nil {
		return nil, nil, err
	}
	return c, hello, nil
}

// dialDefaults fills the zero fields of o with their defaults.
func dialDefaults(o DialOptions) DialOptions {
	if o.Timeout <= 0 {
		o.Timeout = DefaultDialTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.MaxServerFrame <= 0 {
		o.MaxServerFrame = DefaultMaxServerFrame
	}
	if o.Rand == nil {
		o.Rand = rand.Uint32
	}
	return o
}

// upgrade connects and performs the WebSocket handshake within dctx. A
// refused upgrade is a *HandshakeError carrying the server's Retry-After.
func upgrade(dctx context.Context, wsURL string, o DialOptions) (net.Conn, *bufio.Reader, error) {
	var retryAfter time.Duration
	dialer := ws.Dialer{
		Timeout:        o.Timeout,
		Protocols:      []string{wire.Subprotocol},
		Header:         ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + o.Token}}),
		ReadBufferSize: 1024,
		OnStatusError: func(_ int, _ []byte, resp io.Reader) {
			retryAfter = parseRetryAfter(resp)
		},
	}
	nc, br, _, err := dialer.Dial(dctx, wsURL)
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			return nil, nil, &HandshakeError{Status: int(se), RetryAfter: retryAfter}
		}
		return nil, nil, fmt.Errorf("meridian: dial %s: %w", wsURL, err)
	}
	return nc, br, nil
}

// newConn wraps an upgraded connection. br is the handshake's reader (nil
// when it buffered nothing); it goes back to its pool.
func newConn(nc net.Conn, br *bufio.Reader, o DialOptions) *Conn {
	c := &Conn{nc: nc, opt: o, maxFrame: o.MaxServerFrame, rbuf: make([]byte, 0, 512)}
	if br != nil {
		// Bytes the handshake reader buffered (often the hello) come first.
		if n := br.Buffered(); n > 0 {
			p, _ := br.Peek(n)
			c.rbuf = append(c.rbuf, p...)
		}
		ws.PutReader(br)
	}
	return c
}

// awaitHello reads the server's hello, waiting at most timeout. On any
// error the socket is closed.
func (c *Conn) awaitHello(ctx context.Context, timeout time.Duration) (*wire.Hello, error) {
	nc := c.nc
	// The first data frame is hello (docs/protocol.md 1). A cancelled ctx
	// ends the wait: the past deadline wakes the read.
	deadline := time.Now().Add(timeout)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var hello *wire.Hello
	for hello == nil {
		if err := ctx.Err(); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("meridian: waiting for hello: %w", err)
		}
		if !time.Now().Before(deadline) {
			_ = nc.Close()
			return nil, ErrNoHello
		}
		err := c.Poll(deadline, func(typ string, p []byte) error {
			if typ != wire.TypeHello {
				return fmt.Errorf("%w: first frame is %q", ErrBadHello, typ)
			}
			var h wire.Hello
			if _, err := h.UnmarshalMsg(p); err != nil {
				return fmt.Errorf("%w: %w", ErrBadHello, err)
			}
			hello = &h
			// Frames after hello (an error and a close, say) stay buffered
			// for the caller's first Poll.
			return errStopPoll
		})
		if err != nil {
			_ = nc.Close()
			return nil, err
		}
	}
	return hello, nil
}

// WriteMessage sends p as one masked binary frame (RFC 6455 5.3). p is
// normally an encoded batch or result; the bytes are not checked, which is
// what lets a test send a malformed frame on purpose.
func (c *Conn) WriteMessage(p []byte) error { return c.write(ws.OpBinary, p) }

// Close sends a close frame with code and reason and closes the socket.
// Acks for batches still being committed are lost (docs/protocol.md 6).
func (c *Conn) Close(code int, reason string) error {
	err := c.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), reason))
	return errors.Join(err, c.nc.Close())
}

// Abort drops the TCP connection without a close frame, as a lost network
// would; the server sees the connection end without a close (1006).
func (c *Conn) Abort() error { return c.nc.Close() }

func (c *Conn) write(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var bp *[]byte
	if c.opt.WriteBuffers != nil {
		bp = c.opt.WriteBuffers.Get().(*[]byte)
	} else {
		bp = &c.wbuf
	}
	b := appendFrame((*bp)[:0], op, payload, c.opt.Rand())
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.opt.WriteTimeout))
	_, err := c.nc.Write(b)
	if cap(b) <= 64<<10 { // a rare big frame does not pin its buffer
		*bp = b
	} else {
		*bp = nil
	}
	if c.opt.WriteBuffers != nil && *bp != nil {
		c.opt.WriteBuffers.Put(bp)
	}
	if err != nil {
		return fmt.Errorf("meridian: write: %w", err)
	}
	return nil
}

func appendFrame(b []byte, op ws.OpCode, payload []byte, mask uint32) []byte {
	b = append(b, 0x80|byte(op))
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], mask)
	b = append(b, m[:]...)
	start := len(b)
	b = append(b, payload...)
	ws.Cipher(b[start:], m, 0)
	return b
}

// Poll hands each complete data message to fn with its "type", answering
// pings itself. Messages already buffered are handled without reading;
// otherwise it reads once, until deadline. A deadline that passes is not an
// error: Poll returns nil so the caller can do its timed work. The end of
// the connection is a *CloseError; an error from fn is returned as is.
// Messages that are not MessagePack maps with a "type" are passed with
// typ "" (the caller decides whether that matters).
func (c *Conn) Poll(deadline time.Time, fn func(typ string, msg []byte) error) error {
	if n, err := c.frames(fn); err != nil || n > 0 {
		return err
	}
	if len(c.rbuf) == cap(c.rbuf) {
		nb := make([]byte, len(c.rbuf), max(2*cap(c.rbuf), 512))
		copy(nb, c.rbuf)
		c.rbuf = nb
	}
	_ = c.nc.SetReadDeadline(deadline)
	n, rerr := c.nc.Read(c.rbuf[len(c.rbuf):cap(c.rbuf)])
	c.rbuf = c.rbuf[:len(c.rbuf)+n]
	if _, err := c.frames(fn); err != nil {
		return err
	}
	// Give back a buffer a big frame made large: idle connections stay small.
	if len(c.rbuf) == 0 && cap(c.rbuf) > 4096 {
		c.rbuf = make([]byte, 0, 512)
	}
	if rerr != nil {
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			return nil
		}
		return &CloseError{Code: CloseLost, Err: rerr}
	}
	return nil
}

// frames handles the complete frames at the front of rbuf and returns how
// many it handled.
func (c *Conn) frames(fn func(string, []byte) error) (int, error) {
	handled := 0
	for {
		op, fin, payload, size, need := parseFrame(c.rbuf, c.maxFrame)
		if need > c.maxFrame {
			_ = c.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(wire.CloseTooBig), "frame too big"))
			return handled, &CloseError{Code: wire.CloseTooBig, Reason: "server frame over the device's limit"}
		}
		if size == 0 {
			if need > cap(c.rbuf) {
				nb := make([]byte, len(c.rbuf), need)
				copy(nb, c.rbuf)
				c.rbuf = nb
			}
			return handled, nil
		}
		handled++
		c.lastFrame = time.Now()
		err := c.control(op, fin, payload, fn)
		rest := copy(c.rbuf, c.rbuf[size:])
		c.rbuf = c.rbuf[:rest]
		if errors.Is(err, errStopPoll) {
			return handled, nil
		}
		if err != nil {
			return handled, err
		}
	}
}

// parseFrame decodes the frame at the start of b. size is the bytes it
// occupies (0: incomplete), need the total bytes needed to complete it
// (more than maxFrame: the frame is over the limit).
func parseFrame(b []byte, maxFrame int) (op ws.OpCode, fin bool, payload []byte, size, need int) {
	if len(b) < 2 {
		return 0, false, nil, 0, 2
	}
	fin = b[0]&0x80 != 0
	op = ws.OpCode(b[0] & 0x0f)
	masked := b[1]&0x80 != 0
	hl := 2
	l := uint64(b[1] & 0x7f)
	switch l {
	case 126:
		hl = 4
		if len(b) < hl {
			return 0, false, nil, 0, hl
		}
		l = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		hl = 10
		if len(b) < hl {
			return 0, false, nil, 0, hl
		}
		l = binary.BigEndian.Uint64(b[2:])
	}
	if masked {
		hl += 4
	}
	if l > uint64(maxFrame) {
		return 0, false, nil, 0, maxFrame + 1
	}
	total := hl + int(l)
	if len(b) < total {
		return 0, false, nil, 0, total
	}
	payload = b[hl:total]
	if masked { // servers must not mask (RFC 6455 5.1); tolerate it anyway
		var m [4]byte
		copy(m[:], b[hl-4:hl])
		ws.Cipher(payload, m, 0)
	}
	return op, fin, payload, total, total
}

// control answers control frames and passes data frames to fn.
func (c *Conn) control(op ws.OpCode, fin bool, payload []byte, fn func(string, []byte) error) error {
	switch op {
	case ws.OpPing:
		if err := c.write(ws.OpPong, payload); err != nil {
			return &CloseError{Code: CloseLost, Err: err}
		}
		return nil
	case ws.OpPong:
		return nil
	case ws.OpClose:
		ce := &CloseError{Code: 1005} // no status received
		if len(payload) >= 2 {
			ce.Code = int(binary.BigEndian.Uint16(payload))
			ce.Reason = string(payload[2:])
		}
		ce.ErrorCode = c.lastErr.Code
		// Echo the close (RFC 6455 5.5.1) and go.
		_ = c.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		return ce
	case ws.OpBinary:
		if !fin {
			// The server never fragments (docs/protocol.md 1).
			return &CloseError{Code: wire.CloseUnsupported, Reason: "fragmented server frame"}
		}
		typ, _ := wire.TypeOf(payload)
		if typ == wire.TypeError {
			_, _ = c.lastErr.UnmarshalMsg(payload)
		}
		return fn(typ, payload)
	default:
		_ = c.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(wire.CloseProtocol), "unexpected opcode"))
		return &CloseError{Code: wire.CloseProtocol, Reason: fmt.Sprintf("unexpected opcode %d", op)}
	}
}

// parseRetryAfter reads the Retry-After seconds of a refused upgrade's
// response (0 when absent or not a number of seconds).
func parseRetryAfter(resp io.Reader) time.Duration {
	r, err := http.ReadResponse(bufio.NewReader(io.LimitReader(resp, 8<<10)), nil)
	if err != nil {
		return 0
	}
	_ = r.Body.Close()
	secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || secs < 0 {
		return 0
	}
	return time.Duration(secs) * time.Second
}

// readAll reads a bounded HTTP body.
func readAll(r io.Reader, limit int) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, int64(limit)))
}
