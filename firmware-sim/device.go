package sim

import (
	"bytes"
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
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// Subprotocol is protocol v1's WebSocket subprotocol (docs/protocol.md 1).
const Subprotocol = "meridian.v1"

// maxServerFrame bounds one frame from the server; hello, acks and errors are
// tiny, a command's payload is not bounded by the server (protocol 8), so
// this is the device's own limit (a bigger frame closes with 1009).
const maxServerFrame = 1 << 20

// closeLost is the pseudo close code of a connection that ended without a
// close frame (RFC 6455 7.1.5).
const closeLost = 1006

var (
	errChaos     = errors.New("chaos")
	errFinished  = errors.New("finished")
	errStopped   = errors.New("stopped")
	errHandshake = errors.New("handshake")
)

// device is one simulated device. Everything in it is owned by the device's
// single goroutine: the connection is read with deadlines set to the next
// thing the device must do (sample, flush, chaos), so one goroutine both
// reads acks and writes batches, and thousands of devices cost one small
// goroutine each.
type device struct {
	f       *Fleet
	id      string
	token   string
	useHTTP bool
	rng     *rand.Rand
	sig     *Signals
	ring    ring
	file    *ringFile
	led     *DeviceLedger

	nextSeq      uint64 // 0: unknown (fresh start or lost in a reboot)
	rebooted     bool
	helloSeen    bool
	pending      wire.Readings
	pendingSince time.Time
	batchSize    int
	maxBatch     int // from hello; 0 before the first

	skew      int64 // ms added to the wall clock
	invalid   bool
	malformed bool
	bo        Backoff

	nextDisconnect, nextStall, nextReboot, nextMalformed time.Time
	stallUntil                                           time.Time
	expectReject                                         bool

	conn        net.Conn
	gen         uint32 // connection generation
	lastSentSeq uint64 // highest seq written on the current connection
	rbuf        []byte
}

// exp draws an exponentially distributed delay with the given mean; zero
// mean means never.
func (d *device) exp(now time.Time, mean time.Duration) time.Time {
	if mean <= 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(d.rng.ExpFloat64() * float64(mean)))
}

func due(now, at time.Time) bool { return !at.IsZero() && !now.Before(at) }

func (d *device) limit() int {
	n := d.batchSize
	if d.maxBatch > 0 {
		n = min(n, d.maxBatch)
	}
	return max(n, 1)
}

// finished: generation is over and everything sent was acked.
func (d *device) finished() bool {
	return d.f.generating.Load() == false && len(d.pending) == 0 && d.ring.len() == 0
}

// produce samples what is due and seals full or old batches into the ring.
func (d *device) produce(now time.Time) {
	lim := d.limit()
	if d.f.generating.Load() && len(d.pending) < lim {
		devNow := now.UnixMilli() + d.skew
		if d.sig.NextDue() <= devNow {
			before := len(d.pending)
			d.pending = d.sig.Sample(devNow, d.pending, lim)
			n := len(d.pending) - before
			if n > 0 && !d.f.take(n) {
				d.pending = d.pending[:before] // the fleet's reading budget is spent
				n = 0
			}
			if n > 0 {
				if before == 0 {
					d.pendingSince = now
				}
				if d.invalid && d.rng.IntN(5) == 0 {
					d.pending = append(d.pending, d.sig.Invalid(devNow))
				}
			}
		}
	}
	for len(d.pending) > 0 && (len(d.pending) >= lim || now.Sub(d.pendingSince) >= d.f.cfg.FlushEvery || !d.f.generating.Load()) {
		if !d.seal(lim) {
			return
		}
		if len(d.pending) > 0 {
			d.pendingSince = now
		}
	}
}

// seal turns up to lim pending readings into the next batch. It fails while
// the ring is full or the seq counter is unknown (before the first hello).
func (d *device) seal(lim int) bool {
	if d.nextSeq == 0 {
		return false
	}
	if d.ring.full() {
		d.f.stats.readingsSkip.Add(1)
		return false
	}
	n := min(lim, len(d.pending))
	rs := d.pending[:n]
	seq := d.nextSeq
	d.nextSeq++
	b := wire.Batch{Type: wire.TypeBatch, Seq: seq, Readings: rs}
	frame, err := b.MarshalMsg(make([]byte, 0, b.Msgsize()))
	if err != nil { // cannot happen for our own values
		d.f.stats.fail("encode")
		return false
	}
	e := entry{seq: seq, frame: frame, n: n}
	if d.led != nil {
		e.ver = d.led.Sent(seq, rs)
	}
	d.ring.push(e)
	d.f.stats.inRing.Add(1)
	if d.file != nil {
		if err := d.file.append(&e, &d.ring); err != nil {
			d.f.stats.fail("state file")
			d.f.log.Warn("persist ring", "device", d.id, "err", err)
		}
	}
	rest := copy(d.pending, d.pending[n:])
	d.pending = d.pending[:rest]
	return true
}

// nextWake is when the device next has something to do besides reading.
func (d *device) nextWake(now time.Time) time.Time {
	w := now.Add(time.Second) // re-check generation end and context often enough
	if d.f.generating.Load() && len(d.pending) < d.limit() {
		w = earliest(w, time.UnixMilli(d.sig.NextDue()-d.skew))
	}
	if len(d.pending) > 0 && d.nextSeq != 0 && !d.ring.full() {
		w = earliest(w, d.pendingSince.Add(d.f.cfg.FlushEvery))
	}
	for _, t := range []time.Time{d.nextDisconnect, d.nextStall, d.nextReboot, d.nextMalformed, d.stallUntil} {
		if !t.IsZero() && t.After(now) {
			w = earliest(w, t)
		}
	}
	// Never a deadline in the past: a read that times out at once would
	// make the loop spin.
	if min := now.Add(time.Millisecond); w.Before(min) {
		w = min
	}
	return w
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// sleep waits until t while still sampling (a device offline keeps
// measuring into its ring). It returns false when ctx ended.
func (d *device) sleep(ctx context.Context, until time.Time) bool {
	for {
		now := time.Now()
		d.produce(now)
		if !now.Before(until) || d.finished() {
			return ctx.Err() == nil
		}
		wake := earliest(until, d.nextWake(now))
		if !d.f.wait(ctx, wake.Sub(now)) {
			return false
		}
	}
}

// onHello applies protocol section 7.2.
func (d *device) onHello(h *wire.Hello) {
	d.maxBatch = h.MaxBatch
	k := d.ring.dropThrough(h.Acked, func(*entry) { d.f.stats.helloDropped.Add(1) })
	d.f.stats.inRing.Add(-int64(k))
	if d.led != nil {
		d.led.Cover(h.Acked)
		if !d.helloSeen {
			// Entries restored from the state file join this run's ledger
			// once hello has dropped the ones already durable.
			for i := 0; i < d.ring.len(); i++ {
				e := d.ring.at(i)
				if e.ver == nil {
					var b wire.Batch
					if _, err := b.UnmarshalMsg(e.frame); err == nil {
						e.ver, e.n = d.led.Sent(e.seq, b.Readings), len(b.Readings)
					}
				}
			}
		}
	}
	d.helloSeen = true
	if d.nextSeq == 0 {
		d.nextSeq = h.Acked + 1
		if d.rebooted && !d.f.cfg.Chaos.NaiveReboot {
			// Batches of the previous life may still commit after this
			// hello: skip past every seq they could hold (protocol 7.2).
			d.nextSeq += uint64(d.ring.limit)
		}
	}
	d.nextSeq = max(d.nextSeq, h.Acked+1, d.ring.last()+1)
}

// onAck drops acked entries and records the ack.
func (d *device) onAck(a *wire.Ack, now time.Time) {
	st := d.f.stats
	k := d.ring.dropThrough(a.Seq, func(e *entry) {
		if e.seq != a.Seq {
			// An earlier ack was lost with a connection; this one covers it.
			st.helloDropped.Add(1)
			return
		}
		if e.conn == d.gen && e.sentAt != 0 {
			st.ackLatency(now.Sub(time.Unix(0, e.sentAt)))
		}
		st.batchesAcked.Add(1)
		st.readingsAcked.Add(int64(e.n))
		st.readingsRej.Add(int64(a.Rejected))
		if a.Duplicate {
			st.dupAcks.Add(1)
		}
		if d.led != nil {
			d.led.Ack(e.ver, a)
		}
	})
	st.inRing.Add(-int64(k))
	if d.led != nil {
		d.led.Cover(a.Seq)
	}
}

// reboot loses what a RAM-only device loses.
func (d *device) reboot() {
	d.f.stats.chaosEvents.Add(1)
	d.f.stats.event("reboot")
	d.pending = d.pending[:0]
	if d.file == nil {
		d.f.stats.inRing.Add(-int64(d.ring.len()))
		d.ring.clear(func(e *entry) { // sent, fate unknown
			if d.led != nil {
				d.led.Abandon(e.ver)
			}
		})
	}
	d.nextSeq, d.rebooted = 0, true
}

func (d *device) markSent(e *entry, now time.Time) {
	st := d.f.stats
	if e.sends == 0 {
		st.readingsSent.Add(int64(e.n))
		st.batchesSent.Add(1)
	} else {
		st.readingsResent.Add(int64(e.n))
	}
	e.sends++
	e.sentAt, e.conn = now.UnixNano(), d.gen
}

// garbage returns an undecodable frame (the server answers 1007 / 400).
func (d *device) garbage() []byte {
	switch d.rng.IntN(3) {
	case 0:
		return []byte{0x81, 0xa4, 't', 'y', 'p', 'e', 0xc1} // 0xc1 is never valid
	case 1:
		return []byte{0x83, 0xa4, 't', 'y', 'p', 'e', 0xa5, 'b', 'a', 't', 'c', 'h'} // truncated map
	default:
		return []byte{0x82, 0xa4, 't', 'y', 'p', 'e', 0xa5, 'b', 'a', 't', 'c', 'h', 0xa3, 's', 'e', 'q', 0xa3, 'o', 'n', 'e'} // seq is a string
	}
}

// ---- WebSocket ----

func (d *device) runWS(ctx context.Context) {
	for ctx.Err() == nil && !d.finished() {
		code, err := d.session(ctx)
		if d.conn != nil {
			_ = d.conn.Close()
			d.conn = nil
		}
		if errors.Is(err, errFinished) || ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case errors.Is(err, errChaos):
			// A simulated reboot or cable pull: the device comes back like
			// one that just booted, without growing its backoff.
			wait = time.Duration(d.rng.Int64N(int64(d.f.cfg.BackoffBase) + 1))
		default:
			wait = d.bo.Next(d.rng)
		}
		switch {
		case code == wire.CloseTryAgainLater:
			wait += d.f.cfg.TryLater
		case code == wire.ClosePolicy:
			wait += d.f.cfg.Policy
		case code == http.StatusTooManyRequests:
			wait += d.f.cfg.TryLater
		case code == http.StatusUnauthorized:
			wait += d.f.cfg.Policy
		}
		if !d.sleep(ctx, time.Now().Add(wait)) {
			return
		}
	}
}

// session runs one connection. It returns the close code that ended it
// (a WebSocket close code, an HTTP status for a refused handshake, or 1006)
// and why.
func (d *device) session(ctx context.Context) (int, error) {
	st := d.f.stats
	if st.connects.Add(1); d.gen > 0 {
		st.reconnects.Add(1)
	}
	d.gen++
	dctx, cancel := context.WithTimeout(ctx, d.f.cfg.DialTimeout)
	dialer := ws.Dialer{
		Timeout:        d.f.cfg.DialTimeout,
		Protocols:      []string{Subprotocol},
		Header:         ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + d.token}}),
		ReadBufferSize: 1024,
	}
	conn, br, _, err := dialer.Dial(dctx, d.f.wsURL)
	cancel()
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			st.fail("handshake " + strconv.Itoa(int(se)))
			return int(se), errHandshake
		}
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			st.fail("dial refused")
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
			st.fail("dial timeout")
		default:
			st.fail("dial")
		}
		return closeLost, err
	}
	d.conn = conn
	if cap(d.rbuf) < 512 {
		d.rbuf = make([]byte, 0, 512)
	}
	d.rbuf = d.rbuf[:0]
	if br != nil {
		// Bytes the handshake reader buffered (often the hello) come first.
		if n := br.Buffered(); n > 0 {
			p, _ := br.Peek(n)
			d.rbuf = append(d.rbuf, p...)
		}
		ws.PutReader(br)
	}
	// The first data frame is hello.
	deadline := time.Now().Add(d.f.cfg.DialTimeout)
	var hello *wire.Hello
	for hello == nil {
		if time.Now().After(deadline) {
			st.fail("no hello")
			return closeLost, errors.New("no hello before the dial timeout")
		}
		_ = conn.SetReadDeadline(deadline)
		code, err := d.pump(func(p []byte) error {
			var h wire.Hello
			if typ, _ := wire.TypeOf(p); typ != wire.TypeHello {
				return fmt.Errorf("first frame is %q, want hello", typ)
			}
			if _, err := h.UnmarshalMsg(p); err != nil {
				return fmt.Errorf("decode hello: %w", err)
			}
			hello = &h
			return nil
		})
		if err != nil {
			if code == 0 {
				st.fail("hello: " + err.Error())
				code = closeLost
			}
			return code, err
		}
	}
	d.onHello(hello)
	d.lastSentSeq = 0
	st.connected.Add(1)
	defer st.connected.Add(-1)
	healthyAt := time.Now().Add(10 * time.Second)

	for {
		now := time.Now()
		if ctx.Err() != nil {
			d.closeConn(1000, "device stopping")
			return 1000, errStopped
		}
		if !healthyAt.IsZero() && now.After(healthyAt) {
			d.bo.Reset()
			healthyAt = time.Time{}
		}
		d.produce(now)
		if err := d.sendRing(now); err != nil {
			st.fail("write")
			return closeLost, err
		}
		if d.finished() {
			d.closeConn(1000, "done")
			return 1000, errFinished
		}
		if code, err := d.chaos(now); err != nil {
			return code, err
		}
		wake := d.nextWake(now)
		if now.Before(d.stallUntil) {
			if !d.f.wait(ctx, earliest(wake, d.stallUntil).Sub(now)) {
				return 1000, errStopped
			}
			continue
		}
		_ = conn.SetReadDeadline(wake)
		code, err := d.pump(d.handle)
		if err != nil {
			return code, err
		}
	}
}

// chaos fires due chaos events on a live connection.
func (d *device) chaos(now time.Time) (int, error) {
	if !d.f.generating.Load() {
		return 0, nil // let the drain converge
	}
	ch := &d.f.cfg.Chaos
	st := d.f.stats
	switch {
	case due(now, d.nextReboot):
		d.nextReboot = d.exp(now, ch.RebootEvery)
		_ = d.conn.Close()
		d.reboot()
		return closeLost, errChaos
	case due(now, d.nextDisconnect):
		d.nextDisconnect = d.exp(now, ch.DisconnectEvery)
		st.chaosEvents.Add(1)
		st.event("disconnect")
		_ = d.conn.Close()
		return closeLost, errChaos
	case due(now, d.nextStall):
		d.nextStall = d.exp(now, ch.StallEvery)
		st.chaosEvents.Add(1)
		st.event("stall")
		d.stallUntil = now.Add(ch.StallFor)
	case d.malformed && due(now, d.nextMalformed):
		d.nextMalformed = d.exp(now, ch.MalformedEvery)
		st.chaosEvents.Add(1)
		st.event("malformed frame")
		d.expectReject = true
		if err := d.write(ws.OpBinary, d.garbage()); err != nil {
			return closeLost, err
		}
	}
	return 0, nil
}

// sendRing writes the ring entries not yet written on this connection, in
// seq order (resends first, then new batches).
func (d *device) sendRing(now time.Time) error {
	for i := 0; i < d.ring.len(); i++ {
		e := d.ring.at(i)
		if e.seq <= d.lastSentSeq {
			continue
		}
		if err := d.write(ws.OpBinary, e.frame); err != nil {
			return err
		}
		d.markSent(e, now)
		d.lastSentSeq = e.seq
	}
	return nil
}

// write sends one masked frame (RFC 6455 5.3: client frames are masked).
func (d *device) write(op ws.OpCode, payload []byte) error {
	bp := d.f.bufs.Get().(*[]byte)
	b := appendFrame((*bp)[:0], op, payload, d.rng.Uint32())
	_ = d.conn.SetWriteDeadline(time.Now().Add(d.f.cfg.WriteTimeout))
	_, err := d.conn.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b
		d.f.bufs.Put(bp)
	}
	return err
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

func (d *device) closeConn(code int, reason string) {
	if d.conn == nil {
		return
	}
	_ = d.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), reason))
}

// pump hands each complete data frame to fn, answering control frames
// itself. Frames already buffered are handled without reading; otherwise it
// reads once (until the read deadline). A timeout is not an error: it
// returns (0, nil) so the caller can do its timed work.
func (d *device) pump(fn func([]byte) error) (int, error) {
	if n, code, err := d.frames(fn); err != nil || n > 0 {
		return code, err
	}
	if len(d.rbuf) == cap(d.rbuf) {
		nb := make([]byte, len(d.rbuf), max(2*cap(d.rbuf), 512))
		copy(nb, d.rbuf)
		d.rbuf = nb
	}
	n, rerr := d.conn.Read(d.rbuf[len(d.rbuf):cap(d.rbuf)])
	d.rbuf = d.rbuf[:len(d.rbuf)+n]
	if _, code, err := d.frames(fn); err != nil {
		return code, err
	}
	// Give back a buffer a big frame made large: idle devices stay small.
	if len(d.rbuf) == 0 && cap(d.rbuf) > 4096 {
		d.rbuf = make([]byte, 0, 512)
	}
	if rerr != nil {
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			return 0, nil
		}
		if errors.Is(rerr, io.EOF) {
			d.f.stats.fail("connection lost")
		} else {
			d.f.stats.fail("read")
		}
		return closeLost, rerr
	}
	return 0, nil
}

// frames handles the complete frames at the front of rbuf and returns how
// many it handled.
func (d *device) frames(fn func([]byte) error) (int, int, error) {
	handled := 0
	for {
		op, fin, payload, size, need := parseFrame(d.rbuf)
		if need > maxServerFrame {
			d.f.stats.fail("frame too big")
			d.closeConn(wire.CloseTooBig, "frame too big")
			return handled, wire.CloseTooBig, errors.New("server frame over the device's limit")
		}
		if size == 0 {
			if need > cap(d.rbuf) {
				nb := make([]byte, len(d.rbuf), need)
				copy(nb, d.rbuf)
				d.rbuf = nb
			}
			return handled, 0, nil
		}
		handled++
		code, err := d.control(op, fin, payload, fn)
		rest := copy(d.rbuf, d.rbuf[size:])
		d.rbuf = d.rbuf[:rest]
		if err != nil {
			return handled, code, err
		}
	}
}

// parseFrame decodes the frame at the start of b. size is the bytes it
// occupies (0: incomplete), need the total bytes needed to complete it.
func parseFrame(b []byte) (op ws.OpCode, fin bool, payload []byte, size, need int) {
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
	if l > maxServerFrame {
		return 0, false, nil, 0, maxServerFrame + 1
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
func (d *device) control(op ws.OpCode, fin bool, payload []byte, fn func([]byte) error) (int, error) {
	st := d.f.stats
	switch op {
	case ws.OpPing:
		if err := d.write(ws.OpPong, payload); err != nil {
			return closeLost, err
		}
		return 0, nil
	case ws.OpPong:
		return 0, nil
	case ws.OpClose:
		code := 1005 // no status received
		reason := ""
		if len(payload) >= 2 {
			code = int(binary.BigEndian.Uint16(payload))
			reason = string(payload[2:])
		}
		st.closed(code)
		switch {
		case code == wire.CloseInvalidData && d.expectReject:
			d.expectReject = false
		case code == wire.CloseGoingAway, code == 1000:
		default:
			st.fail("close " + strconv.Itoa(code))
			d.f.log.Debug("server closed", "device", d.id, "code", code, "reason", reason)
		}
		// Echo the close (RFC 6455 5.5.1) and go.
		_ = d.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		return code, fmt.Errorf("server closed with %d %s", code, reason)
	case ws.OpBinary:
		if !fin {
			st.fail("fragmented frame")
			return wire.CloseUnsupported, errors.New("fragmented server frame")
		}
		return 0, fn(payload)
	default:
		st.fail("unexpected opcode")
		d.closeConn(wire.CloseProtocol, "unexpected opcode")
		return wire.CloseProtocol, fmt.Errorf("unexpected opcode %d", op)
	}
}

// handle processes a data frame on an established session.
func (d *device) handle(p []byte) error {
	st := d.f.stats
	typ, err := wire.TypeOf(p)
	if err != nil {
		st.fail("undecodable server frame")
		return nil
	}
	switch typ {
	case wire.TypeAck:
		var a wire.Ack
		if _, err := a.UnmarshalMsg(p); err != nil {
			st.fail("decode ack")
			return nil
		}
		d.onAck(&a, time.Now())
	case wire.TypeCommand:
		var c wire.Command
		if _, err := c.UnmarshalMsg(p); err != nil {
			st.fail("decode command")
			return nil
		}
		payload := msgp.AppendMapHeader(nil, 2)
		payload = msgp.AppendString(payload, "device")
		payload = msgp.AppendString(payload, d.id)
		payload = msgp.AppendString(payload, "command")
		payload = msgp.AppendString(payload, c.Name)
		r := wire.Result{Type: wire.TypeResult, ID: c.ID, OK: true, Payload: payload}
		out, _ := r.MarshalMsg(nil)
		if err := d.write(ws.OpBinary, out); err != nil {
			return err
		}
		st.commands.Add(1)
	case wire.TypeError:
		var e wire.Error
		_, _ = e.UnmarshalMsg(p)
		switch {
		case e.Code == "invalid_frame" && d.expectReject:
			st.event("rejected malformed frame")
		case e.Code == "shutdown":
		default:
			st.fail("server error " + e.Code)
		}
	default:
		st.fail("unexpected " + typ)
	}
	return nil
}

// ---- HTTP fallback ----

func (d *device) runHTTP(ctx context.Context) {
	needHello := true
	d.gen = 1
	for ctx.Err() == nil {
		now := time.Now()
		d.produce(now)
		if d.finished() {
			return
		}
		if needHello {
			d.f.stats.connects.Add(1)
			h, status, err := d.httpHello(ctx)
			if err != nil {
				if !d.httpBackoff(ctx, status) {
					return
				}
				continue
			}
			d.onHello(h)
			d.produce(now) // seal what waited for a seq
			needHello = false
		}
		ch := &d.f.cfg.Chaos
		generating := d.f.generating.Load()
		if generating && due(now, d.nextReboot) {
			d.nextReboot = d.exp(now, ch.RebootEvery)
			d.reboot()
			needHello = true
			continue
		}
		if generating && d.malformed && due(now, d.nextMalformed) {
			d.nextMalformed = d.exp(now, ch.MalformedEvery)
			d.f.stats.chaosEvents.Add(1)
			d.f.stats.event("malformed frame")
			if status, _, err := d.post(ctx, d.garbage()); err == nil && status != http.StatusBadRequest {
				d.f.stats.fail("malformed body answered " + strconv.Itoa(status))
			}
			continue
		}
		if d.ring.len() > 0 {
			// One request at a time, in seq order (protocol 10).
			e := d.ring.at(0)
			d.markSent(e, now)
			status, body, err := d.post(ctx, e.frame)
			if err == nil && status == http.StatusOK {
				var a wire.Ack
				if _, derr := a.UnmarshalMsg(body); derr != nil {
					d.f.stats.fail("decode ack")
					err = derr
				} else {
					d.onAck(&a, time.Now())
					d.bo.Reset()
					continue
				}
			}
			if err == nil {
				d.f.stats.fail("batch " + strconv.Itoa(status))
			}
			needHello = true
			if !d.httpBackoff(ctx, status) {
				return
			}
			continue
		}
		if !d.f.wait(ctx, time.Until(d.nextWake(now))) {
			return
		}
	}
}

func (d *device) httpBackoff(ctx context.Context, status int) bool {
	wait := d.bo.Next(d.rng)
	switch status {
	case http.StatusTooManyRequests:
		wait += d.f.cfg.TryLater
	case http.StatusUnauthorized, http.StatusForbidden:
		wait += d.f.cfg.Policy
	}
	return d.sleep(ctx, time.Now().Add(wait))
}

func (d *device) httpHello(ctx context.Context) (*wire.Hello, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.f.baseURL+"/v1/device/hello", nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	status, body, err := d.do(req)
	if err != nil {
		return nil, 0, err
	}
	if status != http.StatusOK {
		d.f.stats.fail("hello " + strconv.Itoa(status))
		return nil, status, fmt.Errorf("hello: status %d", status)
	}
	var h wire.Hello
	if _, err := h.UnmarshalMsg(body); err != nil {
		d.f.stats.fail("decode hello")
		return nil, status, err
	}
	return &h, status, nil
}

func (d *device) post(ctx context.Context, frame []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.f.baseURL+"/v1/device/batches", bytes.NewReader(frame))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	req.Header.Set("Content-Type", "application/msgpack")
	return d.do(req)
}

func (d *device) do(req *http.Request) (int, []byte, error) {
	resp, err := d.f.client.Do(req)
	if err != nil {
		if req.Context().Err() == nil {
			d.f.stats.fail("http")
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxServerFrame))
	if err != nil {
		d.f.stats.fail("http read")
		return 0, nil, err
	}
	return resp.StatusCode, body, nil
}
