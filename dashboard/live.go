package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
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

// statusTryAgainLater is RFC 6455's registered 1013 (IANA), which gobwas/ws
// does not name: the server is overloaded for this client, reconnect later.
const statusTryAgainLater ws.StatusCode = 1013

// closeCode maps a disconnect reason to the WebSocket close frame.
func closeCode(reason string) (ws.StatusCode, string) {
	switch reason {
	case reasonSlow:
		return statusTryAgainLater, "slow consumer: queue full"
	case reasonShutdown:
		return ws.StatusGoingAway, "server shutting down"
	case reasonSession:
		return ws.StatusPolicyViolation, "session ended"
	case reasonProtocol:
		return ws.StatusProtocolError, "protocol error"
	case "too_big":
		return ws.StatusMessageTooBig, "message too big"
	case "unsupported":
		return ws.StatusUnsupportedData, "text messages only"
	default:
		return ws.StatusNormalClosure, ""
	}
}

// liveConn is one /v1/live WebSocket: the read loop runs on the handler's
// goroutine, the write loop on its own; the write loop is the only writer
// and closes the socket.
type liveConn struct {
	d    *Dashboard
	c    *client
	conn net.Conn
	br   *bufio.Reader
	tok  string
	pong chan []byte // ping payloads to answer, from the read loop
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
	var src io.Reader = conn
	if rw != nil && rw.Reader.Buffered() > 0 {
		pre, _ := rw.Reader.Peek(rw.Reader.Buffered())
		src = io.MultiReader(bytes.NewReader(bytes.Clone(pre)), conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	c, err := d.hub.attach(ctx)
	cancel()
	if err != nil {
		code, msg := closeCode(reasonShutdown)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(code, msg)))
		_ = conn.Close()
		return
	}
	lc := &liveConn{d: d, c: c, conn: conn, br: bufio.NewReaderSize(src, 1024), tok: tok, pong: make(chan []byte, 1)}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		lc.writeLoop()
	}()
	c.enqueueDirect(appendHello(nil, d.cfg.MaxUpdatesPerSecond))
	reason := lc.readLoop()
	if c.close(reason) && reason != reasonClient {
		d.m.disconnects.WithLabelValues(reason).Inc()
	}
	d.hub.detach(c, reason)
	<-writerDone
}

// enqueueDirect queues a message from outside the hub goroutine (hello,
// errors); dropped when the queue is full, as the client is then far
// behind anyway.
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

// readLoop reads the browser's frames until it closes, errs or the client
// ends; it returns the disconnect reason.
func (lc *liveConn) readLoop() string {
	for {
		select {
		case <-lc.c.done:
			return lc.c.closeReason()
		default:
		}
		_ = lc.conn.SetReadDeadline(time.Now().Add(readIdle))
		h, err := ws.ReadHeader(lc.br)
		if err != nil {
			return lc.readErr(err)
		}
		if h.Length > maxClientMessage {
			return "too_big"
		}
		if !h.Masked {
			return reasonProtocol // RFC 6455 5.1: client frames are masked
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(lc.br, payload); err != nil {
			return lc.readErr(err)
		}
		ws.Cipher(payload, h.Mask, 0)
		switch h.OpCode {
		case ws.OpPing:
			select {
			case lc.pong <- payload:
			default: // a pong is already pending; one answers both
			}
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			return reasonClient
		case ws.OpText:
		case ws.OpBinary:
			return "unsupported"
		default: // continuation: browsers do not fragment small messages
			return reasonProtocol
		}
		if !h.Fin {
			return reasonProtocol
		}
		lc.handle(payload)
	}
}

func (lc *liveConn) readErr(err error) string {
	select {
	case <-lc.c.done:
		return lc.c.closeReason()
	default:
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "idle"
	}
	return reasonClient
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

func (lc *liveConn) writeLoop() {
	defer lc.conn.Close()
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	bw := bufio.NewWriterSize(lc.conn, 16<<10)
	write := func(op ws.OpCode, p []byte) error {
		return ws.WriteFrame(bw, ws.NewFrame(op, true, p))
	}
	for {
		select {
		case msg := <-lc.c.out:
			_ = lc.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			err := write(ws.OpText, msg)
			// Whatever else is queued goes out in the same write.
			for i := 0; err == nil && i < maxBurst; i++ {
				select {
				case msg = <-lc.c.out:
					err = write(ws.OpText, msg)
					continue
				default:
				}
				break
			}
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				lc.fail()
				return
			}
		case p := <-lc.pong:
			_ = lc.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if write(ws.OpPong, p) != nil || bw.Flush() != nil {
				lc.fail()
				return
			}
		case <-ping.C:
			if lc.tok != "" && !lc.d.sessions.exists(lc.tok) {
				lc.d.hub.dropAsync(lc.c, reasonSession)
				continue
			}
			_ = lc.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if write(ws.OpPing, nil) != nil || bw.Flush() != nil {
				lc.fail()
				return
			}
		case <-lc.c.done:
			code, msg := closeCode(lc.c.closeReason())
			_ = lc.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = ws.WriteFrame(bw, ws.NewCloseFrame(ws.NewCloseFrameBody(code, msg)))
			_ = bw.Flush()
			return
		}
	}
}

// fail ends the connection after a write error or timeout.
func (lc *liveConn) fail() {
	lc.d.hub.dropAsync(lc.c, reasonWrite)
	_ = lc.conn.SetReadDeadline(time.Now()) // unblock the read loop
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
			if !send([]byte(": ping\n\n")) {
				d.hub.dropAsync(c, reasonWrite)
				return reasonWrite
			}
		case <-c.done:
			reason := c.closeReason()
			send([]byte(`event: close`+"\n"+`data: {"type":"close","reason":`), appendJSONString(nil, reason), []byte("}\n\n"))
			return reason
		case <-r.Context().Done():
			return reasonClient
		}
	}
}
