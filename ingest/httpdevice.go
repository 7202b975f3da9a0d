package ingest

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// The HTTP fallback serves devices that wake, send and sleep, or sit behind
// proxies that strip Upgrade. Same token, same seq and duplicate rules as the
// WebSocket (the store's watermark decides duplicates), same pipeline shard
// for the device, so per-device order holds across both transports. There is
// no connection, so "seq must increase on this connection" does not apply:
// a seq at or below the watermark is simply a duplicate.

const msgpackType = "application/msgpack"

// statusFor maps a close code to the HTTP status of the fallback.
func statusFor(closeCode int) int {
	switch closeCode {
	case wire.CloseTooBig:
		return http.StatusRequestEntityTooLarge
	case wire.CloseTryAgainLater:
		return http.StatusTooManyRequests
	case wire.CloseGoingAway:
		return http.StatusServiceUnavailable
	case wire.ClosePolicy:
		return http.StatusForbidden
	case wire.CloseInternal:
		return http.StatusInternalServerError
	default:
		return http.StatusBadRequest
	}
}

// writeMsg answers with one MessagePack map.
func writeMsg(w http.ResponseWriter, status int, m msgp.Marshaler) {
	data, err := m.MarshalMsg(nil)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", msgpackType)
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeMsg(w, status, &wire.Error{Type: wire.TypeError, Code: code, Message: msg})
}

func (s *Server) serveHello(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeErr(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	if s.draining.Load() {
		writeErr(w, http.StatusServiceUnavailable, "shutdown", "server shutting down, retry later")
		return
	}
	device, status, err := s.authenticate(r)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	hello, err := s.hello(r.Context(), device, "")
	if err != nil {
		s.log.Warn("device hello", "device", device, "err", err)
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "storage unavailable, retry later")
		return
	}
	writeMsg(w, http.StatusOK, &hello)
}

func (s *Server) serveBatch(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeErr(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	s.httpWG.Add(1)
	defer s.httpWG.Done()
	defer func() {
		// Same contract as a WebSocket session (close 1011): a panic while
		// handling one device's request answers 500 and harms nobody else.
		if p := recover(); p != nil {
			s.log.Error("panic handling device batch", "panic", p)
			writeErr(w, http.StatusInternalServerError, "internal", "internal error")
		}
	}()
	if s.draining.Load() {
		writeErr(w, http.StatusServiceUnavailable, "shutdown", "server shutting down, retry later")
		return
	}
	device, status, err := s.authenticate(r)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != msgpackType {
		writeErr(w, http.StatusUnsupportedMediaType, "bad_content_type", "Content-Type must be "+msgpackType)
		return
	}
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeBodyErr(w, err)
		return
	}
	b, err := s.decodeBatch(device, body)
	if err != nil {
		writeBatchErr(w, err)
		return
	}
	s.commitBatch(w, r, device, b)
}

// writeBodyErr answers a body that could not be read: 413 over max_frame,
// 400 otherwise.
func (s *Server) writeBodyErr(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeErr(w, http.StatusRequestEntityTooLarge, "frame_too_big", fmt.Sprintf("body exceeds max_frame (%d bytes)", s.cfg.MaxFrame))
		return
	}
	writeErr(w, http.StatusBadRequest, "read_failed", "reading the body failed")
}

// decodeBatch decodes the body as one batch and applies the same checks as
// a WebSocket batch: the frame limits, then the device's readings rate.
func (s *Server) decodeBatch(device string, body []byte) (*wire.Batch, error) {
	m, err := wire.Decode(body)
	if err != nil {
		return nil, err
	}
	b, ok := m.(*wire.Batch)
	if !ok {
		return nil, wire.Protocol("unexpected_type", "this endpoint takes one batch map")
	}
	s.m.frames.WithLabelValues(wire.TypeBatch).Inc()
	if err := wire.CheckBatch(b, s.limits()); err != nil {
		return nil, err
	}
	if s.opts.Limits != nil && !s.opts.Limits.AllowReadings(device, len(b.Readings)) {
		return nil, &wire.ProtocolError{Close: wire.CloseTryAgainLater, Code: "rate_limited", Message: "readings per second over this device's limit"}
	}
	return b, nil
}

// writeBatchErr answers a refused batch: a protocol error with the status
// of its close code, anything else as an invalid frame.
func writeBatchErr(w http.ResponseWriter, err error) {
	var pe *wire.ProtocolError
	if errors.As(err, &pe) {
		writeErr(w, statusFor(pe.Close), pe.Code, pe.Message)
		return
	}
	writeErr(w, http.StatusBadRequest, "invalid_frame", err.Error())
}

// commitBatch submits the batch to the device's pipeline shard and answers
// with its ack once it commits.
func (s *Server) commitBatch(w http.ResponseWriter, r *http.Request, device string, b *wire.Batch) {
	batch, ack := s.accept(device, b)
	type result struct {
		o   telemetry.Outcome
		err error
	}
	done := make(chan result, 1)
	if err := s.pipe.submit(r.Context(), batch, func(o telemetry.Outcome, err error) { done <- result{o, err} }); err != nil {
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "not accepted, retry later")
		return
	}
	// Wait for the commit. If the client goes away first the batch still
	// commits; the device learns it from hello.acked or a duplicate ack.
	select {
	case res := <-done:
		// A device that stops reading the answer must not hold the handler
		// (and Shutdown) past the write timeout.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if pe := (*wire.ProtocolError)(nil); errors.As(res.err, &pe) {
			writeErr(w, statusFor(pe.Close), pe.Code, pe.Message) // refused by the store
			return
		}
		if res.err != nil {
			writeErr(w, http.StatusServiceUnavailable, "unavailable", "not committed, retry later")
			return
		}
		if res.o.Duplicate {
			ack.Duplicate, ack.Accepted, ack.Rejected, ack.Errors = true, 0, 0, []string{}
		}
		s.m.acks.Inc()
		writeMsg(w, http.StatusOK, &ack)
	case <-r.Context().Done():
	}
}

// readBody reads the batch body under a read deadline: a stalled (e.g.
// chunked, never finished) body may hold the handler for at most
// HandshakeTimeout, and Shutdown cuts it at once ("stop reading devices").
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	s.httpMu.Lock()
	s.httpBody[rc] = struct{}{}
	s.httpMu.Unlock()
	if s.draining.Load() {
		_ = rc.SetReadDeadline(time.Now())
	}
	defer func() {
		s.httpMu.Lock()
		delete(s.httpBody, rc)
		s.httpMu.Unlock()
	}()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxFrame)))
	if err != nil {
		return nil, fmt.Errorf("read batch body: %w", err)
	}
	return body, nil
}

// stopHTTPReads expires the read deadline of every fallback body being
// read: the first step of Shutdown.
func (s *Server) stopHTTPReads() {
	s.httpMu.Lock()
	defer s.httpMu.Unlock()
	for rc := range s.httpBody {
		_ = rc.SetReadDeadline(time.Now())
	}
}
