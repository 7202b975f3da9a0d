package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wsconn"
)

// Live transport defaults (docs/dashboard.md "Live protocol").
const (
	// maxClientMessage bounds a browser's text message (a subscription is a
	// few hundred bytes).
	maxClientMessage = 4096
	// pingEvery keeps proxies from closing an idle socket and proves the
	// browser is there; a client silent for readIdle is gone.
	pingEvery = 25 * time.Second
	readIdle  = 2*pingEvery + 10*time.Second
	// writeTimeout bounds one socket write; a client that cannot take a
	// message for this long is disconnected (write_failed).
	writeTimeout = 10 * time.Second
	// handshakeTimeout bounds the upgrade.
	handshakeTimeout = 10 * time.Second
	// sseHeartbeat: a comment line keeps an idle event stream open through
	// proxies and lets the server notice a vanished client.
	sseHeartbeat = 15 * time.Second
	// maxBurst messages are written per flush/syscall batch.
	maxBurst = 32
)

var (
	deviceRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	metricRe = regexp.MustCompile(`^[A-Za-z0-9_.:/-]{1,128}$`)
)

// clientMsg is what a browser sends on /v1/live.
type clientMsg struct {
	Type    string   `json:"type"` // "subscribe" | "unsubscribe"
	Device  string   `json:"device"`
	Metrics []string `json:"metrics,omitempty"`
}

func validSubscription(device string, metrics []string) error {
	if !deviceRe.MatchString(device) {
		return errors.New("device: must match [a-z0-9][a-z0-9_.-]{0,63}")
	}
	if len(metrics) > maxMetricsFilter {
		return errors.New("metrics: at most 64")
	}
	for _, m := range metrics {
		if !metricRe.MatchString(m) {
			return errors.New("metrics: each must be 1-128 of [A-Za-z0-9_.:/-]")
		}
	}
	return nil
}

// authLive authenticates a live request and checks its Origin; it answers
// the request itself when refused. tok is the session cookie ("" for
// Bearer) so the connection can end with the session.
func (d *Dashboard) authLive(w http.ResponseWriter, r *http.Request) (tok string, ok bool) {
	p, err := d.Authenticate(r)
	switch {
	case errors.Is(err, ErrUnauthenticated):
		w.Header().Set("WWW-Authenticate", `Bearer realm="meridian"`)
		http.Error(w, "log in first, or send Authorization: Bearer <API key>", http.StatusUnauthorized)
		return "", false
	case err != nil:
		d.log.Error("live: authenticate", "err", err)
		http.Error(w, "cannot check credentials now", http.StatusServiceUnavailable)
		return "", false
	}
	if !d.originAllowed(r) {
		d.log.Warn("live: origin refused", "origin", r.Header.Get("Origin"), "host", r.Host)
		http.Error(w, "origin not allowed (dashboard.allowed_origins)", http.StatusForbidden)
		return "", false
	}
	if p.Session != "" {
		if c, err := r.Cookie(sessionCookie); err == nil {
			tok = c.Value
		}
	}
	return tok, true
}

// closeCode maps a disconnect reason to the WebSocket close frame.
func closeCode(reason string) (int, string) {
	switch reason {
	case reasonSlow:
		return wsconn.CloseTryAgainLater, "slow consumer: queue full"
	case reasonShutdown:
		return wsconn.CloseGoingAway, "server shutting down"
	case reasonIdle:
		return wsconn.CloseGoingAway, "no frame or pong within the idle timeout"
	case reasonSession:
		return wsconn.ClosePolicy, "session ended"
	case reasonProtocol:
		return wsconn.CloseProtocol, "protocol error"
	case reasonTooBig:
		return wsconn.CloseTooBig, "message too big"
	case reasonUnsupported:
		return wsconn.CloseUnsupported, "text messages only"
	case reasonClient, reasonWrite:
		return wsconn.CloseAbnormal, "" // nobody left to tell
	default:
		return wsconn.CloseNormal, ""
	}
}

// Disconnect reasons of the transport itself (the hub's are in hub.go).
const (
	reasonTooBig      = "too_big"
	reasonUnsupported = "unsupported"
	reasonIdle        = "idle"
)

// reasonOf maps the connection core's ending to a live disconnect reason.
func reasonOf(e wsconn.Error) string {
	switch e.Kind {
	case wsconn.KindPeerClosed, wsconn.KindLost:
		return reasonClient
	case wsconn.KindTimeout:
		return reasonIdle
	case wsconn.KindTooBig:
		return reasonTooBig
	case wsconn.KindWriteFailed:
		return reasonWrite
	case reasonUnsupported:
		return reasonUnsupported
	default:
		return reasonProtocol
	}
}

// liveEngine is the connection core's engine for /v1/live, started with
// the first live connection and stopped after the last one finished, so a
// dashboard without live clients runs no goroutine for them.
type liveEngine struct {
	mu  sync.Mutex
	eng *wsconn.Engine
	n   int
}

func (le *liveEngine) acquire() (*wsconn.Engine, error) {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.eng == nil {
		e, err := wsconn.NewEngine(wsconn.EngineConfig{Tick: time.Second})
		if err != nil {
			return nil, fmt.Errorf("live connection engine: %w", err)
		}
		le.eng = e
	}
	le.n++
	return le.eng, nil
}

// release is called from Closed, possibly on the engine's own wheel
// goroutine, so the engine is closed from a goroutine of its own.
func (le *liveEngine) release() {
	le.mu.Lock()
	defer le.mu.Unlock()
	le.n--
	if le.n == 0 && le.eng != nil {
		go le.eng.Close()
		le.eng = nil
	}
}

// liveConfig: the live protocol on the connection core.
var liveConfig = wsconn.Config{
	MaxMessage:   maxClientMessage,
	Idle:         readIdle,
	Ping:         pingEvery,
	WriteTimeout: writeTimeout,
	OpText:       true,
}

// liveConn is the live protocol on one wsconn.Conn. The core reads the
// browser's frames (readiness-driven), answers pings, enforces the idle
// deadline and owns the close path; pump moves the hub's messages for this
// client onto the core's writer, at most one burst in flight, so a slow
// browser fills the hub's queue and the hub decides (slow_consumer).
type liveConn struct {
	d       *Dashboard
	c       *client
	conn    *wsconn.Conn
	tok     string
	key     string        // the bearer API key, for streams opened with one
	written chan struct{} // a burst was written
	pumped  chan struct{} // closed when pump returned
}

func (d *Dashboard) serveLive(w http.ResponseWriter, r *http.Request) {
	tok, ok := d.authLive(w, r)
	if !ok {
		return
	}
	up := ws.HTTPUpgrader{Timeout: handshakeTimeout}
	conn, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		// gobwas hijacks first and has written the rejection already: the
		// connection is ours to close.
		if conn != nil {
			_ = conn.Close()
		}
		d.log.Debug("live: upgrade failed", "err", err)
		return
	}
	var pre []byte
	if rw != nil && rw.Reader.Buffered() > 0 {
		pre, _ = rw.Reader.Peek(rw.Reader.Buffered())
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	c, err := d.hub.attach(ctx)
	cancel()
	var eng *wsconn.Engine
	if err == nil {
		eng, err = d.live.acquire()
		if err != nil {
			d.hub.detach(c, reasonShutdown)
		}
	}
	if err != nil {
		code, msg := closeCode(reasonShutdown)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(code), msg)))
		_ = conn.Close()
		return
	}
	lc := &liveConn{d: d, c: c, tok: tok, key: bearer(r), written: make(chan struct{}, 1), pumped: make(chan struct{})}
	lc.conn = eng.Attach(conn, pre, &liveConfig, lc)
	lc.conn.SendData(appendHello(nil, d.cfg.MaxUpdatesPerSecond), nil)
	go lc.pump()
	lc.conn.Start()
}

// enqueueDirect queues a message from outside the hub goroutine (errors);
// dropped when the queue is full, as the client is then far behind anyway.
func (c *client) enqueueDirect(msg []byte) {
	select {
	case c.out <- msg:
	default:
	}
}

func appendHello(b []byte, rate int) []byte {
	b = append(b, `{"type":"hello","max_updates_per_second":`...)
	b = strconv.AppendInt(b, int64(rate), 10)
	return append(b, '}')
}

// pump hands the hub's messages to the core, waiting for each burst to be
// written before taking more; when the client ends it closes the socket
// with the close code of its reason.
func (lc *liveConn) pump() {
	defer close(lc.pumped)
	for {
		select {
		case msg := <-lc.c.out:
			n := 0
			for {
				n++
				last := n == maxBurst
				var next []byte
				if !last {
					select {
					case next = <-lc.c.out:
					default:
						last = true
					}
				}
				var done func()
				if last {
					// Never blocks: once the client is done pump may have
					// returned, and a blocked callback would hold the
					// core's writer (no close frame, no cleanup, a leaked
					// socket).
					done = func() {
						select {
						case lc.written <- struct{}{}:
						default:
						}
					}
				}
				if !lc.conn.SendData(msg, done) {
					return // closing: Closed detaches
				}
				if last {
					break
				}
				msg = next
			}
			select {
			case <-lc.written:
			case <-lc.c.done:
				code, msg := closeCode(lc.c.closeReason())
				lc.conn.Close(wsconn.Error{Code: code, Kind: lc.c.closeReason(), Reason: msg})
				return
			}
		case <-lc.c.done:
			code, msg := closeCode(lc.c.closeReason())
			lc.conn.Close(wsconn.Error{Code: code, Kind: lc.c.closeReason(), Reason: msg})
			return
		}
	}
}

// Message implements wsconn.Handler: one browser message.
func (lc *liveConn) Message(op ws.OpCode, payload []byte) *wsconn.Error {
	if op != ws.OpText {
		return &wsconn.Error{Code: wsconn.CloseUnsupported, Kind: reasonUnsupported, Reason: "text messages only"}
	}
	lc.handle(payload)
	return nil
}

// Ending implements wsconn.Handler: the browser or the core ended the
// connection; the hub learns the reason and pump closes the socket.
func (lc *liveConn) Ending(e wsconn.Error) {
	reason := reasonOf(e)
	if lc.c.close(reason) && reason != reasonClient {
		lc.d.m.disconnects.WithLabelValues(reason).Inc()
	}
	code, msg := closeCode(lc.c.closeReason())
	if e.Kind == wsconn.KindPeerClosed {
		// The browser closed: answer its close frame (RFC 6455 5.5.1), so
		// it sees a clean 1000 rather than 1006.
		code, msg = wsconn.CloseNormal, ""
	}
	lc.conn.Close(wsconn.Error{Code: code, Kind: reason, Reason: msg})
}

// Farewell implements wsconn.Handler: live sends no error frame first.
func (lc *liveConn) Farewell(wsconn.Error) []byte { return nil }

// Closed implements wsconn.Handler.
func (lc *liveConn) Closed(e wsconn.Error) {
	lc.c.close(reasonOf(e))
	<-lc.pumped
	lc.d.hub.detach(lc.c, lc.c.closeReason())
	lc.d.live.release()
}

// Tick implements wsconn.Ticker: at every ping, a cookie session that
// ended (logout, expiry) or an API key revoked since the stream opened ends
// its live connection.
func (lc *liveConn) Tick() {
	if lc.tok != "" && !lc.d.sessions.exists(lc.tok) {
		lc.d.hub.dropAsync(lc.c, reasonSession)
	}
	lc.d.recheckKey(lc.key, lc.c)
}

// keyRecheckTimeout bounds one re-check of a live stream's API key.
const keyRecheckTimeout = 5 * time.Second

// recheckKey drops c if key (a bearer stream's API key; "" for cookie
// streams) no longer authenticates. It runs off the caller's goroutine —
// the timer wheel's or the SSE loop's — because the lookup may wait for
// the store; the devices credential cache makes it cheap and sees a
// revocation at once.
func (d *Dashboard) recheckKey(key string, c *client) {
	if key == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), keyRecheckTimeout)
		defer cancel()
		if _, err := d.auth.AuthenticateOperator(ctx, key); isUnauthorized(err) {
			d.hub.dropAsync(c, reasonSession)
		}
	}()
}

// parseClientMsg decodes and checks a browser's message; the error text is
// sent back to it.
func parseClientMsg(payload []byte) (clientMsg, error) {
	var m clientMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		return clientMsg{}, fmt.Errorf("bad message: %w", err)
	}
	switch m.Type {
	case "subscribe":
		if err := validSubscription(m.Device, m.Metrics); err != nil {
			return clientMsg{}, err
		}
	case "unsubscribe":
		if !deviceRe.MatchString(m.Device) {
			return clientMsg{}, errors.New("device: must match [a-z0-9][a-z0-9_.-]{0,63}")
		}
	default:
		return clientMsg{}, errors.New(`type: want "subscribe" or "unsubscribe"`)
	}
	return m, nil
}

func (lc *liveConn) handle(payload []byte) {
	m, err := parseClientMsg(payload)
	if err != nil {
		lc.c.enqueueDirect(appendError(nil, err.Error()))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch m.Type {
	case "subscribe":
		if err := lc.d.hub.subscribe(ctx, lc.c, m.Device, m.Metrics); err != nil {
			lc.c.enqueueDirect(appendError(nil, err.Error()))
		}
	case "unsubscribe":
		_ = lc.d.hub.unsubscribe(ctx, lc.c, m.Device)
	}
}

// dropAsync ends c from a transport goroutine, counting the reason; the
// hub forgets it when the transport detaches.
func (h *Hub) dropAsync(c *client, reason string) {
	if c.close(reason) {
		h.m.disconnects.WithLabelValues(reason).Inc()
	}
}

// serveSSE is the Server-Sent Events fallback: the same JSON messages as
// /v1/live, one per "data:" line, for one device given in the query
// (?device=boiler-7&metric=temp&metric=rpm, or metric=temp,rpm).
func (d *Dashboard) serveSSE(w http.ResponseWriter, r *http.Request) {
	tok, ok := d.authLive(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	device := q.Get("device")
	var metrics []string
	for _, v := range q["metric"] {
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				metrics = append(metrics, m)
			}
		}
	}
	if err := validSubscription(device, metrics); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), handshakeTimeout)
	c, err := d.hub.attach(ctx)
	if err == nil {
		if err = d.hub.subscribe(ctx, c, device, metrics); err != nil {
			d.hub.detach(c, reasonShutdown)
		}
	}
	cancel()
	if err != nil {
		http.Error(w, "live feed unavailable", http.StatusServiceUnavailable)
		return
	}
	reason := d.sseLoop(w, r, c, tok)
	d.hub.detach(c, reason)
}

func (d *Dashboard) sseLoop(w http.ResponseWriter, r *http.Request, c *client, tok string) string {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	send := func(parts ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !send([]byte("retry: 2000\n\n"), []byte("data: "), appendHello(nil, d.cfg.MaxUpdatesPerSecond), []byte("\n\n")) {
		return reasonWrite
	}
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	for {
		select {
		case msg := <-c.out:
			parts := [][]byte{[]byte("data: "), msg, []byte("\n\n")}
			for i := 0; i < maxBurst; i++ {
				select {
				case msg = <-c.out:
					parts = append(parts, []byte("data: "), msg, []byte("\n\n"))
					continue
				default:
				}
				break
			}
			if !send(parts...) {
				d.hub.dropAsync(c, reasonWrite)
				return reasonWrite
			}
		case <-beat.C:
			if tok != "" && !d.sessions.exists(tok) {
				d.hub.dropAsync(c, reasonSession)
				continue
			}
			d.recheckKey(bearer(r), c)
			if !send([]byte(": ping\n\n")) {
				d.hub.dropAsync(c, reasonWrite)
				return reasonWrite
			}
		case <-c.done:
			reason := c.closeReason()
			send([]byte(`event: close`+"\n"+`data: {"type":"close","reason":`), telemetry.AppendJSONString(nil, reason), []byte("}\n\n"))
			return reason
		case <-r.Context().Done():
			return reasonClient
		}
	}
}
