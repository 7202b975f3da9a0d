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
type wheel struct {
	tick  time.Duration
	mu    sync.Mutex
	slots []map[*Conn]struct{}
	cur   int64 // ticks since the epoch, last processed
	done  chan struct{}
	wg    sync.WaitGroup
}

// wheelSlots: with a 1 s tick a full turn is ~4 minutes, longer than any
// heartbeat, so most connections are looked at once per deadline. A slot
// number fits Conn.slot's byte.
const wheelSlots = 256

func newWheel(tick time.Duration) *wheel {
	w := &wheel{tick: tick, slots: make([]map[*Conn]struct{}, wheelSlots), done: make(chan struct{})}
	for i := range w.slots {
		w.slots[i] = make(map[*Conn]struct{})
	}
	w.cur = time.Now().UnixNano() / int64(tick)
	w.wg.Add(1)
	go w.run()
	return w
}

// add files c to come due at unix-nano time at (0: never).
func (w *wheel) add(c *Conn, at int64) {
	if at == 0 {
		return
	}
	w.mu.Lock()
	w.file(c, at)
	w.mu.Unlock()
}

func (w *wheel) file(c *Conn, at int64) {
	t := (at + int64(w.tick) - 1) / int64(w.tick)
	if t <= w.cur {
		t = w.cur + 1
	}
	c.due = t
	c.slot = uint8(t % wheelSlots)
	w.slots[c.slot][c] = struct{}{}
}

func (w *wheel) remove(c *Conn) {
	w.mu.Lock()
	delete(w.slots[c.slot], c)
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
				for c := range w.slots[w.cur%wheelSlots] {
					if c.due <= w.cur {
						delete(w.slots[w.cur%wheelSlots], c)
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
