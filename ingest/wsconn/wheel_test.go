package wsconn

import (
	"testing"
	"time"
)

// TestWheelSlotIndex: connections leave a slot from anywhere in it and the
// ones left still know where they are.
func TestWheelSlotIndex(t *testing.T) {
	w := newWheel(time.Hour)
	defer w.stop()
	at := time.Now().Add(2 * time.Hour).UnixNano()
	conns := make([]*Conn, 50)
	for i := range conns {
		conns[i] = &Conn{fd: -1}
		w.add(conns[i], at)
	}
	w.add(conns[0], at) // already filed: not twice
	for i := 0; i < len(conns); i += 3 {
		w.remove(conns[i])
		w.remove(conns[i]) // again: nothing
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[conns[1].slot]
	if want := len(conns) - (len(conns)+2)/3; len(s) != want {
		t.Fatalf("%d connections in the slot, want %d", len(s), want)
	}
	for i, c := range s {
		if c.wpos != int32(i+1) {
			t.Fatalf("slot[%d].wpos = %d", i, c.wpos)
		}
	}
	for i, c := range conns {
		if filed := c.wpos != 0; filed != (i%3 != 0) {
			t.Fatalf("conn %d filed = %v", i, filed)
		}
	}
}

// TestWheelSkipsFinished: a connection that finished while the wheel was
// ticking it is not filed again.
func TestWheelSkipsFinished(t *testing.T) {
	w := newWheel(time.Hour)
	defer w.stop()
	c := &Conn{fd: -1, finished: true}
	w.add(c, time.Now().Add(time.Hour).UnixNano())
	if c.wpos != 0 {
		t.Fatal("a finished connection was filed")
	}
}
