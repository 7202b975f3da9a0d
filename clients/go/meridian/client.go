package meridian

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// Transport selects how a Client talks to the server.
type Transport string

const (
	// WebSocket keeps a connection open: acks as soon as batches are
	// durable, and commands (docs/protocol.md 1).
	WebSocket Transport = "ws"
	// HTTP posts one batch per request (docs/protocol.md 10): no commands,
	// for networks or proxies that cannot keep a WebSocket.
	HTTP Transport = "http"
)

// Defaults of Config.
const (
	// DefaultRingSize: at one batch every 10 s, 64 batches ride out ten
	// minutes of outage; at most 64 × max_frame (64 KiB) = 4 MiB of memory.
	DefaultRingSize = 64
	// DefaultBackoffBase and DefaultBackoffMax are the recommendations of
	// docs/protocol.md 7.4.
	DefaultBackoffBase = time.Second
	DefaultBackoffMax  = time.Minute
	// DefaultTryLater is the extra wait after 1013 or HTTP 429 (at least
	// 30 s, docs/protocol.md 7.4).
	DefaultTryLater = 30 * time.Second
	// DefaultHealthyAfter is how long a connection must stay up after hello
	// before the backoff starts over, so a device closed right after
	// connecting does not reconnect in a tight loop (docs/protocol.md 7.4).
	DefaultHealthyAfter = time.Minute
	// defaultMaxBatch and defaultMaxFrame are the server's defaults, used to
	// split Send's readings before the first hello says otherwise.
	defaultMaxBatch = 1000
	defaultMaxFrame = 65536
	// maxIdenticalFailures is how often the server may refuse the same batch
	// as undecodable (1007 / HTTP 400) before it is dropped instead of
	// resent forever (docs/protocol.md 9).
	maxIdenticalFailures = 3
)

// Config configures a Client. Zero values mean the defaults above.
type Config struct {
	// URL is the server's base URL, e.g. http://localhost:8470 (https in
	// production, behind a TLS proxy); ws:// and wss:// URLs work as well.
	URL string
	// Token is the device token from provisioning. It is sent in the
	// Authorization header and never logged.
	Token string
	// Transport is WebSocket (default) or HTTP.
	Transport Transport
	// RingSize bounds the batches kept until acked (docs/protocol.md 7.1),
	// including those waiting for their first hello.
	RingSize int
	// StateFile, when set, persists the ring (and with it the seq counter)
	// so readings survive a restart of the process. "": memory only.
	StateFile string
	// ErrorWhenFull makes Send return ErrFull at once when the ring is full,
	// instead of blocking until acks make room.
	ErrorWhenFull bool
	// OnAck, when set, is called for every ack, in seq order, from the
	// goroutine that reads the connection: keep it short.
	OnAck func(Ack)
	// OnCommand, when set, answers commands (WebSocket only). It runs on the
	// goroutine that reads the connection and must return well within the
	// server's heartbeat (20 s): start long work elsewhere and answer at
	// once. nil answers every command with ok=false.
	OnCommand func(context.Context, Command) Result
	// Logger receives connection events (nil: discard). Tokens are never
	// logged.
	Logger *slog.Logger
	// HTTPClient is used by the HTTP transport (nil: a client with a 30 s
	// timeout: a batch is answered after its commit).
	HTTPClient *http.Client
	// BackoffBase, BackoffMax: reconnect backoff with full jitter.
	BackoffBase, BackoffMax time.Duration
	// TryLater is added to the backoff after 1013 / HTTP 429.
	TryLater time.Duration
	// HealthyAfter resets the backoff once a connection has lasted it.
	HealthyAfter time.Duration
	// DialTimeout bounds connect, upgrade and hello (DefaultDialTimeout).
	DialTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Transport == "" {
		c.Transport = WebSocket
	}
	if c.RingSize == 0 {
		c.RingSize = DefaultRingSize
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.TryLater == 0 {
		c.TryLater = DefaultTryLater
	}
	if c.HealthyAfter == 0 {
		c.HealthyAfter = DefaultHealthyAfter
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
}

// Validate reports the first bad setting, naming it and its value.
func (c *Config) Validate() error {
	if _, _, err := Endpoints(c.URL); err != nil {
		return err
	}
	switch {
	case c.Token == "":
		return errors.New("meridian: Token is empty")
	case c.Transport != WebSocket && c.Transport != HTTP:
		return fmt.Errorf("meridian: Transport %q: want %q or %q", c.Transport, WebSocket, HTTP)
	case c.RingSize < 1:
		return fmt.Errorf("meridian: RingSize %d: must be at least 1", c.RingSize)
	case c.BackoffBase < 0 || c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("meridian: BackoffBase %s, BackoffMax %s: want 0 <= base <= max", c.BackoffBase, c.BackoffMax)
	}
	return nil
}

// Reading is one measurement.
type Reading struct {
	// Time is when it was measured; the zero Time sends nil and the server
	// stamps its receive time (use it only for live readings: a reading
	// resent after an outage would get the resend time).
	Time time.Time
	// Metric is 1 to 128 bytes of [A-Za-z0-9_.:/-].
	Metric string
	Value  float64
}

// Validate applies the rules of docs/protocol.md 5.3 that do not depend on
// the server's clock or settings: the metric's alphabet and length and a
// finite value. The server's ack counts rejected readings and names up to
// five distinct reasons, but not which readings they were; a caller that
// needs to know per reading checks them here before Send. (The server's
// max_future and max_past time window is the one rule this cannot check.)
func (r Reading) Validate() error {
	if !wire.ValidMetric(r.Metric) {
		return fmt.Errorf("metric %q: must be 1-%d bytes of [A-Za-z0-9_.:/-]", r.Metric, wire.MaxMetricLen)
	}
	if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
		return fmt.Errorf("metric %q: value must be a finite number, got %v", r.Metric, r.Value)
	}
	return nil
}

// Ack is the server's answer for one durable batch (docs/protocol.md 4.3).
type Ack struct {
	Seq       uint64
	Accepted  int  // readings stored
	Rejected  int  // readings refused by validation, never stored: do not resend them
	Duplicate bool // the batch was durable already (a resend)
	// Errors holds up to 5 distinct reasons for the rejected readings.
	Errors []string
}

// Command is an operator's command (docs/protocol.md 4.4).
type Command struct {
	ID, Name string
	Payload  []byte // MessagePack; nil or a MessagePack nil when there are none
}

// Result answers a Command. Payload is MessagePack (nil: none).
type Result struct {
	OK      bool
	Payload []byte
}

// ErrFull is returned by Send when the ring is full and
// Config.ErrorWhenFull is set.
var ErrFull = errors.New("meridian: ring full")

// RefusedError ends Run: the server refused this device in a way that
// retrying will not fix without an operator — close code 1008 (device
// disabled or deleted, token revoked, or another connection with the same
// token took the session over) or HTTP 401/403 (unknown or revoked token).
type RefusedError struct {
	Code      int    // 1008, or the HTTP status
	ErrorCode string // "policy", "session_taken_over", or "" for HTTP
	Reason    string
}

func (e *RefusedError) Error() string {
	s := "meridian: device refused (" + strconv.Itoa(e.Code)
	if e.ErrorCode != "" {
		s += " " + e.ErrorCode
	}
	s += ")"
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// meta is a Client's bookkeeping per ring entry.
type meta struct {
	sent bool // written on the current connection
}

// Client is a device of protocol v1: it keeps a bounded ring of batches
// until the server acks them, resends after reconnects, and reconnects with
// backoff. Send may be called from any goroutine; Run runs the connection
// and must be called once.
type Client struct {
	cfg   Config
	log   *slog.Logger
	http  HTTPDevice
	wsURL string

	mu       sync.Mutex
	ring     Ring[meta]
	pending  []wire.Readings // batches waiting for a seq (before the first hello)
	nextSeq  uint64          // 0: unknown until hello
	maxBatch int
	maxFrame int
	file     *RingFile
	space    chan struct{} // closed and replaced when the ring gains room
	wake     chan struct{} // a new batch to write (capacity 1)
	fails    map[uint64]int

	rng *rand.Rand
	bo  Backoff
	ran atomic.Bool
}

// New checks cfg and builds a Client; with Config.StateFile it loads the
// persisted ring.
func New(cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	wsURL, base, _ := Endpoints(cfg.URL)
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger,
		http:     HTTPDevice{Client: cfg.HTTPClient, BaseURL: base, Token: cfg.Token},
		wsURL:    wsURL,
		ring:     NewRing[meta](cfg.RingSize),
		maxBatch: defaultMaxBatch,
		maxFrame: defaultMaxFrame,
		space:    make(chan struct{}),
		wake:     make(chan struct{}, 1),
		fails:    map[uint64]int{},
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		bo:       Backoff{Base: cfg.BackoffBase, Max: cfg.BackoffMax},
	}
	if cfg.StateFile != "" {
		rf, recs, err := OpenRingFile(cfg.StateFile, cfg.RingSize)
		if err != nil {
			return nil, fmt.Errorf("meridian: state file: %w", err)
		}
		c.file = rf
		for _, r := range recs {
			// The persisted ring carries the counter: continue after it.
			c.nextSeq = r.Seq + 1
			if len(r.Frame) > 0 { // an empty frame only marks the counter
				c.ring.Push(Entry[meta]{Seq: r.Seq, Frame: r.Frame})
			}
		}
	}
	return c, nil
}

// Send queues readings as one batch (or several, when they exceed the
// server's max_batch or max_frame) in the ring; Run sends it and keeps it
// until acked. Send returns once the batch is queued, not when it is
// durable: watch OnAck for that. When the ring is full Send blocks until
// acks make room or ctx ends, or returns ErrFull with Config.ErrorWhenFull.
func (c *Client) Send(ctx context.Context, readings []Reading) error {
	if len(readings) == 0 {
		return errors.New("meridian: Send with no readings")
	}
	rs := toWire(readings)
	for {
		c.mu.Lock()
		if c.ring.Len()+len(c.pending) < c.cfg.RingSize {
			c.pending = append(c.pending, rs)
			c.sealLocked()
			c.mu.Unlock()
			c.signal()
			return nil
		}
		space := c.space
		c.mu.Unlock()
		if c.cfg.ErrorWhenFull {
			return ErrFull
		}
		select {
		case <-space:
		case <-ctx.Done():
			return fmt.Errorf("meridian: send: %w", ctx.Err())
		}
	}
}

func toWire(readings []Reading) wire.Readings {
	rs := make(wire.Readings, len(readings))
	for i, r := range readings {
		rs[i] = wire.Reading{Metric: r.Metric, Value: r.Value}
		if !r.Time.IsZero() {
			rs[i].T, rs[i].HasT = r.Time.UnixMilli(), true
		}
	}
	return rs
}

// Pending is the number of batches not yet acked.
func (c *Client) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ring.Len() + len(c.pending)
}

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// sealLocked gives pending readings their seqs, splitting them to the
// server's limits (docs/protocol.md 5.2), while the ring has room.
func (c *Client) sealLocked() {
	for c.nextSeq != 0 && len(c.pending) > 0 && !c.ring.Full() {
		rs := c.pending[0]
		n := c.fit(rs)
		if n < len(rs) {
			c.pending[0] = rs[n:]
			rs = rs[:n]
		} else {
			c.pending[0] = nil
			c.pending = c.pending[1:]
		}
		seq := c.nextSeq
		c.nextSeq++
		b := wire.Batch{Type: wire.TypeBatch, Seq: seq, Readings: rs}
		frame, err := b.MarshalMsg(make([]byte, 0, b.Msgsize()))
		if err != nil { // cannot happen for plain values
			c.log.Error("encode batch", "seq", seq, "err", err)
			continue
		}
		c.ring.Push(Entry[meta]{Seq: seq, Frame: frame})
		if c.file != nil {
			if err := Append(c.file, seq, frame, &c.ring); err != nil {
				c.log.Warn("persist ring", "err", err)
			}
		}
	}
}

// fit is how many of rs go in one batch under max_batch and max_frame.
func (c *Client) fit(rs wire.Readings) int {
	n := min(len(rs), c.maxBatch)
	const header = 32 // map, "type", "batch", "seq", "readings", array header
	size := header
	for i := 0; i < n; i++ {
		size += wire.Readings(rs[i : i+1]).Msgsize()
		if size > c.maxFrame && i > 0 {
			return i
		}
	}
	return max(n, 1)
}

// freedLocked wakes Senders blocked on a full ring.
func (c *Client) freedLocked() {
	close(c.space)
	c.space = make(chan struct{})
}

// onHello applies docs/protocol.md 7.2.
func (c *Client) onHello(h *wire.Hello) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.MaxBatch > 0 {
		c.maxBatch = h.MaxBatch
	}
	if h.MaxFrame > 0 {
		c.maxFrame = h.MaxFrame
	}
	if c.ring.DropThrough(h.Acked, nil) > 0 {
		c.freedLocked()
	}
	c.nextSeq = max(c.nextSeq, h.Acked+1, c.ring.Last()+1)
	for i := 0; i < c.ring.Len(); i++ {
		c.ring.At(i).Meta.sent = false
	}
	c.sealLocked()
}

// onAck drops acked entries and reports the ack.
func (c *Client) onAck(a *wire.Ack) {
	c.mu.Lock()
	if c.ring.DropThrough(a.Seq, nil) > 0 {
		delete(c.fails, a.Seq)
		c.freedLocked()
		c.sealLocked()
	}
	c.mu.Unlock()
	c.signal()
	if a.Rejected > 0 {
		c.log.Warn("readings rejected", "seq", a.Seq, "rejected", a.Rejected, "errors", a.Errors)
	}
	if c.cfg.OnAck != nil {
		c.cfg.OnAck(Ack{Seq: a.Seq, Accepted: a.Accepted, Rejected: a.Rejected, Duplicate: a.Duplicate, Errors: a.Errors})
	}
}

// refusedFrame handles a batch the server refused as malformed (1002,
// 1007, 1009 / HTTP 400, 413): the oldest unacked one, since acks come in
// order. A batch too big for new limits is re-split (docs/protocol.md 7.3);
// one refused as undecodable is dropped after a few identical failures
// rather than resent forever (section 9).
func (c *Client) refusedFrame(tooBig bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring.Len() == 0 {
		return
	}
	e := c.ring.At(0)
	if tooBig {
		var b wire.Batch
		if _, err := b.UnmarshalMsg(e.Frame); err == nil && len(b.Readings) > 1 {
			h := len(b.Readings) / 2
			c.pending = append(c.pending, b.Readings[:h], b.Readings[h:])
		}
		c.log.Warn("batch too big for the server's limits: re-split", "seq", e.Seq)
		c.ring.DropThrough(e.Seq, nil)
		c.freedLocked()
		return
	}
	c.fails[e.Seq]++
	if c.fails[e.Seq] >= maxIdenticalFailures {
		c.log.Error("server refuses a batch as invalid: dropped", "seq", e.Seq, "failures", c.fails[e.Seq])
		delete(c.fails, e.Seq)
		c.ring.DropThrough(e.Seq, nil)
		c.freedLocked()
	}
}

// Run connects and keeps the device connected until ctx ends (it then
// returns nil) or the server refuses the device (a *RefusedError). Batches
// queued by Send are written in seq order; after every reconnect the unacked
// ones are resent. With a StateFile, Run rewrites it from the ring when it
// returns. Run must be called once.
func (c *Client) Run(ctx context.Context) (err error) {
	if !c.ran.CompareAndSwap(false, true) {
		return errors.New("meridian: Run called twice")
	}
	if c.file != nil {
		defer func() { err = errors.Join(err, c.saveState()) }()
	}
	for {
		var err error
		var connected time.Time
		if c.cfg.Transport == HTTP {
			err = c.runHTTP(ctx)
		} else {
			connected, err = c.session(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) {
			c.log.Error("device refused by the server: stopping", "code", refused.Code, "error", refused.ErrorCode, "reason", refused.Reason)
			return err
		}
		if !connected.IsZero() && time.Since(connected) >= c.cfg.HealthyAfter {
			c.bo.Reset()
		}
		var wait time.Duration
		var ce *CloseError
		var he *HandshakeError
		switch {
		case errors.As(err, &ce) && ce.Code == wire.CloseTryAgainLater,
			errors.As(err, &he) && he.Status == http.StatusTooManyRequests:
			wait = c.bo.Next(c.rng) + c.cfg.TryLater
		case errors.As(err, &he) && he.RetryAfter > 0:
			// The server named the time, drawn per device over the time it
			// needs for its whole refused fleet: wait that plus at most one
			// backoff base, without growing the backoff. A growing
			// full-jitter window stacked on Retry-After kept the last
			// devices of a 19,000-device reconnect storm out for seconds
			// after the server had room (docs/benchmarks.md).
			wait = he.RetryAfter + time.Duration(c.rng.Int64N(int64(c.cfg.BackoffBase)+1))
		default:
			wait = c.bo.Next(c.rng)
		}
		c.log.Info("disconnected", "err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// saveState compacts the state file to the live ring. An empty ring leaves
// one record with an empty frame, so the seq counter survives too: a
// restarted Client then seals new batches before it has seen a hello.
// (Readings queued while the counter was still unknown, before the first
// hello of a fresh device, live in memory only.)
func (c *Client) saveState() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	recs := Records(&c.ring)
	if len(recs) == 0 && c.nextSeq > 1 {
		recs = append(recs, Record{Seq: c.nextSeq - 1})
	}
	if err := c.file.Rewrite(recs); err != nil {
		return fmt.Errorf("meridian: save state: %w", err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// session runs one WebSocket connection: this goroutine writes, a second
// one reads (acks, commands, pings). It returns when the connection ends,
// with when hello arrived (zero if it never did).
func (c *Client) session(ctx context.Context) (time.Time, error) {
	conn, hello, err := Dial(ctx, c.wsURL, DialOptions{Token: c.cfg.Token, Timeout: c.cfg.DialTimeout})
	if err != nil {
		var he *HandshakeError
		if errors.As(err, &he) && (he.Status == http.StatusUnauthorized || he.Status == http.StatusForbidden) {
			return time.Time{}, &RefusedError{Code: he.Status, Reason: "token refused"}
		}
		var ce *CloseError
		if errors.As(err, &ce) && ce.Code == wire.ClosePolicy {
			return time.Time{}, &RefusedError{Code: ce.Code, ErrorCode: ce.ErrorCode, Reason: ce.Reason}
		}
		return time.Time{}, err
	}
	connected := time.Now()
	c.log.Info("connected", "device", hello.Device, "session", hello.Session, "acked", hello.Acked)
	c.onHello(hello)
	c.signal()

	// The server pings every heartbeat; silence for three means the
	// connection is dead even if TCP has not noticed.
	idle := 3 * time.Duration(max(hello.Heartbeat, 1)) * time.Second
	readErr := make(chan error, 1)
	go func() { readErr <- c.readLoop(ctx, conn, idle) }()

	for {
		if err := c.writeUnsent(conn); err != nil {
			_ = conn.Abort()
			<-readErr
			return connected, err
		}
		select {
		case <-c.wake:
		case err := <-readErr:
			_ = conn.Abort()
			return connected, c.classify(err)
		case <-ctx.Done():
			_ = conn.Close(1000, "device stopping")
			<-readErr
			return connected, nil
		}
	}
}

// classify turns a close into what Run does next.
func (c *Client) classify(err error) error {
	var ce *CloseError
	if !errors.As(err, &ce) {
		return err
	}
	switch {
	case ce.Code == wire.ClosePolicy:
		return &RefusedError{Code: ce.Code, ErrorCode: ce.ErrorCode, Reason: ce.Reason}
	case ce.Code == wire.CloseTooBig, ce.ErrorCode == "batch_too_large":
		c.refusedFrame(true)
	case ce.Code == wire.CloseInvalidData, ce.Code == wire.CloseProtocol:
		c.refusedFrame(false)
	}
	return err
}

// writeUnsent writes, in seq order, the ring entries not yet written on
// this connection.
func (c *Client) writeUnsent(conn *Conn) error {
	for {
		c.mu.Lock()
		var frame []byte
		var e *Entry[meta]
		for i := 0; i < c.ring.Len(); i++ {
			if x := c.ring.At(i); !x.Meta.sent {
				e, frame = x, x.Frame
				break
			}
		}
		if e == nil {
			c.mu.Unlock()
			return nil
		}
		e.Meta.sent = true // before the write: an ack may race it
		c.mu.Unlock()
		if err := conn.WriteMessage(frame); err != nil {
			return err
		}
	}
}

// readLoop reads until the connection ends.
func (c *Client) readLoop(ctx context.Context, conn *Conn, idle time.Duration) error {
	last := time.Now()
	for {
		err := conn.Poll(time.Now().Add(time.Second), func(typ string, p []byte) error {
			last = time.Now()
			return c.handle(ctx, conn, typ, p)
		})
		if err != nil {
			return err
		}
		if conn.lastFrame.After(last) {
			last = conn.lastFrame
		}
		if time.Since(last) > idle {
			return &CloseError{Code: CloseLost, Err: errors.New("no frame from the server for three heartbeats")}
		}
	}
}

func (c *Client) handle(ctx context.Context, conn *Conn, typ string, p []byte) error {
	switch typ {
	case wire.TypeAck:
		var a wire.Ack
		if _, err := a.UnmarshalMsg(p); err != nil {
			c.log.Warn("undecodable ack", "err", err)
			return nil
		}
		c.onAck(&a)
	case wire.TypeCommand:
		var cmd wire.Command
		if _, err := cmd.UnmarshalMsg(p); err != nil {
			c.log.Warn("undecodable command", "err", err)
			return nil
		}
		res := Result{Payload: msgp.AppendString(nil, "no command handler")}
		if c.cfg.OnCommand != nil {
			res = c.cfg.OnCommand(ctx, Command{ID: cmd.ID, Name: cmd.Name, Payload: cmd.Payload})
		}
		out, err := (&wire.Result{Type: wire.TypeResult, ID: cmd.ID, OK: res.OK, Payload: res.Payload}).MarshalMsg(nil)
		if err != nil {
			return fmt.Errorf("meridian: encode result: %w", err)
		}
		return conn.WriteMessage(out)
	case wire.TypeError:
		var e wire.Error
		_, _ = e.UnmarshalMsg(p)
		c.log.Warn("server error", "code", e.Code, "message", e.Message)
	}
	// Other types, including ones a later protocol adds: ignored (section 3).
	return nil
}

// runHTTP is the HTTP fallback loop: hello, then one POST at a time in seq
// order (docs/protocol.md 10). It returns on an error that needs a backoff.
func (c *Client) runHTTP(ctx context.Context) error {
	h, status, err := c.http.Hello(ctx)
	if err == nil && status != http.StatusOK {
		err = c.httpStatus(status)
	}
	if err != nil {
		return err
	}
	c.onHello(h)
	for {
		c.mu.Lock()
		var frame []byte
		if c.ring.Len() > 0 {
			frame = c.ring.At(0).Frame
		}
		c.mu.Unlock()
		if frame == nil {
			select {
			case <-c.wake:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		status, body, err := c.http.Post(ctx, frame)
		if err != nil {
			return err
		}
		switch status {
		case http.StatusOK:
			var a wire.Ack
			if _, err := a.UnmarshalMsg(body); err != nil {
				return fmt.Errorf("meridian: decode ack: %w", err)
			}
			c.onAck(&a)
			c.bo.Reset()
		case http.StatusBadRequest:
			c.refusedFrame(false)
			return c.httpStatus(status)
		case http.StatusRequestEntityTooLarge:
			c.refusedFrame(true)
			return c.httpStatus(status)
		default:
			return c.httpStatus(status)
		}
	}
}

func (c *Client) httpStatus(status int) error {
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		return &RefusedError{Code: status, Reason: "token refused"}
	}
	return &HandshakeError{Status: status}
}
