//go:build linux

package wsconn

import (
	"errors"
	"fmt"
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
// bytes are handled. The fd is removed from our epoll before the net.Conn is
// closed, so a reused fd number can never reach the wrong connection.
type poller struct {
	e    *Engine
	epfd int
	wake int // eventfd: written by close to end wait

	mu    sync.Mutex
	conns map[int]*Conn
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
	p := &poller{e: e, epfd: epfd, wake: wake, conns: make(map[int]*Conn), done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// rawFD returns the socket of a plain TCP connection, or -1 when the
// transport is not one (TLS, net.Pipe): those keep a blocking reader.
func rawFD(t Transport) int {
	sc, ok := t.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1
	}
	return fd
}

// add registers c, armed. Called with c.mu held.
func (p *poller) add(c *Conn) error {
	p.mu.Lock()
	p.conns[c.fd] = c
	p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: pollEvents, Fd: int32(c.fd)}); err != nil {
		p.mu.Lock()
		delete(p.conns, c.fd)
		p.mu.Unlock()
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// arm re-enables c's one-shot event. Called with c.mu held.
func (p *poller) arm(c *Conn) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: pollEvents, Fd: int32(c.fd)})
}

// remove unregisters c; called with c.mu held, before the socket closes.
func (p *poller) remove(c *Conn) {
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	p.mu.Lock()
	if p.conns[c.fd] == c {
		delete(p.conns, c.fd)
	}
	p.mu.Unlock()
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
			fd := int(events[i].Fd)
			if fd == p.wake {
				return
			}
			p.mu.Lock()
			c := p.conns[fd]
			p.mu.Unlock()
			if c != nil {
				c.readReady()
			}
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
