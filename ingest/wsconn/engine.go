package wsconn

import (
	"bufio"
	"errors"
	"fmt"
	"sync"
	"time"
)

// EngineConfig sizes an Engine.
type EngineConfig struct {
	// Tick is the timer wheel's granularity: pings and idle closes happen
	// up to one tick late. Zero means one second.
	Tick time.Duration
	// Blocking disables the readiness poller: every connection gets a
	// blocking reader goroutine (the only mode off Linux and for TLS).
	Blocking bool
}

// Engine drives connections: one timer wheel, one poller (Linux), one pool
// of read buffers. The zero value is not usable; call NewEngine, and Close
// after the last connection closed.
type Engine struct {
	wheel   *wheel
	poll    *poller // nil: blocking readers only
	readers sync.Pool
	conns   sync.WaitGroup
	closed  sync.Once
}

// readBufferSize: frame headers are at most 14 bytes and payloads go
// through the same buffer, so it only sets how many syscalls a large
// message takes; it is held only while a message is being read.
const readBufferSize = 4096

// NewEngine starts the wheel goroutine and, where supported, the poller.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	e := &Engine{}
	e.readers.New = func() any { return bufio.NewReaderSize(nil, readBufferSize) }
	if !cfg.Blocking {
		p, err := newPoller(e)
		if err != nil && !errors.Is(err, errUnsupported) {
			return nil, fmt.Errorf("start poller: %w", err)
		}
		e.poll = p
	}
	e.wheel = newWheel(cfg.Tick)
	return e, nil
}

// Mode names how plain TCP connections are read: "epoll" or "goroutine".
func (e *Engine) Mode() string {
	if e.poll != nil {
		return "epoll"
	}
	return "goroutine"
}

// Attach wraps an upgraded connection; pre holds bytes already read past
// the handshake. Call Start when h is ready for messages, or Close.
func (e *Engine) Attach(t Transport, pre []byte, cfg *Config, h Handler) *Conn {
	c := &Conn{e: e, t: t, cfg: cfg, h: h, fd: -1}
	if len(pre) > 0 {
		c.pre = append([]byte(nil), pre...)
	}
	if e.poll != nil {
		// A plain TCP socket becomes a bare fd (rawconn_linux.go): the
		// *net.TCPConn's own state would outweigh the rest of an idle
		// connection. Other sockets keep their net.Conn.
		if rc, fd := ownFD(t); rc != nil {
			c.t, c.fd = rc, fd
		} else {
			c.fd = rawFD(t)
		}
	}
	e.conns.Add(1)
	return c
}

// Close stops the wheel and poller goroutines once every attached
// connection has finished. Connections must have been closed first.
func (e *Engine) Close() {
	e.closed.Do(func() {
		e.conns.Wait()
		e.wheel.stop()
		if e.poll != nil {
			e.poll.close()
		}
	})
}
