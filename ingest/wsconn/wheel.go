package wsconn

import (
	"sync"
	"time"
)

// wheel is a hashed timing wheel: one goroutine and one ticker for every
// connection's pings and idle deadline, instead of a timer per connection.
// A connection sits in the slot of its next due tick; activity does not move
// it (that would take the lock per frame): when it comes due, tick checks
// the real deadlines and re-files it.
//
// A slot is a slice and a connection knows its index in it (Conn.wpos), so
// filing costs a pointer per connection; a map per slot cost several times
// that (docs/benchmarks.md, "Connections").
type wheel struct {
	tick  time.Duration
	mu    sync.Mutex
	slots [wheelSlots][]*Conn
	cur   int64 // ticks since the epoch, last processed
	done  chan struct{}
	wg    sync.WaitGroup
}

// wheelSlots: with a 1 s tick a full turn is ~4 minutes, longer than any
// heartbeat, so most connections are looked at once per deadline. A slot
// number fits Conn.slot's byte.
const wheelSlots = 256

func newWheel(tick time.Duration) *wheel {
	w := &wheel{tick: tick, done: make(chan struct{})}
	w.cur = time.Now().UnixNano() / int64(tick)
	w.wg.Add(1)
	go w.run()
	return w
}

// add files c to come due at unix-nano time at (0: never), unless c has
// finished meanwhile (the wheel ticked it while it closed): a finished
// connection filed again would stay in the wheel for good. Lock order:
// wheel.mu, then Conn.mu (finish takes them one after the other).
func (w *wheel) add(c *Conn, at int64) {
	if at == 0 {
		return
	}
	w.mu.Lock()
	c.mu.Lock()
	fin := c.finished
	c.mu.Unlock()
	if !fin && c.wpos == 0 {
		w.file(c, at)
	}
	w.mu.Unlock()
}

func (w *wheel) file(c *Conn, at int64) {
	t := (at + int64(w.tick) - 1) / int64(w.tick)
	if t <= w.cur {
		t = w.cur + 1
	}
	c.due = t
	c.slot = uint8(t % wheelSlots)
	w.slots[c.slot] = append(w.slots[c.slot], c)
	c.wpos = int32(len(w.slots[c.slot]))
}

// unfile takes c out of its slot: the slot's last connection moves into
// its place. Called with w.mu held.
func (w *wheel) unfile(c *Conn) {
	if c.wpos == 0 {
		return
	}
	s := w.slots[c.slot]
	i, last := c.wpos-1, len(s)-1
	s[i] = s[last]
	s[i].wpos = i + 1
	s[last] = nil
	w.slots[c.slot] = s[:last]
	c.wpos = 0
}

func (w *wheel) remove(c *Conn) {
	w.mu.Lock()
	w.unfile(c)
	w.mu.Unlock()
}

func (w *wheel) run() {
	defer w.wg.Done()
	t := time.NewTicker(w.tick)
	defer t.Stop()
	var due []*Conn
	for {
		select {
		case <-w.done:
			return
		case now := <-t.C:
			target := now.UnixNano() / int64(w.tick)
			w.mu.Lock()
			for w.cur < target {
				w.cur++
				// Backwards: unfile moves the slot's last connection,
				// already looked at, into the hole.
				s := w.slots[w.cur%wheelSlots]
				for i := len(s) - 1; i >= 0; i-- {
					if c := s[i]; c.due <= w.cur {
						w.unfile(c)
						due = append(due, c)
					}
				}
			}
			w.mu.Unlock()
			// Outside the lock: tick may close or send, which take the
			// connection's lock (lock order: never wheel.mu inside Conn.mu).
			ns := now.UnixNano()
			for i, c := range due {
				if next := c.tick(ns); next != 0 && !c.Closing() {
					w.add(c, next)
				}
				due[i] = nil
			}
			due = due[:0]
		}
	}
}

func (w *wheel) stop() {
	close(w.done)
	w.wg.Wait()
}
