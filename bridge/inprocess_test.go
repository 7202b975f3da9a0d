package bridge

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// The embedded broker's in-process path keeps docs/mqtt.md's telemetry
// guarantees. Each test starts its own embedded broker.

func oneReading(device string, seq uint64) telemetry.Batch {
	return telemetry.Batch{Device: device, Seq: seq, Readings: []telemetry.Reading{{Time: int64(seq), Metric: "m", Value: float64(seq)}}}
}

// seqsOf reads telemetry messages until n arrived (or 5 s passed) and
// returns each device's sequence numbers in arrival order.
func seqsOf(t *testing.T, ch chan message, n int) map[string][]uint64 {
	t.Helper()
	got := map[string][]uint64{}
	timeout := time.After(5 * time.Second)
	for seen := 0; seen < n; {
		select {
		case m := <-ch:
			if !strings.HasSuffix(m.topic, "/telemetry") {
				continue
			}
			var bj struct {
				Device string `json:"device"`
				Seq    uint64 `json:"seq"`
			}
			if err := json.Unmarshal([]byte(m.payload), &bj); err != nil {
				t.Fatalf("telemetry %q: %v", m.payload, err)
			}
			got[bj.Device] = append(got[bj.Device], bj.Seq)
			seen++
		case <-timeout:
			t.Fatalf("only %v of %d batches within 5s", got, n)
		}
	}
	return got
}

func TestInProcessOrderPerDevice(t *testing.T) {
	b, url, prefix := startEmbedded(t)
	if b.link.client != nil || b.link.inproc == nil {
		t.Fatal("embedded broker: want the in-process path, not a client connection")
	}
	msgs := watch(t, url, "ops", goodKey, prefix+"/+/telemetry")
	const perDevice = 60 // 3 devices: 180 messages, below watch's buffer
	for i := uint64(1); i <= perDevice; i++ {
		for _, d := range []string{"d1", "d2", "d3"} {
			b.Committed(oneReading(d, i))
		}
	}
	got := seqsOf(t, msgs, 3*perDevice)
	for d, seqs := range got {
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Fatalf("device %s: batches arrived as %v, want 1..%d in order", d, seqs, perDevice)
			}
		}
	}
}

// TestInProcessOnlyCommitted: what reaches subscribers is exactly what was
// passed to Committed (the pipeline calls it after the commit), and
// presence or results never produce telemetry.
func TestInProcessOnlyCommitted(t *testing.T) {
	b, url, prefix := startEmbedded(t)
	msgs := watch(t, url, "ops", goodKey, prefix+"/+/telemetry")
	b.Presence(telemetry.Presence{Device: "d1", Online: true, At: 1})
	b.Result(telemetry.CommandResult{Device: "d1", ID: "c1", OK: true})
	b.Committed(oneReading("d1", 7))
	if m := next(t, msgs, prefix+"/d1/telemetry"); m.payload != `{"device":"d1","seq":7,"node":"n1","readings":[{"t":7,"metric":"m","value":7}]}` {
		t.Fatalf("telemetry %s", m.payload)
	}
	select {
	case m := <-msgs:
		t.Fatalf("unexpected telemetry %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestInProcessDropOldest: while the publisher cannot keep up (here: held
// on the cluster's lock), the queue keeps the newest mqtt.queue_size
// batches, counts the rest, and publishes the kept ones in order.
func TestInProcessDropOldest(t *testing.T) {
	b := newEmbedded(t, func(c *Config) { c.QueueSize = 50 })
	runBridge(t, b)
	msgs := watch(t, "tcp://"+b.BrokerAddr(), "ops", goodKey, b.cfg.TopicPrefix+"/+/telemetry")
	b.cluster.mu.Lock() // the publisher waits for it before taking the next batch
	for i := uint64(1); i <= 200; i++ {
		b.Committed(oneReading("d1", i))
	}
	b.cluster.mu.Unlock()
	if got := counterValue(b.m.dropped.WithLabelValues("queue_full")); got != 150 {
		t.Fatalf("queue_full drops = %v, want 150", got)
	}
	seqs := seqsOf(t, msgs, 50)["d1"]
	for i, s := range seqs {
		if s != uint64(151+i) {
			t.Fatalf("published %v, want 151..200 in order", seqs)
		}
	}
}

// TestInProcessSkipThenDeliver: with nobody subscribed a batch is not even
// queued (counted as skipped); once someone subscribes, the next batches
// are delivered.
func TestInProcessSkipThenDeliver(t *testing.T) {
	b, url, prefix := startEmbedded(t)
	b.Committed(oneReading("d1", 1))
	if got := counterValue(b.m.skipped); got != 1 {
		t.Fatalf("skipped = %v, want 1", got)
	}
	if b.pub.telem.len() != 0 {
		t.Fatal("a batch nobody can receive was queued")
	}
	// A subscription that cannot match telemetry does not count.
	_ = watch(t, url, "ops", goodKey, prefix+"/+/status")
	b.Committed(oneReading("d1", 2))
	if got := counterValue(b.m.skipped); got != 2 {
		t.Fatalf("skipped = %v after a status-only subscriber, want 2", got)
	}
	msgs := watch(t, url, "ops", goodKey, prefix+"/d1/#")
	b.Committed(oneReading("d2", 3)) // matches the snapshot, not the filter: built for nobody
	b.Committed(oneReading("d1", 4))
	if m := next(t, msgs, prefix+"/d1/telemetry"); !strings.Contains(m.payload, `"seq":4`) {
		t.Fatalf("telemetry %s", m.payload)
	}
	eventually(t, "d2's batch to be skipped by the publisher", func() bool { return counterValue(b.m.skipped) == 3 })
}

// TestInProcessRetainedStatus: a client subscribing after a device came
// online (or went offline) gets its status at once, retained.
func TestInProcessRetainedStatus(t *testing.T) {
	b, url, prefix := startEmbedded(t)
	b.Presence(telemetry.Presence{Device: "d1", Online: true, At: 1})
	b.Presence(telemetry.Presence{Device: "d2", Online: true, At: 1})
	eventually(t, "online statuses published", func() bool { return counterValue(b.m.published.WithLabelValues("status")) >= 2 })
	b.Presence(telemetry.Presence{Device: "d2", Online: false, At: 2})
	eventually(t, "offline status published", func() bool { return counterValue(b.m.published.WithLabelValues("status")) >= 3 })
	statuses := watch(t, url, "ops", goodKey, prefix+"/+/status")
	got := collect(t, statuses, prefix+"/d1/status", prefix+"/d2/status")
	if m := got[prefix+"/d1/status"]; m.payload != "online" || !m.retained {
		t.Fatalf("d1 status %+v, want retained online", m)
	}
	if m := got[prefix+"/d2/status"]; m.payload != "offline" || !m.retained {
		t.Fatalf("d2 status %+v, want retained offline", m)
	}
	// A narrower filter gets only its device's status.
	one := watch(t, url, "ops", goodKey, prefix+"/d2/status")
	if m := next(t, one, prefix+"/d2/status"); m.payload != "offline" || !m.retained {
		t.Fatalf("d2 status %+v, want retained offline", m)
	}
	select {
	case m := <-one:
		t.Fatalf("unexpected %+v on a d2-only subscription", m)
	case <-time.After(100 * time.Millisecond):
	}
	// Changes reach current subscribers live.
	b.Presence(telemetry.Presence{Device: "d3", Online: true, At: 3})
	if m := next(t, statuses, prefix+"/d3/status"); m.payload != "online" || m.retained {
		t.Fatalf("d3 status %+v, want live online", m)
	}
	// No ownership records on a single-node broker.
	sessions := watch(t, url, "ops", goodKey, prefix+"/+/session")
	select {
	case m := <-sessions:
		t.Fatalf("ownership record on the embedded broker: %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b/c", "a/b/c", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"a/#", "a/b/c", true},
		{"a/#", "a", true},
		{"#", "a/b", true},
		{"+", "a/b", false},
		{"a/+", "a", false},
		{"a/b", "a/b/c", false},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
	}
	for _, tc := range tests {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestSubIndexCouldMatch(t *testing.T) {
	tests := []struct {
		filter       string
		batch, under bool
	}{
		{"meridian/+/telemetry", true, true},
		{"meridian/d1/telemetry", true, true},
		{"meridian/#", true, true},
		{"#", true, true},
		{"meridian/+/status", false, true}, // a metric could be called status/… (it moves under _metric, but stay conservative)
		{"meridian/_nodes/+/status", false, true},
		{"other/#", false, false},
		{"meridian", false, false},
		{"$share/g/meridian/+/telemetry", true, true},
	}
	for _, tc := range tests {
		x := newSubIndex("meridian")
		x.refs[tc.filter] = 1
		x.rebuildLocked()
		s := x.snap.Load()
		if s.batch != tc.batch || s.under != tc.under {
			t.Errorf("%q: batch=%v under=%v, want %v %v", tc.filter, s.batch, s.under, tc.batch, tc.under)
		}
	}
}

// TestSubIndexTracksFilters drives the hook as mochi does: the snapshot
// says "someone can receive telemetry" exactly while such a filter is held.
func TestSubIndexTracksFilters(t *testing.T) {
	sub := func(fs ...string) packets.Packet {
		pk := packets.Packet{}
		for _, f := range fs {
			pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
		}
		return pk
	}
	x := newSubIndex("meridian")
	c1, c2 := &mqtt.Client{ID: "c1"}, &mqtt.Client{ID: "c2"}
	inline := &mqtt.Client{ID: "inline"}
	inline.Net.Inline = true
	steps := []struct {
		name string
		do   func()
		want bool
	}{
		{"nobody", func() {}, false},
		{"the bridge's own subscription", func() { x.OnSubscribed(inline, sub("#"), []byte{0}) }, false},
		{"refused filter", func() { x.OnSubscribed(c1, sub("meridian/+/telemetry"), []byte{0x80}) }, false},
		{"status only", func() { x.OnSubscribed(c1, sub("meridian/+/status"), []byte{1}) }, false},
		{"telemetry", func() { x.OnSubscribed(c1, sub("meridian/+/telemetry"), []byte{1}) }, true},
		{"same filter twice, other client", func() { x.OnSubscribed(c2, sub("meridian/+/telemetry"), []byte{1}) }, true},
		{"one unsubscribes", func() { x.OnUnsubscribed(c1, sub("meridian/+/telemetry")) }, true},
		{"unknown unsubscribe", func() { x.OnUnsubscribed(c1, sub("meridian/+/telemetry")) }, true},
		{"other session expires", func() { x.OnClientExpired(c2) }, false},
	}
	for _, st := range steps {
		st.do()
		if got := x.snap.Load().batch; got != st.want {
			t.Fatalf("%s: telemetry wanted = %v, want %v", st.name, got, st.want)
		}
	}
	if !x.wanted("meridian/d1/status") || x.wanted("meridian/d1/telemetry") {
		t.Fatal("wanted(): c1 still holds meridian/+/status only")
	}
}
