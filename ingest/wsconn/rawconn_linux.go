//go:build linux

package wsconn

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// rawConn is a plain TCP socket the core owns as a bare fd, so that an idle
// connection does not keep what a *net.TCPConn keeps: its netFD, two
// addresses and the runtime netpoller's descriptor, ~300 bytes of heap and
// ~250 off the heap per connection (docs/benchmarks.md, "Connections").
//
// The socket is non-blocking. Reads and writes are plain syscalls; only
// when one would block (a frame arriving in pieces, a peer not taking our
// writes) does it wait on a "waiter": a dup of the fd wrapped in an
// *os.File, which the runtime netpoller parks the goroutine on and which
// honours the deadline. The waiter is closed again once that read or write
// returns, so nothing of it stays with an idle connection.
//
// Close never closes the fd under a read or write in progress (the number
// could be reused by a new connection and the syscall would reach it): it
// closes the waiters, which ends their waits, and the last operation to
// finish closes the fd.
type rawConn struct {
	fd int

	mu       sync.Mutex
	refs     int32 // reads and writes in progress
	closed   bool  // Close was called
	fdClosed bool
	rd, wd   int64    // deadlines, unix nanos; 0: none (a time.Time is 24 bytes)
	rw, ww   *os.File // waiters while a read or write waits
}

// ownFD takes a plain TCP connection's socket over as a rawConn: a dup of
// its fd, after which t is closed (the socket stays open through the dup).
// For anything else it returns nil and -1, leaving t alone.
func ownFD(t Transport) (Transport, int32) {
	tc, ok := t.(*net.TCPConn)
	if !ok {
		return nil, -1
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return nil, -1
	}
	fd := -1
	if err := sc.Control(func(f uintptr) {
		fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || fd < 0 {
		return nil, -1
	}
	_ = tc.Close()
	return &rawConn{fd: fd}, int32(fd)
}

func (r *rawConn) acquire() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	r.refs++
	return nil
}

func (r *rawConn) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs--
	r.closeFD()
}

// closeFD closes the fd once closed and unused. Called with mu held.
func (r *rawConn) closeFD() {
	if r.closed && r.refs == 0 && !r.fdClosed {
		r.fdClosed = true
		_ = unix.Close(r.fd)
	}
}

func expired(d int64) bool { return d != 0 && time.Now().UnixNano() >= d }

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func deadline(d int64) time.Time {
	if d == 0 {
		return time.Time{}
	}
	return time.Unix(0, d)
}

func (r *rawConn) Read(p []byte) (int, error) {
	if err := r.acquire(); err != nil {
		return 0, err
	}
	defer r.release()
	for {
		r.mu.Lock()
		rd := r.rd
		r.mu.Unlock()
		if expired(rd) {
			return 0, os.ErrDeadlineExceeded
		}
		n, err := unix.Read(r.fd, p)
		switch {
		case err == nil && n == 0 && len(p) > 0:
			return 0, io.EOF
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return r.wait(&r.rw, func(f *os.File) (int, error) { return f.Read(p) })
		default:
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
		}
	}
}

func (r *rawConn) Write(p []byte) (int, error) {
	return r.writev([][]byte{p})
}

// writev writes every buffer, with one writev syscall while the socket
// takes them (the core's batch of queued frames).
func (r *rawConn) writev(bufs [][]byte) (int, error) {
	if err := r.acquire(); err != nil {
		return 0, err
	}
	defer r.release()
	total := 0
	for len(bufs) > 0 {
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		r.mu.Lock()
		wd := r.wd
		r.mu.Unlock()
		if expired(wd) {
			return total, os.ErrDeadlineExceeded
		}
		n, err := unix.Writev(r.fd, bufs[:min(len(bufs), maxIovecs)])
		if n > 0 {
			total += n
			bufs = consume(bufs, n)
		}
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			// The peer is not reading: finish through a waiter, which
			// parks this writer until the socket drains or wd passes.
			n, err := r.wait(&r.ww, func(f *os.File) (int, error) {
				b := net.Buffers(bufs)
				n, err := b.WriteTo(f)
				return int(n), err
			})
			return total + n, err
		default:
			return total, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("writev", err)}
		}
	}
	return total, nil
}

// maxIovecs is Linux's IOV_MAX: more buffers go in further writev calls.
const maxIovecs = 1024

// consume drops the first n bytes of bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	return bufs
}

// wait runs op on a waiter stored in *slot for its duration.
func (r *rawConn) wait(slot **os.File, op func(*os.File) (int, error)) (int, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, net.ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		r.mu.Unlock()
		return 0, os.NewSyscallError("dup", err)
	}
	// The dup shares the socket's non-blocking mode, so os.NewFile
	// registers it with the runtime netpoller.
	f := os.NewFile(uintptr(fd), "")
	_ = f.SetReadDeadline(deadline(r.rd))
	_ = f.SetWriteDeadline(deadline(r.wd))
	*slot = f
	r.mu.Unlock()
	n, err := op(f)
	r.mu.Lock()
	if *slot == f {
		*slot = nil
	}
	r.mu.Unlock()
	_ = f.Close()
	return n, err
}

func (r *rawConn) SetReadDeadline(t time.Time) error {
	return r.setDeadline(&r.rd, &r.rw, t, (*os.File).SetReadDeadline)
}

func (r *rawConn) SetWriteDeadline(t time.Time) error {
	return r.setDeadline(&r.wd, &r.ww, t, (*os.File).SetWriteDeadline)
}

// setDeadline stores a deadline and moves a waiter's along with it.
func (r *rawConn) setDeadline(d *int64, waiter **os.File, t time.Time, set func(*os.File, time.Time) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	*d = nanos(t)
	if *waiter != nil {
		_ = set(*waiter, t)
	}
	return nil
}

// Close ends waits in progress and closes the fd now or when the last
// read or write returns.
func (r *rawConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	r.closed = true
	// A waiter's dup holds the socket open: end its wait now (it closes
	// the dup on its way out).
	for _, f := range []*os.File{r.rw, r.ww} {
		if f != nil {
			_ = f.SetDeadline(time.Now())
		}
	}
	r.closeFD()
	return nil
}
