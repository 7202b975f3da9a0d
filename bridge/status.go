package bridge

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// statusTable keeps the embedded broker's retained device statuses itself,
// at one map entry per device, instead of as retained messages in the
// broker: mochi keeps a retained message as a whole packet (~800 bytes)
// plus two topic-tree nodes, about 2 KiB per device, which is most of what
// presence cost (docs/benchmarks.md "Presence memory").
//
// Live status changes are published to current subscribers as usual (not
// retained at the broker). A client that subscribes to a filter matching
// status topics gets the current status of every matching device right
// after its SUBACK, with the retain flag set, as a broker would send
// retained messages ([MQTT-3.3.1-6]); these go out at QoS 0, which on a
// connection that just received its SUBACK loses nothing a resubscribe
// would not bring back.
type statusTable struct {
	mqtt.HookBase
	t topics

	mu      sync.Mutex
	online  map[string]bool           // device → online
	pending map[*mqtt.Client][]string // filters granted, waiting for their SUBACK
}

func newStatusTable(t topics) *statusTable {
	return &statusTable{t: t, online: make(map[string]bool), pending: make(map[*mqtt.Client][]string)}
}

func (s *statusTable) ID() string { return "meridian-status" }

func (s *statusTable) Provides(b byte) bool {
	return b == mqtt.OnSubscribed || b == mqtt.OnPacketSent || b == mqtt.OnDisconnect
}

// set records a device's status; the caller publishes it live.
func (s *statusTable) set(device string, online bool) {
	s.mu.Lock()
	s.online[device] = online
	s.mu.Unlock()
}

func (s *statusTable) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	var fs []string
	for i, f := range pk.Filters {
		if (i < len(codes) && codes[i] >= 0x80) || mqtt.IsSharedFilter(f.Filter) || f.RetainHandling == 2 {
			continue // refused; shared subscriptions get no retained messages (MQTT 5 §4.8.2); or asked for none
		}
		fs = append(fs, f.Filter)
	}
	if len(fs) == 0 {
		return
	}
	s.mu.Lock()
	s.pending[cl] = append(s.pending[cl], fs...)
	s.mu.Unlock()
}

// OnPacketSent runs on the subscribing client's goroutine after mochi wrote
// the SUBACK (outside the client's write lock), so the statuses follow it.
func (s *statusTable) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	s.mu.Lock()
	fs := s.pending[cl]
	delete(s.pending, cl)
	if len(fs) == 0 {
		s.mu.Unlock()
		return
	}
	type st struct {
		topic  string
		online bool
	}
	var out []st
	for dev, up := range s.online {
		topic := s.t.status(dev)
		for _, f := range fs {
			if matchFilter(f, topic) {
				out = append(out, st{topic, up})
				break
			}
		}
	}
	s.mu.Unlock()
	for _, o := range out {
		payload := []byte("offline")
		if o.online {
			payload = []byte("online")
		}
		err := cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName:   o.topic,
			Payload:     payload,
		})
		if err != nil {
			return // the client is gone or cannot take it; it resubscribes on reconnect
		}
	}
}

func (s *statusTable) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	s.mu.Lock()
	delete(s.pending, cl)
	s.mu.Unlock()
}
