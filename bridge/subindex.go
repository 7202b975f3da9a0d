package bridge

import (
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// subIndex is an embedded-broker hook that keeps the topic filters of the
// broker's network clients, so the bridge can tell, without asking the
// broker per message, whether anyone could receive a telemetry message.
// With nobody subscribed a committed batch costs one atomic load
// (docs/mqtt.md "Embedded broker").
//
// Every change of mochi's subscription index goes through OnSubscribed or
// OnUnsubscribed (UnsubscribeClient calls the latter on a clean disconnect
// and on takeover by a clean session; a takeover that inherits a session
// keeps the client id, so the entries stay right); an expired persistent
// session only reaches OnClientExpired. The snapshot is replaced after
// mochi has changed its index, so a batch checked in between is treated as
// committed just before the subscription: it is not delivered, exactly as
// if it had been published a moment earlier.
type subIndex struct {
	mqtt.HookBase
	prefix []string // topic prefix levels

	mu       sync.Mutex
	byClient map[string]map[string]struct{} // client id → filters
	refs     map[string]int                 // filter → clients holding it

	snap atomic.Pointer[subSnapshot]
}

// subSnapshot is an immutable view of the filters.
type subSnapshot struct {
	filters []string
	// batch: some filter can match <prefix>/<device>/telemetry for some
	// device. under: some filter can match a topic two or more levels below
	// the prefix (a per-reading topic).
	batch, under bool
}

func newSubIndex(prefix string) *subIndex {
	x := &subIndex{
		prefix:   strings.Split(prefix, "/"),
		byClient: make(map[string]map[string]struct{}),
		refs:     make(map[string]int),
	}
	x.snap.Store(&subSnapshot{})
	return x
}

func (x *subIndex) ID() string { return "meridian-subscriptions" }

func (x *subIndex) Provides(b byte) bool {
	return b == mqtt.OnSubscribed || b == mqtt.OnUnsubscribed || b == mqtt.OnClientExpired
}

// OnClientExpired: mochi drops an expired persistent session without
// unsubscribing it (its topic index keeps the filters, but publishes skip
// the missing client), so its filters are forgotten here.
func (x *subIndex) OnClientExpired(cl *mqtt.Client) {
	x.mu.Lock()
	defer x.mu.Unlock()
	fs := x.byClient[cl.ID]
	if len(fs) == 0 {
		return
	}
	for f := range fs {
		if x.refs[f]--; x.refs[f] <= 0 {
			delete(x.refs, f)
		}
	}
	delete(x.byClient, cl.ID)
	x.rebuildLocked()
}

func (x *subIndex) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return // the bridge's own in-process subscriptions
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	changed := false
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] >= 0x80 {
			continue // refused
		}
		fs := x.byClient[cl.ID]
		if fs == nil {
			fs = make(map[string]struct{})
			x.byClient[cl.ID] = fs
		}
		if _, ok := fs[f.Filter]; ok {
			continue
		}
		fs[f.Filter] = struct{}{}
		x.refs[f.Filter]++
		changed = true
	}
	if changed {
		x.rebuildLocked()
	}
}

func (x *subIndex) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	x.mu.Lock()
	defer x.mu.Unlock()
	fs := x.byClient[cl.ID]
	changed := false
	for _, f := range pk.Filters {
		if _, ok := fs[f.Filter]; !ok {
			continue
		}
		delete(fs, f.Filter)
		if x.refs[f.Filter]--; x.refs[f.Filter] <= 0 {
			delete(x.refs, f.Filter)
		}
		changed = true
	}
	if len(fs) == 0 {
		delete(x.byClient, cl.ID)
	}
	if changed {
		x.rebuildLocked()
	}
}

func (x *subIndex) rebuildLocked() {
	s := &subSnapshot{filters: make([]string, 0, len(x.refs))}
	for f := range x.refs {
		f = sharedTarget(f)
		s.filters = append(s.filters, f)
		levels := strings.Split(f, "/")
		s.batch = s.batch || x.couldMatch(levels, []string{"", "telemetry"}, false)
		s.under = s.under || x.couldMatch(levels, []string{"", ""}, true)
	}
	x.snap.Store(s)
}

// couldMatch reports whether filter (split in levels) can match some topic
// made of the prefix, then rest, where "" in rest is any one level (a
// device id or metric, never starting with $), and, with deeper, any
// further levels.
func (x *subIndex) couldMatch(filter, rest []string, deeper bool) bool {
	want := append(append([]string(nil), x.prefix...), rest...)
	for i, f := range filter {
		if f == "#" {
			return true
		}
		if i >= len(want) {
			return deeper
		}
		if f == "+" || f == want[i] || (want[i] == "" && f != "" && f[0] != '$') {
			continue
		}
		return false
	}
	return len(filter) == len(want)
}

// wanted reports whether any network client's filter matches topic.
func (x *subIndex) wanted(topic string) bool {
	for _, f := range x.snap.Load().filters {
		if matchFilter(f, topic) {
			return true
		}
	}
	return false
}

// sharedTarget strips "$share/<group>/" from a shared subscription.
func sharedTarget(f string) string {
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		if _, target, ok := strings.Cut(rest, "/"); ok {
			return target
		}
	}
	return f
}

// matchFilter is MQTT topic matching (MQTT 3.1.1 §4.7): "+" is one level,
// a trailing "#" is that level and everything below it (and the parent),
// and wildcards at the first level never match a topic starting with "$"
// [MQTT-4.7.2-1].
func matchFilter(filter, topic string) bool {
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#" // "a/#" matches "a"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
