package sim

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/tinylib/msgp/msgp"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
	"github.com/meridian-iot/meridian/ingest/wire"
)

var (
	errChaos    = errors.New("chaos")
	errFinished = errors.New("finished")
	errStopped  = errors.New("stopped")
)

// device is one simulated device. Everything in it is owned by the device's
// single goroutine: the connection (a meridian.Conn, the Go client's
// connection) is polled with deadlines set to the next thing the device
// must do (sample, flush, chaos), so one goroutine both reads acks and
// writes batches, and thousands of devices cost one small goroutine each.
// The protocol's mechanics (framing, handshake, hello, pings, close codes,
// the HTTP fallback, the ring and its file, backoff) are the client
// package's; the device adds the schedule, the chaos and the ledger.
type device struct {
	f       *Fleet
	id      string
	token   string
	useHTTP bool
	rng     *rand.Rand
	sig     *Signals
	ring    meridian.Ring[batchMeta]
	file    *meridian.RingFile
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
	bo        meridian.Backoff

	nextDisconnect, nextStall, nextReboot, nextMalformed time.Time
	stallUntil                                           time.Time
	expectReject                                         bool

	conn        *meridian.Conn
	gen         uint32 // connection generation
	lastSentSeq uint64 // highest seq written on the current connection
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
	return d.f.generating.Load() == false && len(d.pending) == 0 && d.ring.Len() == 0
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
	if d.ring.Full() {
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
	e := entry{Seq: seq, Frame: frame, Meta: batchMeta{n: n}}
	if d.led != nil {
		e.Meta.ver = d.led.Sent(seq, rs)
	}
	d.ring.Push(e)
	d.f.stats.inRing.Add(1)
	if d.file != nil {
		if err := meridian.Append(d.file, e.Seq, e.Frame, &d.ring); err != nil {
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
	if len(d.pending) > 0 && d.nextSeq != 0 && !d.ring.Full() {
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
	k := d.ring.DropThrough(h.Acked, func(*entry) { d.f.stats.helloDropped.Add(1) })
	d.f.stats.inRing.Add(-int64(k))
	if d.led != nil {
		d.led.Cover(h.Acked)
		if !d.helloSeen {
			// Entries restored from the state file join this run's ledger
			// once hello has dropped the ones already durable.
			for i := 0; i < d.ring.Len(); i++ {
				e := d.ring.At(i)
				if e.Meta.ver == nil {
					var b wire.Batch
					if _, err := b.UnmarshalMsg(e.Frame); err == nil {
						e.Meta.ver, e.Meta.n = d.led.Sent(e.Seq, b.Readings), len(b.Readings)
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
			d.nextSeq += uint64(d.ring.Limit())
		}
	}
	d.nextSeq = max(d.nextSeq, h.Acked+1, d.ring.Last()+1)
}

// onAck drops acked entries and records the ack.
func (d *device) onAck(a *wire.Ack, now time.Time) {
	st := d.f.stats
	k := d.ring.DropThrough(a.Seq, func(e *entry) {
		if e.Seq != a.Seq {
			// An earlier ack was lost with a connection; this one covers it.
			st.helloDropped.Add(1)
			return
		}
		if e.Meta.conn == d.gen && e.Meta.sentAt != 0 {
			st.ackLatency(now.Sub(time.Unix(0, e.Meta.sentAt)))
		}
		st.batchesAcked.Add(1)
		st.readingsAcked.Add(int64(e.Meta.n))
		st.readingsRej.Add(int64(a.Rejected))
		if a.Duplicate {
			st.dupAcks.Add(1)
		}
		if d.led != nil {
			d.led.Ack(e.Meta.ver, a)
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
		d.f.stats.inRing.Add(-int64(d.ring.Len()))
		d.ring.Clear(func(e *entry) { // sent, fate unknown
			if d.led != nil {
				d.led.Abandon(e.Meta.ver)
			}
		})
	}
	d.nextSeq, d.rebooted = 0, true
}

func (d *device) markSent(e *entry, now time.Time) {
	st := d.f.stats
	if e.Meta.sends == 0 {
		st.readingsSent.Add(int64(e.Meta.n))
		st.batchesSent.Add(1)
	} else {
		st.readingsResent.Add(int64(e.Meta.n))
	}
	e.Meta.sends++
	e.Meta.sentAt, e.Meta.conn = now.UnixNano(), d.gen
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
			_ = d.conn.Abort()
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
	conn, hello, err := meridian.Dial(ctx, d.f.wsURL, meridian.DialOptions{
		Token:        d.token,
		Timeout:      d.f.cfg.DialTimeout,
		WriteTimeout: d.f.cfg.WriteTimeout,
		WriteBuffers: &d.f.bufs,
		Rand:         d.rng.Uint32,
	})
	if err != nil {
		return d.connEnded(err)
	}
	d.conn = conn
	d.onHello(hello)
	d.lastSentSeq = 0
	st.connected.Add(1)
	defer st.connected.Add(-1)
	healthyAt := time.Now().Add(10 * time.Second)

	for {
		now := time.Now()
		if ctx.Err() != nil {
			_ = d.conn.Close(1000, "device stopping")
			return 1000, errStopped
		}
		if !healthyAt.IsZero() && now.After(healthyAt) {
			d.bo.Reset()
			healthyAt = time.Time{}
		}
		d.produce(now)
		if err := d.sendRing(now); err != nil {
			st.fail("write")
			return meridian.CloseLost, err
		}
		if d.finished() {
			_ = d.conn.Close(1000, "done")
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
		if err := d.conn.Poll(wake, d.handle); err != nil {
			return d.connEnded(err)
		}
	}
}

// connEnded counts why a connection (or its handshake) ended and returns
// the code runWS backs off on: a close code, an HTTP status, or 1006.
func (d *device) connEnded(err error) (int, error) {
	st := d.f.stats
	var he *meridian.HandshakeError
	var ce *meridian.CloseError
	switch {
	case errors.As(err, &he):
		st.fail("handshake " + strconv.Itoa(he.Status))
		return he.Status, err
	case errors.As(err, &ce) && ce.Code == meridian.CloseLost:
		switch {
		case errors.Is(err, io.EOF):
			st.fail("connection lost")
		case errors.Is(err, syscall.ECONNREFUSED):
			st.fail("dial refused")
		default:
			st.fail("read")
		}
		return ce.Code, err
	case errors.As(err, &ce):
		switch ce.Code {
		case wire.CloseTooBig:
			if ce.Reason == "server frame over the device's limit" {
				st.fail("frame too big")
				return ce.Code, err
			}
		case wire.CloseUnsupported:
			if ce.Reason == "fragmented server frame" {
				st.fail("fragmented frame")
				return ce.Code, err
			}
		}
		st.closed(ce.Code)
		switch {
		case ce.Code == wire.CloseInvalidData && d.expectReject:
			d.expectReject = false
		case ce.Code == wire.CloseGoingAway, ce.Code == 1000:
		default:
			st.fail("close " + strconv.Itoa(ce.Code))
			d.f.log.Debug("server closed", "device", d.id, "code", ce.Code, "reason", ce.Reason)
		}
		return ce.Code, err
	case errors.Is(err, syscall.ECONNREFUSED):
		st.fail("dial refused")
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		st.fail("dial timeout")
	case errors.Is(err, meridian.ErrNoHello):
		st.fail("no hello")
	case errors.Is(err, meridian.ErrBadHello):
		st.fail("hello: " + err.Error())
	default:
		st.fail("dial")
	}
	return meridian.CloseLost, err
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
		_ = d.conn.Abort()
		d.reboot()
		return meridian.CloseLost, errChaos
	case due(now, d.nextDisconnect):
		d.nextDisconnect = d.exp(now, ch.DisconnectEvery)
		st.chaosEvents.Add(1)
		st.event("disconnect")
		_ = d.conn.Abort()
		return meridian.CloseLost, errChaos
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
		// WriteMessage does not check its bytes: the server answers 1007.
		if err := d.conn.WriteMessage(d.garbage()); err != nil {
			return meridian.CloseLost, err
		}
	}
	return 0, nil
}

// sendRing writes the ring entries not yet written on this connection, in
// seq order (resends first, then new batches).
func (d *device) sendRing(now time.Time) error {
	for i := 0; i < d.ring.Len(); i++ {
		e := d.ring.At(i)
		if e.Seq <= d.lastSentSeq {
			continue
		}
		if err := d.conn.WriteMessage(e.Frame); err != nil {
			return err
		}
		d.markSent(e, now)
		d.lastSentSeq = e.Seq
	}
	return nil
}

// handle processes a data frame on an established session.
func (d *device) handle(typ string, p []byte) error {
	st := d.f.stats
	switch typ {
	case "":
		st.fail("undecodable server frame")
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
		if err := d.conn.WriteMessage(out); err != nil {
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
		if d.ring.Len() > 0 {
			// One request at a time, in seq order (protocol 10).
			e := d.ring.At(0)
			d.markSent(e, now)
			status, body, err := d.post(ctx, e.Frame)
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

// httpDevice is the client package's HTTP fallback for this device; it is
// built per use so an idle device holds nothing for it.
func (d *device) httpDevice() *meridian.HTTPDevice {
	return &meridian.HTTPDevice{Client: d.f.client, BaseURL: d.f.baseURL, Token: d.token}
}

func (d *device) httpHello(ctx context.Context) (*wire.Hello, int, error) {
	h, status, err := d.httpDevice().Hello(ctx)
	switch {
	case err != nil && status == 0:
		if ctx.Err() == nil {
			d.f.stats.fail("http")
		}
		return nil, 0, err
	case err != nil && status == http.StatusOK:
		d.f.stats.fail("decode hello")
		return nil, status, err
	case err != nil:
		d.f.stats.fail("http read")
		return nil, status, err
	case status != http.StatusOK:
		d.f.stats.fail("hello " + strconv.Itoa(status))
		return nil, status, errors.New("hello: status " + strconv.Itoa(status))
	}
	return h, status, nil
}

func (d *device) post(ctx context.Context, frame []byte) (int, []byte, error) {
	status, body, err := d.httpDevice().Post(ctx, frame)
	if err != nil {
		switch {
		case status != 0:
			d.f.stats.fail("http read")
		case ctx.Err() == nil:
			d.f.stats.fail("http")
		}
	}
	return status, body, err
}
