package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
	"github.com/meridian-iot/meridian/ingest/wsconn"
)

// session is device protocol v1 on top of one wsconn.Conn, which owns the
// socket: framing, pings, the idle deadline, the single writer and the close
// path. An idle session has no goroutine: the core runs Message on a reader
// goroutine only while bytes arrive, and writes acks and commands on a
// writer goroutine only while something is queued.
//
// Concurrency: Message is called by one reader at a time and owns lastSeq.
// Acks come from pipeline writers and commands from the bridge; both only
// queue frames on the Conn. Every server-initiated end goes through close,
// which stops reading, lets acks of batches already in the pipeline be
// queued, and only then closes the Conn (docs/protocol.md, "Closing").
type session struct {
	srv    *Server
	id     string
	device string
	remote string
	conn   *wsconn.Conn

	// mu guards inflight, slotFree, stop and opened. An idle session is
	// mostly this struct (docs/benchmarks.md, "Connections"), so what it
	// waits on is made only when something waits: no channel or context
	// per session otherwise.
	mu sync.Mutex
	// inflight counts batches read and not yet acked (SessionQueue): a slot
	// is taken before submit and given back once the ack is written. With
	// every slot taken Message waits on slotFree, so reading pauses and TCP
	// pushes back.
	inflight int32
	cmds     atomic.Int32 // commands queued and not yet written
	slotFree chan struct{}
	// stop fires when the session starts closing: it ends ctx(), which
	// unblocks a submit waiting for queue budget and pacing.
	stop latch
	// opened fires once the session-open record was handed over: the close
	// record waits for it, so a close can never reach the session log ahead
	// of its open (a row left open forever).
	opened latch
	// helloSent is set once hello is queued: before it SendCommand answers
	// offline, so hello is always the first data frame (docs/protocol.md)
	// and a command is never written to a session that then fails its hello.
	helloSent atomic.Bool
	// presenceMu orders this session's online report before its offline
	// one: online is reported after hello only if cleanup has not begun.
	presenceMu sync.Mutex
	cleanedUp  bool
	registered bool

	pending atomic.Pointer[wsconn.Error] // close requested; waits for acks

	lastSeq  uint64
	readings atomic.Int64
	started  int64 // unix nanos: a time.Time would take 24 bytes
}

// latch is a one-shot event whose channel is made only once somebody waits
// for it. Its owner's mutex guards it.
type latch struct {
	ch    chan struct{}
	fired bool
}

// fire reports whether this call fired it.
func (l *latch) fire() bool {
	if l.fired {
		return false
	}
	l.fired = true
	if l.ch != nil {
		close(l.ch)
	}
	return true
}

func (l *latch) wait() <-chan struct{} {
	if l.ch == nil {
		l.ch = make(chan struct{})
		if l.fired {
			close(l.ch)
		}
	}
	return l.ch
}

// stopCtx is a session as the context of its submits and pacing: done once
// the session starts closing. (context.WithCancel per session would keep
// ~100 bytes and, once waited on, a channel on every idle session.)
type stopCtx session

func (c *stopCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *stopCtx) Value(any) any               { return nil }

func (c *stopCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stop.wait()
}

func (c *stopCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop.fired {
		return context.Canceled
	}
	return nil
}

// ctx ends when the session starts closing.
func (sess *session) ctx() context.Context { return (*stopCtx)(sess) }

// stopping fires the stop latch; it reports whether this call did.
func (sess *session) stopping() bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.stop.fire()
}

// markOpened lets a waiting close record go ahead.
func (sess *session) markOpened() {
	sess.mu.Lock()
	sess.opened.fire()
	sess.mu.Unlock()
}

// acquire takes an in-flight slot, waiting while all SessionQueue are
// taken, until the session stops.
func (sess *session) acquire() error {
	for {
		sess.mu.Lock()
		if sess.stop.fired {
			sess.mu.Unlock()
			return context.Canceled
		}
		if int(sess.inflight) < sess.srv.cfg.SessionQueue {
			sess.inflight++
			sess.mu.Unlock()
			return nil
		}
		if sess.slotFree == nil {
			sess.slotFree = make(chan struct{})
		}
		free, stop := sess.slotFree, sess.stop.wait()
		sess.mu.Unlock()
		select {
		case <-free:
		case <-stop:
		}
	}
}

// inFlight is the number of batches read and not yet acked.
func (sess *session) inFlight() int {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return int(sess.inflight)
}

// commandSlots bounds commands queued to one device.
const commandSlots = 16

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	release, ok := s.admitHandshake(w, r)
	if !ok {
		return
	}
	handshaking := true
	endHandshake := func() {
		if handshaking {
			handshaking = false
			release()
		}
	}
	defer endHandshake()
	since := s.pipe.markAll() // before the token lookup, which may read the watermark too
	device, acked, fresh, status, err := s.authenticateAcked(r)
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
		s.rejectRateLimited(w, r)
		return
	}
	sessID := newID()
	pre, ok := s.preRead(w, r, device, since, acked, fresh)
	if !ok {
		return
	}
	conn, buffered, ok := s.upgradeDevice(w, r, device)
	if !ok {
		return
	}
	sess := s.newSession(conn, buffered, sessID, device, r.RemoteAddr)
	old, ok := s.register(sess)
	if !ok {
		sess.close(wsconn.Error{Code: wire.CloseGoingAway, Kind: "shutdown", Reason: "server shutting down"})
		return
	}
	s.conns.Add(1)
	s.m.connections.Inc()
	// hello needs the old session's reads finished and a watermark read, so
	// it is prepared on a goroutine that ends once the session is running;
	// this handler returns now and net/http drops its per-connection state.
	// The handshake slot passes to that goroutine.
	handshaking = false
	go s.startSession(sess, old, pre, release)
}

// admitHandshake answers 503 while draining or at a capacity limit, and
// otherwise returns the handshake slot's release. Global caps come first:
// they cost nothing and protect everything else.
func (s *Server) admitHandshake(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	if s.draining.Load() {
		s.m.handshakes.WithLabelValues("rejected").Inc()
		http.Error(w, "server shutting down, retry later", http.StatusServiceUnavailable)
		return nil, false
	}
	if s.conns.Load() >= int64(s.cfg.MaxConnections) {
		s.m.handshakes.WithLabelValues("capacity").Inc()
		w.Header().Set("Retry-After", "30")
		http.Error(w, "server at its connection limit (ingest.max_connections), retry later", http.StatusServiceUnavailable)
		return nil, false
	}
	// A handshake slot, or a short wait for one, or a Retry-After that
	// spreads the storm (admission.go).
	release, retry, ok := s.adm.tryAcquire(r.Context())
	if !ok {
		s.m.handshakes.WithLabelValues("capacity").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
		http.Error(w, "too many handshakes in progress (ingest.max_handshakes), retry later", http.StatusServiceUnavailable)
		return nil, false
	}
	return release, true
}

// rejectRateLimited upgrades and closes at once with 1013, so the device
// reads a close code it can back off on.
func (s *Server) rejectRateLimited(w http.ResponseWriter, r *http.Request) {
	s.m.handshakes.WithLabelValues("rate_limited").Inc()
	conn, _, _, err := (&ws.HTTPUpgrader{Timeout: s.cfg.HandshakeTimeout, Protocol: func(p string) bool { return p == wire.Subprotocol }}).Upgrade(r, w)
	if err != nil && conn != nil {
		_ = conn.Close() // the rejection is already written; see upgradeDevice
	}
	if err == nil {
		s.m.closes.WithLabelValues(strconv.Itoa(wire.CloseTryAgainLater)).Inc()
		rejectUpgraded(conn, s.cfg.WriteTimeout, wire.CloseTryAgainLater, "rate_limited", "too many connection attempts for this device, retry later")
	}
}

// preRead is the watermark read before the upgrade, with the pipeline's
// idle mark taken just before it: hello reuses it when the device had
// nothing submitted since (helloAfterIdle).
type preRead struct {
	acked uint64
	mark  idleMark
}

// preRead is the watermark hello starts from: the one the token lookup
// read (fresh) when none of the device's batches was in flight at any time
// since before that lookup (quietSince), or else one read now
// (readWatermark). The device's idle mark is taken after the check: the
// value is current as of then, and helloAfterIdle checks that the device
// submitted nothing since.
func (s *Server) preRead(w http.ResponseWriter, r *http.Request, device string, since uint64, acked uint64, fresh bool) (preRead, bool) {
	if fresh {
		mark := s.pipe.markIdle(device)
		if mark.ok && s.pipe.quietSince(device, since) {
			return preRead{acked: acked, mark: mark}, true
		}
	}
	return s.readWatermark(w, r, device)
}

// readWatermark reads the device's watermark before the upgrade: if
// storage is down the device gets a plain 503 and retries, and in the
// common case (nothing of the device in the pipeline meanwhile) the value
// read is hello.acked, so a handshake costs one watermark read.
func (s *Server) readWatermark(w http.ResponseWriter, r *http.Request, device string) (preRead, bool) {
	mark := s.pipe.markIdle(device) // before the read: see markIdle
	hctx, cancel := context.WithTimeout(r.Context(), s.cfg.HandshakeTimeout)
	acked, err := s.store.Watermark(hctx, device)
	cancel()
	if err != nil {
		s.m.handshakes.WithLabelValues("error").Inc()
		s.log.Warn("device hello", "device", device, "err", err)
		http.Error(w, "storage unavailable, retry later", http.StatusServiceUnavailable)
		return preRead{}, false
	}
	return preRead{acked: acked, mark: mark}, true
}

// upgradeDevice upgrades to the device subprotocol and returns the socket
// with the bytes the HTTP server buffered past the handshake.
func (s *Server) upgradeDevice(w http.ResponseWriter, r *http.Request, device string) (conn net.Conn, pre []byte, ok bool) {
	up := ws.HTTPUpgrader{
		Timeout:  s.cfg.HandshakeTimeout,
		Protocol: func(p string) bool { return p == wire.Subprotocol },
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
		return nil, nil, false
	}
	s.m.handshakes.WithLabelValues("ok").Inc()

	// Bytes the HTTP server buffered past the handshake belong to the first
	// frames; the core reads them first. The bufio.ReadWriter itself (two
	// 4 KiB buffers) is dropped with this handler.
	if rw != nil && rw.Reader.Buffered() > 0 {
		pre, _ = rw.Reader.Peek(rw.Reader.Buffered())
	}
	return conn, pre, true
}

// newSession builds the session for an upgraded socket and attaches it to
// the connection core.
func (s *Server) newSession(conn net.Conn, pre []byte, sessID, device, remote string) *session {
	sess := &session{
		srv:     s,
		id:      sessID,
		device:  device,
		remote:  remote,
		started: s.now().UnixNano(),
	}
	sess.conn = s.engine().Attach(conn, pre, &s.wsCfg, sess)
	return sess
}

// startSession sends hello and starts the core's reader; it returns as
// soon as the session runs, so an idle session holds no goroutine.
func (s *Server) startSession(sess *session, old *session, pre preRead, release func()) {
	device, sessID := sess.device, sess.id
	s.recordOpen(sess)
	sess.markOpened()

	// hello.acked must cover every batch an earlier session of this device
	// (or an HTTP post) already put into the pipeline: otherwise a device
	// that lost its counter and restarts at acked+1 would have new readings
	// judged duplicates. So: let a taken-over session's reader finish, then
	// use the watermark read before the upgrade if nothing of the device
	// entered the pipeline since, or else wait until the device has nothing
	// in the pipeline and read it again. Commands are refused as offline
	// until hello is queued (helloSent), so hello is the first data frame.
	hctx, cancel := context.WithTimeout(s.closingAll, s.cfg.HandshakeTimeout)
	hello, err := s.helloAfterIdle(hctx, old, pre, device, sessID)
	cancel()
	release() // this handshake is over
	if err != nil {
		s.log.Warn("device hello", "device", device, "session", sessID, "err", err)
		sess.close(wsconn.Error{Code: wire.CloseTryAgainLater, Kind: "unavailable", Reason: "storage unavailable, retry later"})
		return
	}
	hb, _ := hello.MarshalMsg(nil)
	sess.conn.SendData(hb, nil)
	sess.helloSent.Store(true)
	// Online only now: the bridge delivers queued commands on this, and
	// they must follow hello.
	sess.presenceMu.Lock()
	// Only the device's current session, not already closing, reports
	// online: a session taken over while it prepared hello must not mark
	// the device online after its successor reported it offline.
	s.mu.Lock()
	current := s.sessions[device] == sess
	s.mu.Unlock()
	if !sess.cleanedUp && current && sess.pending.Load() == nil && s.opts.Presence != nil {
		s.opts.Presence(telemetry.Presence{Device: device, Online: true, At: s.now().UnixMilli()})
	}
	sess.presenceMu.Unlock()
	s.log.Debug("device connected", "device", device, "session", sessID, "remote", sess.remote)
	sess.conn.Start()
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

// close ends the session with e; the first call wins. Reading stops at
// once; the Conn closes when every batch already in the pipeline has had
// its ack queued (or at WriteTimeout), so a device closed for any reason
// still learns which batches were committed. 1006 (socket gone) closes now.
func (sess *session) close(e wsconn.Error) {
	// pending is stored before the stop latch fires, so whoever sees the
	// session stopped also sees why; a session whose socket died first
	// (Closed fired the latch) has nothing left to close.
	if !sess.pending.CompareAndSwap(nil, &e) || !sess.stopping() {
		return
	}
	sess.srv.m.closes.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	sess.conn.StopReading()
	if e.Code == wsconn.CloseAbnormal || sess.inFlight() == 0 {
		sess.conn.Close(e)
		return
	}
	time.AfterFunc(sess.srv.cfg.WriteTimeout, func() { sess.conn.Close(e) })
}

// release gives back an in-flight slot once its ack is written (or can
// no longer be); the last one lets a pending close proceed.
func (sess *session) release() {
	sess.mu.Lock()
	sess.inflight--
	n := sess.inflight
	if sess.slotFree != nil {
		close(sess.slotFree)
		sess.slotFree = nil
	}
	sess.mu.Unlock()
	if e := sess.pending.Load(); e != nil && n == 0 {
		sess.conn.Close(*e)
	}
}

// Message implements wsconn.Handler: one data message from the device.
func (sess *session) Message(op ws.OpCode, payload []byte) *wsconn.Error {
	if op == ws.OpText {
		return &wsconn.Error{Code: wire.CloseUnsupported, Kind: "text_frame", Reason: "text frames are not supported: send binary MessagePack"}
	}
	if err := sess.safeHandle(payload); err != nil {
		var pe *wire.ProtocolError
		if errors.As(err, &pe) {
			return &wsconn.Error{Code: pe.Close, Kind: pe.Code, Reason: pe.Message}
		}
		// The session is closing (a takeover, a kick): nothing to add.
	}
	return nil
}

// Ending implements wsconn.Handler.
func (sess *session) Ending(e wsconn.Error) { sess.close(e) }

// Farewell implements wsconn.Handler: the error frame of docs/protocol.md
// ahead of the close frame.
func (sess *session) Farewell(e wsconn.Error) []byte {
	if e.Kind == "" || e.Code == wsconn.CloseNormal {
		return nil
	}
	data, _ := (&wire.Error{Type: wire.TypeError, Code: e.Kind, Message: e.Reason}).MarshalMsg(nil)
	return data
}

// Closed implements wsconn.Handler: the session's cleanup, once the socket
// is closed and the reader gone.
func (sess *session) Closed(e wsconn.Error) {
	s := sess.srv
	if sess.stopping() { // normally Ending got there first
		s.m.closes.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	}
	if !sess.registered {
		return
	}
	s.conns.Add(-1)
	s.m.connections.Dec()
	s.recordClose(sess, e)
	sess.presenceMu.Lock()
	sess.cleanedUp = true
	if s.unregister(sess) && s.opts.Presence != nil {
		s.opts.Presence(telemetry.Presence{Device: sess.device, Online: false, At: s.now().UnixMilli()})
	}
	sess.presenceMu.Unlock()
}

// helloAfterIdle waits for old's reader (if a takeover happened), then
// builds hello: from pre when the device had nothing in the pipeline when
// pre was read and nothing was submitted since — once old's reader has
// stopped, nothing of an earlier session can still enter — and otherwise
// after the device's pipeline items finished, from a fresh read.
func (s *Server) helloAfterIdle(ctx context.Context, old *session, pre preRead, device, sessID string) (wire.Hello, error) {
	if old != nil {
		select {
		case <-old.conn.ReadStopped():
		case <-ctx.Done():
			return wire.Hello{}, fmt.Errorf("wait for the previous session: %w", ctx.Err())
		}
	}
	if s.pipe.stillIdle(device, pre.mark) {
		return s.helloWith(device, sessID, pre.acked), nil
	}
	return s.hello(ctx, device, sessID)
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
		if err := sess.pace(len(msg.Readings)); err != nil {
			return err
		}
		batch, ack := s.accept(sess.device, msg)
		sess.readings.Add(int64(len(batch.Readings)))
		// Take an in-flight slot (bounded per session), then queue budget.
		if err := sess.acquire(); err != nil {
			return err
		}
		err := s.pipe.submit(sess.ctx(), batch, func(o telemetry.Outcome, err error) {
			if err != nil {
				sess.release() // never acked: the device resends after reconnect
				if pe := (*wire.ProtocolError)(nil); errors.As(err, &pe) {
					sess.close(wsconn.Error{Code: pe.Close, Kind: pe.Code, Reason: pe.Message}) // refused by the store
				}
				return
			}
			a := ack
			if o.Duplicate {
				a.Duplicate, a.Accepted, a.Rejected, a.Errors = true, 0, 0, []string{}
			}
			data, _ := a.MarshalMsg(nil)
			s.m.acks.Inc()
			if !sess.conn.SendData(data, sess.release) {
				sess.release()
			}
		})
		if err != nil {
			sess.release()
			if errors.Is(err, errShuttingDown) {
				return nil // not acked; the drain closes the session with 1001
			}
			return err
		}
		return nil
	}
	return nil
}

// Pacing bounds (docs/protocol.md, "Rate limits"): a batch over the
// device's readings rate waits, with this session's socket unread, until
// the bucket allows it. The retry interval starts small so a device just
// over the rate loses little time, and is capped so a long wait costs a
// few wakeups per second.
const (
	paceFirst = 20 * time.Millisecond
	paceMax   = 250 * time.Millisecond
)

// pace waits until the limiter lets n readings through: over the limit the
// device is slowed (its acks come later, TCP pushes back), not kicked. Only
// a device still over the limit after ingest.rate_pause_max is closed 1013.
func (sess *session) pace(n int) error {
	s := sess.srv
	lim := s.opts.Limits
	if lim == nil || lim.AllowReadings(sess.device, n) {
		return nil
	}
	s.m.ratePaused.Inc()
	ctx := sess.ctx()
	start := time.Now()
	wait := paceFirst
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		if lim.AllowReadings(sess.device, n) {
			s.m.ratePausedSeconds.Add(time.Since(start).Seconds())
			return nil
		}
		if time.Since(start) >= s.cfg.RatePauseMax {
			s.m.ratePausedSeconds.Add(time.Since(start).Seconds())
			return &wire.ProtocolError{Close: wire.CloseTryAgainLater, Code: "rate_limited",
				Message: fmt.Sprintf("readings per second over this device's limit for longer than %s", s.cfg.RatePauseMax)}
		}
		wait = min(2*wait, paceMax)
		t.Reset(wait)
	}
}

// sendCommand queues a command frame; false if the session's command queue
// is full or it is closing.
func (sess *session) sendCommand(data []byte) bool {
	if sess.pending.Load() != nil {
		return false
	}
	if sess.cmds.Add(1) > commandSlots {
		sess.cmds.Add(-1)
		return false
	}
	if !sess.conn.SendData(data, func() { sess.cmds.Add(-1) }) {
		sess.cmds.Add(-1)
		return false
	}
	return true
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

// recordClose writes the session history row. It is bounded by the
// server's life context too, so Shutdown's deadline bounds it.
func (s *Server) recordClose(sess *session, e wsconn.Error) {
	if s.opts.Sessions == nil {
		return
	}
	info := sess.info()
	info.Ended = s.now()
	info.CloseReason = fmt.Sprintf("%d %s", e.Code, e.Reason)
	ctx, cancel := context.WithTimeout(s.life, 5*time.Second)
	defer cancel()
	sess.mu.Lock()
	opened := sess.opened.wait()
	sess.mu.Unlock()
	select {
	case <-opened:
	case <-ctx.Done():
	}
	if err := s.opts.Sessions.SessionClosed(ctx, info); err != nil {
		s.log.Warn("record session close", "device", sess.device, "session", sess.id, "err", err)
	}
}

func (sess *session) info() SessionInfo {
	return SessionInfo{ID: sess.id, Device: sess.device, Node: sess.srv.cfg.Node, RemoteAddr: sess.remote,
		Transport: "ws", Started: time.Unix(0, sess.started), Readings: sess.readings.Load()}
}
