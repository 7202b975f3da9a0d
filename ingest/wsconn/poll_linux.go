//go:build linux

package wsconn

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller is one epoll instance and the goroutine waiting on it.
//
// The Go runtime's own netpoller also has these sockets registered (edge
// triggered); a second epoll instance watching the same fd is allowed and
// independent. Ours is level-triggered with EPOLLONESHOT: an event disarms
// the fd, a reader goroutine reads through the net.Conn (so a partial frame
// simply parks it in the runtime's poller) and re-arms when the buffered
// bytes are handled.
//
// Stale events: the fd leaves our epoll before the net.Conn is closed, but
// an event epoll_wait already returned may still be in wait's batch when its
// connection closes and a new connection gets the same fd number. So each
// registration gets a generation, and the event's 64-bit data carries it
// beside the fd (Fd and Pad are its two halves); wait hands an event to a
// connection only if both match its registration, so a stale event is
// dropped instead of starting a reader on the newcomer (which would park a
// goroutine on an idle connection).
type poller struct {
	e    *Engine
	epfd int
	wake int // eventfd: written by close to end wait

	mu sync.Mutex
	// conns is indexed by fd: fd numbers are dense (the kernel hands out
	// the lowest free one), so a slice costs a pointer per connection where
	// a map would cost several times that.
	conns []*Conn
	gen   uint32 // last registration's generation
	done  chan struct{}
}

var errUnsupported = errors.New("readiness polling not supported")

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller(e *Engine) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl wake: %w", err)
	}
	p := &poller{e: e, epfd: epfd, wake: wake, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// rawFD returns the socket of a plain TCP connection, or -1 when the
// transport is not one (TLS, net.Pipe): those keep a blocking reader.
func rawFD(t Transport) int32 {
	sc, ok := t.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := int32(-1)
	if err := rc.Control(func(f uintptr) { fd = int32(f) }); err != nil {
		return -1
	}
	return fd
}

// add registers c, armed, under a new generation. Called with c.mu held.
func (p *poller) add(c *Conn) error {
	p.mu.Lock()
	p.gen++
	c.pgen = p.gen
	if int(c.fd) >= len(p.conns) {
		p.conns = slices.Grow(p.conns, int(c.fd)+1-len(p.conns))[:int(c.fd)+1]
	}
	p.conns[c.fd] = c
	p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(c.fd), c.event()); err != nil {
		p.forget(c)
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// forget drops c from conns unless the fd already belongs to another (or
// c was never added: a connection closed before Start).
func (p *poller) forget(c *Conn) {
	p.mu.Lock()
	if int(c.fd) < len(p.conns) && p.conns[c.fd] == c {
		p.conns[c.fd] = nil
	}
	p.mu.Unlock()
}

// event is c's registration: the fd and its generation in the data field.
func (c *Conn) event() *unix.EpollEvent {
	return &unix.EpollEvent{Events: pollEvents, Fd: c.fd, Pad: int32(c.pgen)}
}

// arm re-enables c's one-shot event. Called with c.mu held.
func (p *poller) arm(c *Conn) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(c.fd), c.event())
}

// remove unregisters c; called with c.mu held, before the socket closes.
func (p *poller) remove(c *Conn) {
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	p.forget(c)
}

// dispatch starts a reader for the connection ev was registered for, if it
// is still registered under that generation (see the type comment).
func (p *poller) dispatch(ev unix.EpollEvent) {
	var c *Conn
	p.mu.Lock()
	if ev.Fd >= 0 && int(ev.Fd) < len(p.conns) {
		c = p.conns[ev.Fd]
	}
	if c != nil && c.pgen != uint32(ev.Pad) {
		c = nil // an event of the fd's previous connection
	}
	p.mu.Unlock()
	if c != nil {
		c.readReady()
	}
}

func (p *poller) wait() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			if int(events[i].Fd) == p.wake {
				return
			}
			p.dispatch(events[i])
		}
	}
}

func (p *poller) close() {
	var one = [8]byte{1}
	_, _ = unix.Write(p.wake, one[:])
	<-p.done
	_ = unix.Close(p.epfd)
	_ = unix.Close(p.wake)
}
