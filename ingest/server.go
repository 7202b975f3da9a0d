package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
	"github.com/meridian-iot/meridian/ingest/wsconn"
)

// Limiter applies per-device rate limits. Optional; nil means unlimited.
type Limiter interface {
	// AllowConnect reports whether the device may open another connection now.
	AllowConnect(device string) bool
	// AllowReadings reports whether the device may submit n more readings now.
	AllowReadings(device string, n int) bool
}

// SessionInfo describes a device session for presence and history.
type SessionInfo struct {
	ID          string
	Device      string
	Node        string
	RemoteAddr  string
	Transport   string // "ws"
	Started     time.Time
	Ended       time.Time // zero while open
	CloseReason string
	Readings    int64
}

// SessionRecorder is told when device sessions open and close (presence,
// last seen, the device_sessions history). Calls are made synchronously from
// the session's goroutine with a short timeout context; an error is logged
// and never affects the session.
type SessionRecorder interface {
	SessionOpened(ctx context.Context, s SessionInfo) error
	SessionClosed(ctx context.Context, s SessionInfo) error
}

// Options are the optional collaborators of a Server.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Sessions   SessionRecorder
	Limits     Limiter
	// Committed is called, from a pipeline writer, for every batch that was
	// stored (not for duplicates). It must not block: subscribers own their
	// own bounded queues.
	Committed func(telemetry.Batch)
	// Results is called, from the device's read loop, with every command
	// result a device sends. It must not block.
	Results func(telemetry.CommandResult)
	// Presence is called when a device's WebSocket session opens or closes
	// on this node (a takeover reports the new session's online only). It
	// must not block.
	Presence func(telemetry.Presence)
	// Now is the clock; tests may replace it. Defaults to time.Now.
	Now func() time.Time
}

// Server is the device endpoint: WebSocket sessions and the HTTP fallback,
// feeding one pipeline.
type Server struct {
	cfg   Config
	store Store
	auth  Authenticator
	opts  Options
	log   *slog.Logger
	m     *metrics
	pipe  *pipeline
	now   func() time.Time

	mu       sync.Mutex
	sessions map[string]*session // by device id; one live session per device
	// every holds every registered session until its cleanup, including
	// taken-over ones still writing their last acks: Shutdown aborts these.
	every    map[*session]struct{}
	draining atomic.Bool

	conns atomic.Int64 // live WebSocket sessions (MaxConnections)
	adm   *admission   // handshakes in progress (MaxHandshakes), waits and Retry-After

	// The connection core's engine (timer wheel, poller) starts with the
	// first WebSocket session and stops at the end of Shutdown.
	engOnce sync.Once
	eng     atomic.Pointer[wsconn.Engine] // read by Shutdown, set once by engine()
	wsCfg   wsconn.Config

	// life ends when Shutdown's deadline and margin have passed; it bounds
	// the session-close writes to the store.
	life     context.Context
	lifeStop context.CancelFunc
	// closingAll ends when Shutdown starts closing sessions; it bounds the
	// hello of sessions still starting (one shared parent: deriving from a
	// per-session context would cost each idle session its children map).
	closingAll context.Context
	closeAll   context.CancelFunc

	httpMu   sync.Mutex
	httpBody map[*http.ResponseController]struct{} // fallback bodies being read

	runOnce  sync.Once
	stopped  chan struct{} // closed when Shutdown finished
	sessWG   sync.WaitGroup
	httpWG   sync.WaitGroup // in-flight HTTP fallback requests
	shutOnce sync.Once
	shutErr  error
}

// New builds a Server; call Run to start its pipeline and mount Handler.
func New(cfg Config, store Store, auth Authenticator, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || auth == nil {
		return nil, errors.New("ingest: store and authenticator are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		cfg:      cfg,
		store:    store,
		auth:     auth,
		opts:     opts,
		log:      opts.Logger,
		m:        newMetrics(opts.Registerer),
		now:      opts.Now,
		sessions: make(map[string]*session),
		every:    make(map[*session]struct{}),
		stopped:  make(chan struct{}),
		adm:      newAdmission(cfg.MaxHandshakes),
		httpBody: make(map[*http.ResponseController]struct{}),
		wsCfg: wsconn.Config{
			MaxMessage:   int64(cfg.MaxFrame),
			Idle:         2 * cfg.Heartbeat, // "no frame or pong for two heartbeat intervals"
			Ping:         cfg.Heartbeat,
			WriteTimeout: cfg.WriteTimeout,
		},
	}
	s.life, s.lifeStop = context.WithCancel(context.Background())
	s.closingAll, s.closeAll = context.WithCancel(context.Background())
	s.pipe = newPipeline(cfg, store, s.log, s.m, opts.Committed)
	return s, nil
}

// Run starts the pipeline writers and blocks until Shutdown has completed or
// ctx ends (then it shuts down with the configured grace).
func (s *Server) Run(ctx context.Context) error {
	s.runOnce.Do(s.pipe.start)
	select {
	case <-s.stopped:
		return s.shutErr
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
		defer cancel()
		return s.Shutdown(sctx)
	}
}

// engine returns the connection engine, starting it on first use. Its
// wheel ticks at a quarter heartbeat (at most 1 s), so pings and idle
// closes are at most that late.
func (s *Server) engine() *wsconn.Engine {
	s.engOnce.Do(func() {
		tick := min(max(s.cfg.Heartbeat/4, 10*time.Millisecond), time.Second)
		e, err := wsconn.NewEngine(wsconn.EngineConfig{Tick: tick, Blocking: s.cfg.BlockingReaders})
		if err != nil {
			s.log.Warn("connection poller unavailable, using a reader goroutine per session", "err", err)
			e, _ = wsconn.NewEngine(wsconn.EngineConfig{Tick: tick, Blocking: true})
		}
		s.eng.Store(e)
		s.log.Debug("device connection engine", "mode", e.Mode())
	})
	return s.eng.Load()
}

// Handler serves /v1/device (WebSocket), /v1/device/batches and
// /v1/device/hello (HTTP fallback).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/device", s.serveWS)
	mux.HandleFunc("/v1/device/batches", s.serveBatch)
	mux.HandleFunc("/v1/device/hello", s.serveHello)
	return mux
}

// Ready reports whether the server can accept and acknowledge data.
func (s *Server) Ready(ctx context.Context) error {
	if s.draining.Load() {
		return errShuttingDown
	}
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return s.pipe.health()
}

// Kick closes the device's live session with 1008 and reason: used when a
// device is disabled, deleted, or its token revoked.
func (s *Server) Kick(device, reason string) {
	s.mu.Lock()
	sess := s.sessions[device]
	s.mu.Unlock()
	if sess != nil {
		sess.close(wsconn.Error{Code: wire.ClosePolicy, Kind: "policy", Reason: reason})
	}
}

// ErrCommandTooLarge: the command would not fit the device's max_frame.
var ErrCommandTooLarge = errors.New("command too large")

// SendCommand queues a command frame to the device's live session.
func (s *Server) SendCommand(device string, c telemetry.Command) error {
	s.mu.Lock()
	sess := s.sessions[device]
	s.mu.Unlock()
	if sess == nil || !sess.helloSent.Load() {
		return telemetry.ErrOffline
	}
	payload := c.Payload
	if len(payload) == 0 {
		payload = []byte{0xc0} // nil
	}
	// A device never has to accept a frame larger than the max_frame it was
	// told in hello; commands honour the same bound.
	if len(payload)+len(c.ID)+len(c.Name)+64 > s.cfg.MaxFrame {
		return fmt.Errorf("%w: command frame would exceed max_frame (%d bytes)", ErrCommandTooLarge, s.cfg.MaxFrame)
	}
	data, err := (&wire.Command{Type: wire.TypeCommand, ID: c.ID, Name: c.Name, Payload: payload}).MarshalMsg(nil)
	if err != nil {
		return fmt.Errorf("encode command: %w", err)
	}
	if !sess.sendCommand(data) {
		return telemetry.ErrCommandQueueFull
	}
	return nil
}

// TakeOver closes the device's live session here because another node now
// holds it: 1008 with error code session_taken_over, exactly as a second
// connection to this node would (docs/protocol.md).
func (s *Server) TakeOver(device string) {
	s.mu.Lock()
	sess := s.sessions[device]
	s.mu.Unlock()
	if sess != nil {
		sess.close(takenOver)
	}
}

// Online reports whether the device has a live WebSocket session here that
// has been sent its hello: from then on SendCommand accepts commands for it
// (before, a registered session still refuses them as offline).
func (s *Server) Online(device string) bool {
	s.mu.Lock()
	sess := s.sessions[device]
	s.mu.Unlock()
	return sess != nil && sess.helloSent.Load()
}

// takenOver ends a session whose device connected again (here or on
// another node): 1008 with error code session_taken_over.
var takenOver = wsconn.Error{Code: wire.ClosePolicy, Kind: "session_taken_over", Reason: "session taken over"}

// shutdownMargin is how long Shutdown waits past ctx for sessions to finish
// once their sockets were closed without ceremony: enough for the
// session-close write to the store (bounded by the same deadline) and
// cleanup, short enough that serve's stop order holds whatever clients do.
const shutdownMargin = time.Second

// Shutdown drains gracefully, in the order of docs/architecture.md: stop
// accepting and stop reading devices (WebSocket reads and HTTP fallback
// bodies), commit and ack what was read, close every device with 1001 after
// its acks, then stop the writers and the connection engine. If ctx ends
// first, uncommitted batches are abandoned unacked (devices resend them)
// and sockets that still have not closed are aborted. Shutdown returns only
// when every session has finished, at most shutdownMargin after ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.runOnce.Do(s.pipe.start) // a never-run server still drains cleanly
		s.draining.Store(true)
		all := s.liveSessions()
		for _, sess := range all {
			sess.conn.StopReading()
		}
		s.stopHTTPReads()
		s.shutErr = s.pipe.drain(ctx)
		httpDone := make(chan struct{})
		go func() { s.httpWG.Wait(); close(httpDone) }()
		select {
		case <-httpDone:
		case <-ctx.Done():
		}
		s.closeAll()
		for _, sess := range s.liveSessions() {
			sess.close(wsconn.Error{Code: wire.CloseGoingAway, Kind: "shutdown", Reason: "server shutting down"})
		}
		done := make(chan struct{})
		go func() { s.sessWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			// Peers that do not take our writes: close their sockets now,
			// and bound the store writes of their cleanup — armed first,
			// because Abort runs a session's cleanup on this goroutine and
			// with the store hung each would wait for its own timeout.
			margin := time.AfterFunc(shutdownMargin/2, s.lifeStop)
			defer margin.Stop()
			for _, sess := range s.registeredSessions() {
				sess.conn.Abort()
			}
		}
		if waitFor(done, shutdownMargin) && s.eng.Load() != nil {
			s.eng.Load().Close() // every attached connection has finished
		} else if !waitFor(done, 0) {
			s.log.Error("device sessions still running after shutdown_grace and margin")
		}
		if !waitFor(httpDone, shutdownMargin) {
			s.log.Error("HTTP fallback requests still running after shutdown_grace and margin")
		}
		s.lifeStop()
		s.closeAll()
		close(s.stopped)
	})
	return s.shutErr
}

// waitFor reports whether ch closed within d.
func waitFor(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

func (s *Server) liveSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	return all
}

// registeredSessions is every session not yet cleaned up, taken-over ones
// included.
func (s *Server) registeredSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]*session, 0, len(s.every))
	for sess := range s.every {
		all = append(all, sess)
	}
	return all
}

// register makes sess the device's live session, closing an older one with
// 1008 (one session per device) and returning it. It fails while draining.
func (s *Server) register(sess *session) (*session, bool) {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return nil, false
	}
	old := s.sessions[sess.device]
	s.sessions[sess.device] = sess
	s.every[sess] = struct{}{}
	sess.registered = true
	s.sessWG.Add(1)
	s.mu.Unlock()
	if old != nil {
		old.close(takenOver)
	}
	return old, true
}

// unregister removes sess; it reports whether sess was still the device's
// live session (false after a takeover: the device is still online).
func (s *Server) unregister(sess *session) bool {
	s.mu.Lock()
	last := s.sessions[sess.device] == sess
	if last {
		delete(s.sessions, sess.device)
	}
	delete(s.every, sess)
	s.mu.Unlock()
	s.sessWG.Done()
	return last
}

// authenticate extracts the device token (Authorization: Bearer, or ?token=
// for stacks that cannot set headers) and resolves it. status is the HTTP
// status to answer on failure.
func (s *Server) authenticate(r *http.Request) (device string, status int, err error) {
	device, _, _, status, err = s.authenticateAcked(r)
	return device, status, err
}

// authenticateAcked is authenticate that also returns the device's
// watermark when the Authenticator read it with the token (fresh).
func (s *Server) authenticateAcked(r *http.Request) (device string, acked uint64, fresh bool, status int, err error) {
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", 0, false, http.StatusUnauthorized, errors.New("authorization header must be 'Bearer <device token>'")
		}
		token = strings.TrimSpace(rest)
	} else {
		token = r.URL.Query().Get("token")
	}
	if token == "" {
		return "", 0, false, http.StatusUnauthorized, errors.New("missing device token")
	}
	if aa, ok := s.auth.(AckedAuthenticator); ok {
		device, acked, fresh, err = aa.AuthenticateDeviceAcked(r.Context(), token)
	} else {
		device, err = s.auth.AuthenticateDevice(r.Context(), token)
	}
	if err != nil {
		var u interface{ Unauthorized() bool }
		if errors.As(err, &u) && u.Unauthorized() {
			return "", 0, false, http.StatusUnauthorized, errors.New("invalid device token or device disabled")
		}
		s.log.Error("authenticate device", "err", err)
		return "", 0, false, http.StatusServiceUnavailable, errors.New("cannot check the token now, retry later")
	}
	return device, acked, fresh, 0, nil
}

func (s *Server) hello(ctx context.Context, device, session string) (wire.Hello, error) {
	if err := s.pipe.waitIdle(ctx, device); err != nil {
		return wire.Hello{}, fmt.Errorf("wait for in-flight batches: %w", err)
	}
	acked, err := s.store.Watermark(ctx, device)
	if err != nil {
		return wire.Hello{}, fmt.Errorf("read watermark: %w", err)
	}
	return s.helloWith(device, session, acked), nil
}

// helloWith builds hello with acked, a watermark read once the device had
// nothing in the pipeline.
func (s *Server) helloWith(device, session string, acked uint64) wire.Hello {
	return wire.Hello{
		Type:      wire.TypeHello,
		Device:    device,
		Session:   session,
		Acked:     acked,
		Time:      s.now().UnixMilli(),
		MaxBatch:  s.cfg.MaxBatch,
		MaxFrame:  s.cfg.MaxFrame,
		Heartbeat: int(s.cfg.Heartbeat / time.Second),
	}
}

func (s *Server) limits() wire.Limits {
	return wire.Limits{MaxBatch: s.cfg.MaxBatch, MaxFuture: s.cfg.MaxFuture, MaxPast: s.cfg.MaxPast}
}

// accept validates a decoded batch into a telemetry.Batch and the ack fields
// known before commit, counting readings.
func (s *Server) accept(device string, b *wire.Batch) (telemetry.Batch, wire.Ack) {
	ok, rejected, errs := wire.Validate(b.Readings, s.now(), s.limits(), s.countReject)
	s.m.readingsAccepted.Add(float64(len(ok)))
	if errs == nil {
		errs = []string{}
	}
	return telemetry.Batch{Device: device, Seq: b.Seq, Readings: ok},
		wire.Ack{Type: wire.TypeAck, Seq: b.Seq, Accepted: len(ok), Rejected: rejected, Errors: errs}
}

func (s *Server) countReject(reason string) {
	s.m.readingsRejected.WithLabelValues(rejectLabel(reason)).Inc()
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
