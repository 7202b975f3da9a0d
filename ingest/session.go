package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// Subprotocol is the WebSocket subprotocol of device protocol v1.
const Subprotocol = "meridian.v1"

// session is one device WebSocket connection.
//
// Concurrency: the read loop (serveWS's goroutine) is the only reader of
// conn and owns lastSeq; the write loop is the only writer. Everything else
// talks to the write loop through out (acks, commands: bounded), ctrl (pongs)
// and close(). Every exit goes through close(), which runs once.
type session struct {
	srv    *Server
	id     string
	device string
	conn   net.Conn
	br     *bufio.Reader
	remote string

	// out carries hello and acks to the write loop. Acks never block: a
	// batch takes a slot in inflight before it is submitted and gives it back
	// when its ack has been written, and out has room for every slot.
	out      chan outFrame
	inflight chan struct{}
	cmds     chan []byte // command frames, bounded; a full queue refuses
	ctrl     chan []byte // pong payloads; at most one pending

	ctx    context.Context // ends when the session closes (unblocks submit)
	cancel context.CancelFunc

	closeOnce sync.Once
	closing   chan struct{}
	readDone  chan struct{} // closed when the read loop has returned
	closeCode int
	errCode   string
	closeMsg  string

	readStop atomic.Bool // graceful drain: read loop exits without closing
	lastSeq  uint64
	readings atomic.Int64
	started  time.Time
}

type outFrame struct {
	data  []byte
	isAck bool
}

// commandSlots bounds commands queued to one device.
const commandSlots = 16

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.m.handshakes.WithLabelValues("rejected").Inc()
		http.Error(w, "server shutting down, retry later", http.StatusServiceUnavailable)
		return
	}
	// Global caps first: they cost nothing and protect everything else.
	if s.conns.Load() >= int64(s.cfg.MaxConnections) {
		s.m.handshakes.WithLabelValues("capacity").Inc()
		w.Header().Set("Retry-After", "30")
		http.Error(w, "server at its connection limit (ingest.max_connections), retry later", http.StatusServiceUnavailable)
		return
	}
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.m.handshakes.WithLabelValues("capacity").Inc()
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many handshakes in progress (ingest.max_handshakes), retry later", http.StatusServiceUnavailable)
		return
	}
	handshaking := true
	endHandshake := func() {
		if handshaking {
			handshaking = false
			<-s.handshakes
		}
	}
	defer endHandshake()
	device, status, err := s.authenticate(r)
	if err != nil {
		s.m.handshakes.WithLabelValues("unauthorized").Inc()
		http.Error(w, err.Error(), status)
		return
	}
	// Over the per-device connection rate the device is told so with 1013
	// after the upgrade (docs/protocol.md): firmware that handles close codes
	// backs off, and the check costs no database work.
	rateLimited := s.opts.Limits != nil && !s.opts.Limits.AllowConnect(device)
	if rateLimited {
		s.m.handshakes.WithLabelValues("rate_limited").Inc()
		conn, _, _, err := (&ws.HTTPUpgrader{Timeout: s.cfg.HandshakeTimeout, Protocol: func(p string) bool { return p == Subprotocol }}).Upgrade(r, w)
		if err != nil && conn != nil {
			_ = conn.Close() // the rejection is already written; see below
		}
		if err == nil {
			s.m.closes.WithLabelValues(strconv.Itoa(wire.CloseTryAgainLater)).Inc()
			rejectUpgraded(conn, s.cfg.WriteTimeout, wire.CloseTryAgainLater, "rate_limited", "too many connection attempts for this device, retry later")
		}
		return
	}
	// Storage is checked before the upgrade: if it is down the device gets a
	// plain 503 and retries. (The watermark is read again for hello below.)
	sessID := newID()
	hctx, cancel := context.WithTimeout(r.Context(), s.cfg.HandshakeTimeout)
	_, err = s.store.Watermark(hctx, device)
	cancel()
	if err != nil {
		s.m.handshakes.WithLabelValues("error").Inc()
		s.log.Warn("device hello", "device", device, "err", err)
		http.Error(w, "storage unavailable, retry later", http.StatusServiceUnavailable)
		return
	}
	up := ws.HTTPUpgrader{
		Timeout:  s.cfg.HandshakeTimeout,
		Protocol: func(p string) bool { return p == Subprotocol },
	}
	conn, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		// gobwas hijacks before validating and has already written the
		// rejection (400/426...) to the hijacked connection: close it, or
		// it stays open with nobody reading it (a socket leak per bad
		// upgrade, and a hung keep-alive client).
		if conn != nil {
			_ = conn.Close()
		}
		s.m.handshakes.WithLabelValues("error").Inc()
		s.log.Debug("device upgrade failed", "device", device, "err", err)
		return
	}
	s.m.handshakes.WithLabelValues("ok").Inc()

	// Bytes the HTTP server buffered past the handshake belong to the first
	// frames; keep them, then read the socket through a small buffer (frame
	// headers are tiny; payloads are read with io.ReadFull straight through).
	var src io.Reader = conn
	if rw != nil && rw.Reader.Buffered() > 0 {
		pre, _ := rw.Reader.Peek(rw.Reader.Buffered())
		src = io.MultiReader(bytes.NewReader(bytes.Clone(pre)), conn)
	}
	ctx, stop := context.WithCancel(context.Background())
	slots := s.cfg.SessionQueue
	sess := &session{
		srv:      s,
		id:       sessID,
		device:   device,
		conn:     conn,
		br:       bufio.NewReaderSize(src, 512),
		remote:   r.RemoteAddr,
		out:      make(chan outFrame, slots+1), // +1: hello
		cmds:     make(chan []byte, commandSlots),
		inflight: make(chan struct{}, slots),
		ctrl:     make(chan []byte, 1),
		ctx:      ctx,
		cancel:   stop,
		closing:  make(chan struct{}),
		readDone: make(chan struct{}),
		started:  s.now(),
	}
	old, ok := s.register(sess)
	if !ok {
		rejectUpgraded(conn, s.cfg.WriteTimeout, wire.CloseGoingAway, "", "server shutting down")
		stop()
		return
	}
	s.conns.Add(1)
	s.m.connections.Inc()
	// The session runs on a goroutine of its own and this handler returns:
	// net/http then drops its per-connection state (request, response
	// writer, its 4 KiB read and write buffers) and the handler goroutine's
	// stack, which grew during the handshake. That halves the memory of an
	// idle connection (docs/benchmarks.md, "Connections"). The handshake
	// slot passes to the session, which frees it once hello is queued.
	handshaking = false
	go s.runSession(sess, old)
}

// runSession is a device session's life after the upgrade: hello, the read
// loop on this goroutine and the write loop on another, then cleanup.
func (s *Server) runSession(sess *session, old *session) {
	device, sessID := sess.device, sess.id
	defer func() {
		sess.cancel()
		s.conns.Add(-1)
		s.m.connections.Dec()
		s.recordClose(sess)
		if s.unregister(sess) && s.opts.Presence != nil {
			s.opts.Presence(telemetry.Presence{Device: sess.device, Online: false, At: s.now().UnixMilli()})
		}
	}()
	s.recordOpen(sess)
	if s.opts.Presence != nil {
		s.opts.Presence(telemetry.Presence{Device: device, Online: true, At: s.now().UnixMilli()})
	}
	s.log.Debug("device connected", "device", device, "session", sessID, "remote", sess.remote)

	// hello.acked must cover every batch an earlier session of this device
	// (or an HTTP post) already put into the pipeline: otherwise a device
	// that lost its counter and restarts at acked+1 would have new readings
	// judged duplicates. So: let a taken-over session's read loop finish,
	// wait until the device has nothing in the pipeline, then read the
	// watermark. hello is queued before the write loop starts, so it is the
	// first data frame even if a command arrives meanwhile.
	hctx, cancel := context.WithTimeout(sess.ctx, s.cfg.HandshakeTimeout)
	hello, err := s.helloAfterIdle(hctx, old, device, sessID)
	cancel()
	if err == nil {
		hb, _ := hello.MarshalMsg(nil)
		sess.out <- outFrame{data: hb}
	}
	<-s.handshakes // this handshake is over
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		sess.writeLoop()
	}()
	if err != nil {
		s.log.Warn("device hello", "device", device, "session", sessID, "err", err)
		sess.close(wire.CloseTryAgainLater, "unavailable", "storage unavailable, retry later")
		close(sess.readDone)
	} else {
		sess.readLoop()
	}
	<-writerDone
}

// rejectUpgraded sends an optional error frame and a close frame on a
// freshly upgraded connection that will not become a session, then closes it.
func rejectUpgraded(conn net.Conn, timeout time.Duration, code int, errCode, msg string) {
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
	if errCode != "" {
		data, _ := (&wire.Error{Type: wire.TypeError, Code: errCode, Message: msg}).MarshalMsg(nil)
		_ = ws.WriteFrame(conn, ws.NewBinaryFrame(data))
	}
	_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(code), msg)))
	_ = conn.Close()
}

// close asks the write loop to send an error frame (for protocol and policy
// reasons), the close frame, and close the socket. First call wins.
func (sess *session) close(code int, errCode, msg string) {
	sess.closeOnce.Do(func() {
		sess.closeCode, sess.errCode, sess.closeMsg = code, errCode, msg
		sess.srv.m.closes.WithLabelValues(strconv.Itoa(code)).Inc()
		close(sess.closing)
		sess.cancel()
		// Unblock a read in progress; the write loop finishes the close.
		_ = sess.conn.SetReadDeadline(time.Now())
	})
}

// stopReading makes the read loop exit without closing, so in-flight
// batches can still be acked during a graceful drain.
func (sess *session) stopReading() {
	sess.readStop.Store(true)
	_ = sess.conn.SetReadDeadline(time.Now())
}

// helloAfterIdle waits for old's read loop (if a takeover happened) and for
// the device's pipeline items to finish, then builds hello.
func (s *Server) helloAfterIdle(ctx context.Context, old *session, device, sessID string) (wire.Hello, error) {
	if old != nil {
		select {
		case <-old.readDone:
		case <-ctx.Done():
			return wire.Hello{}, fmt.Errorf("wait for the previous session: %w", ctx.Err())
		}
	}
	if err := s.pipe.waitIdle(ctx, device); err != nil {
		return wire.Hello{}, fmt.Errorf("wait for in-flight batches: %w", err)
	}
	return s.hello(ctx, device, sessID)
}

func (sess *session) readLoop() {
	defer close(sess.readDone)
	s := sess.srv
	idle := 2 * s.cfg.Heartbeat
	for {
		if sess.readStop.Load() {
			return
		}
		payload, err := sess.readMessage(idle)
		if err != nil {
			sess.readFailed(err)
			return
		}
		if payload == nil {
			continue // control frame handled
		}
		if err := sess.safeHandle(payload); err != nil {
			var pe *wire.ProtocolError
			if errors.As(err, &pe) {
				sess.close(pe.Close, pe.Code, pe.Message)
			}
			return
		}
	}
}

// errClientClosed: the device sent a close frame.
var errClientClosed = errors.New("client closed")

func (sess *session) readFailed(err error) {
	var pe *wire.ProtocolError
	switch {
	case sess.readStop.Load():
		// graceful drain: Shutdown closes with 1001 after the acks.
	case errors.As(err, &pe):
		sess.close(pe.Close, pe.Code, pe.Message)
	case errors.Is(err, errClientClosed):
		sess.close(1000, "", "")
	case errors.Is(err, os.ErrDeadlineExceeded):
		select {
		case <-sess.closing: // close() set the deadline
		default:
			sess.close(wire.CloseGoingAway, "timeout", "no frame or pong for two heartbeat intervals")
		}
	default:
		sess.close(1006, "", "connection lost") // not sent: the socket is gone
	}
}

// readMessage reads one complete data message (reassembling fragments) of at
// most MaxFrame bytes. Control frames are answered and yield (nil, nil).
func (sess *session) readMessage(idle time.Duration) ([]byte, error) {
	max := int64(sess.srv.cfg.MaxFrame)
	var msg []byte
	for {
		// Every frame, control frames and fragments included, restarts the
		// idle clock: "no frame or pong for two heartbeat intervals".
		if sess.readStop.Load() {
			return nil, os.ErrDeadlineExceeded
		}
		_ = sess.conn.SetReadDeadline(time.Now().Add(idle))
		h, err := ws.ReadHeader(sess.br)
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthUnexpected) || errors.Is(err, ws.ErrHeaderLengthMSB) {
				return nil, wire.Protocol("bad_frame", "invalid WebSocket frame header")
			}
			return nil, err
		}
		if !h.Masked {
			return nil, wire.Protocol("unmasked_frame", "client frames must be masked (RFC 6455 5.1)")
		}
		if h.Rsv != 0 {
			return nil, wire.Protocol("bad_frame", "reserved bits set without a negotiated extension")
		}
		if h.OpCode.IsControl() {
			if h.Length > 125 || !h.Fin {
				return nil, wire.Protocol("bad_frame", "invalid control frame")
			}
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(sess.br, p); err != nil {
				return nil, err
			}
			ws.Cipher(p, h.Mask, 0)
			switch h.OpCode {
			case ws.OpPing:
				select {
				case sess.ctrl <- p:
				default: // a pong is already pending; one answers both
				}
			case ws.OpClose:
				return nil, errClientClosed
			}
			if msg == nil {
				return nil, nil
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpContinuation && msg == nil:
			return nil, wire.Protocol("bad_frame", "continuation frame without a message to continue")
		case h.OpCode != ws.OpContinuation && msg != nil:
			return nil, wire.Protocol("bad_frame", "new message before the previous one's final fragment")
		case h.OpCode == ws.OpText:
			return nil, &wire.ProtocolError{Close: wire.CloseUnsupported, Code: "text_frame", Message: "text frames are not supported: send binary MessagePack"}
		case h.OpCode != ws.OpBinary && h.OpCode != ws.OpContinuation:
			return nil, wire.Protocol("bad_frame", "unknown opcode %d", h.OpCode)
		}
		if int64(len(msg))+h.Length > max {
			return nil, &wire.ProtocolError{Close: wire.CloseTooBig, Code: "frame_too_big",
				Message: fmt.Sprintf("message exceeds max_frame (%d bytes)", max)}
		}
		start := len(msg)
		if msg == nil {
			msg = make([]byte, 0, h.Length)
		}
		msg = append(msg, make([]byte, h.Length)...)
		if _, err := io.ReadFull(sess.br, msg[start:]); err != nil {
			return nil, err
		}
		ws.Cipher(msg[start:], h.Mask, 0)
		if h.Fin {
			return msg, nil
		}
	}
}

// safeHandle turns a panic while handling one frame into a 1011 close of
// this session only: one device's bad luck never takes the process down.
func (sess *session) safeHandle(payload []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			sess.srv.log.Error("panic handling device frame", "device", sess.device, "session", sess.id, "panic", r)
			err = &wire.ProtocolError{Close: wire.CloseInternal, Code: "internal", Message: "internal error"}
		}
	}()
	return sess.handle(payload)
}

// handle processes one data message.
func (sess *session) handle(payload []byte) error {
	s := sess.srv
	m, err := wire.Decode(payload)
	if err != nil {
		s.m.frames.WithLabelValues("invalid").Inc()
		return err
	}
	switch msg := m.(type) {
	case *wire.Result:
		s.m.frames.WithLabelValues(wire.TypeResult).Inc()
		if s.opts.Results != nil {
			payload := []byte(msg.Payload)
			if len(payload) == 0 {
				payload = []byte{0xc0}
			}
			s.opts.Results(telemetry.CommandResult{Device: sess.device, ID: msg.ID, OK: msg.OK, Payload: bytes.Clone(payload)})
		}
		return nil
	case *wire.Batch:
		s.m.frames.WithLabelValues(wire.TypeBatch).Inc()
		if err := wire.CheckBatch(msg, s.limits()); err != nil {
			return err
		}
		if msg.Seq <= sess.lastSeq {
			return wire.Protocol("seq_not_increasing", "seq %d is not greater than the previous seq %d on this connection", msg.Seq, sess.lastSeq)
		}
		sess.lastSeq = msg.Seq
		if s.opts.Limits != nil && !s.opts.Limits.AllowReadings(sess.device, len(msg.Readings)) {
			return &wire.ProtocolError{Close: wire.CloseTryAgainLater, Code: "rate_limited", Message: "readings per second over this device's limit"}
		}
		batch, ack := s.accept(sess.device, msg)
		sess.readings.Add(int64(len(batch.Readings)))
		// Take an in-flight slot (bounded per session), then queue budget.
		select {
		case sess.inflight <- struct{}{}:
		case <-sess.ctx.Done():
			return sess.ctx.Err()
		}
		err := s.pipe.submit(sess.ctx, batch, func(o telemetry.Outcome, err error) {
			if err != nil {
				<-sess.inflight // never acked: the device resends after reconnect
				if pe := (*wire.ProtocolError)(nil); errors.As(err, &pe) {
					sess.close(pe.Close, pe.Code, pe.Message) // refused by the store
				}
				return
			}
			a := ack
			if o.Duplicate {
				a.Duplicate, a.Accepted, a.Rejected, a.Errors = true, 0, 0, []string{}
			}
			data, _ := a.MarshalMsg(nil)
			s.m.acks.Inc()
			// Never blocks: out has a slot for every inflight token.
			sess.out <- outFrame{data: data, isAck: true}
		})
		if err != nil {
			<-sess.inflight
			if errors.Is(err, errShuttingDown) {
				return nil // not acked; the drain closes the session with 1001
			}
			return err
		}
		return nil
	}
	return nil
}

func (sess *session) writeLoop() {
	s := sess.srv
	ping := time.NewTicker(s.cfg.Heartbeat)
	defer ping.Stop()
	defer sess.conn.Close()
	// Header and payload go out in one write (ws.WriteFrame would make two
	// syscalls per ack: they were the largest cost in the ingest profile).
	// The buffer lives as long as the write loop and is sized by the largest
	// frame written, which is small (acks, commands up to max_frame).
	var buf bytes.Buffer
	write := func(f ws.Frame) error {
		buf.Reset()
		if err := ws.WriteHeader(&buf, f.Header); err != nil {
			return err
		}
		buf.Write(f.Payload)
		_ = sess.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, err := sess.conn.Write(buf.Bytes())
		if buf.Cap() > 4<<10 {
			buf = bytes.Buffer{} // a rare large command must not pin memory per session
		}
		return err
	}
	for {
		select {
		case f := <-sess.out:
			err := write(ws.NewBinaryFrame(f.data))
			if f.isAck {
				<-sess.inflight
			}
			if err != nil {
				sess.close(1006, "", "write failed")
				sess.drainOut()
				return
			}
		case c := <-sess.cmds:
			if err := write(ws.NewBinaryFrame(c)); err != nil {
				sess.close(1006, "", "write failed")
				sess.drainOut()
				return
			}
		case p := <-sess.ctrl:
			if err := write(ws.NewPongFrame(p)); err != nil {
				sess.close(1006, "", "write failed")
				sess.drainOut()
				return
			}
		case <-ping.C:
			if err := write(ws.NewPingFrame(nil)); err != nil {
				sess.close(1006, "", "write failed")
				sess.drainOut()
				return
			}
		case <-sess.closing:
			sess.finishClose(write)
			return
		}
	}
}

// finishClose writes what is still queued (acks of committed batches), then
// the error frame and the close frame. 1006 means the socket is already gone.
func (sess *session) finishClose(write func(ws.Frame) error) {
	if sess.closeCode == 1006 {
		sess.drainOut()
		return
	}
	for {
		select {
		case f := <-sess.out:
			_ = write(ws.NewBinaryFrame(f.data))
			if f.isAck {
				<-sess.inflight
			}
			continue
		default:
		}
		break
	}
	if sess.errCode != "" && sess.closeCode != 1000 {
		e := wire.Error{Type: wire.TypeError, Code: sess.errCode, Message: sess.closeMsg}
		data, _ := e.MarshalMsg(nil)
		_ = write(ws.NewBinaryFrame(data))
	}
	reason := sess.closeMsg
	if len(reason) > 120 { // a close reason must fit a 125-byte control frame
		reason = reason[:120]
	}
	_ = write(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(sess.closeCode), reason)))
}

// drainOut releases in-flight slots of acks that can no longer be written.
// Acks arriving later find room in out (it has a slot per token) and are
// simply never read; the session's memory goes with it.
func (sess *session) drainOut() {
	for {
		select {
		case f := <-sess.out:
			if f.isAck {
				<-sess.inflight
			}
		default:
			return
		}
	}
}

// sendCommand queues a command frame; false if the session's queue is full
// or it is closing.
func (sess *session) sendCommand(data []byte) bool {
	select {
	case <-sess.closing:
		return false
	default:
	}
	select {
	case sess.cmds <- data:
		return true
	default:
		return false
	}
}

func (s *Server) recordOpen(sess *session) {
	if s.opts.Sessions == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.opts.Sessions.SessionOpened(ctx, sess.info()); err != nil {
		s.log.Warn("record session open", "device", sess.device, "session", sess.id, "err", err)
	}
}

func (s *Server) recordClose(sess *session) {
	if s.opts.Sessions == nil {
		return
	}
	info := sess.info()
	info.Ended = s.now()
	info.CloseReason = fmt.Sprintf("%d %s", sess.closeCode, sess.closeMsg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.opts.Sessions.SessionClosed(ctx, info); err != nil {
		s.log.Warn("record session close", "device", sess.device, "session", sess.id, "err", err)
	}
}

func (sess *session) info() SessionInfo {
	return SessionInfo{ID: sess.id, Device: sess.device, Node: sess.srv.cfg.Node, RemoteAddr: sess.remote,
		Transport: "ws", Started: sess.started, Readings: sess.readings.Load()}
}
