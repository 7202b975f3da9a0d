package bridge

import (
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// cluster is this node's view of the other nodes and of who holds which
// device (docs/scaling.md "Cluster protocol"), and the status and
// ownership records it has yet to publish. It decides; it does not act:
// its methods return what the caller must do (close a session, hand off
// queued commands), and it tells the publisher through changed that
// records are pending.
//
// mu guards everything below it and is held only inside these methods,
// which call nothing outside the cluster while holding it (changed is
// called after unlocking).
type cluster struct {
	node string
	// incarnation is random per process; claim session ids start with it,
	// so a node can tell its own live claims from those of a previous run.
	incarnation string
	now         func() time.Time
	log         *slog.Logger
	changed     func() // records are pending: wakes the publisher

	mu      sync.Mutex
	held    map[string]*holding  // devices with a live session on this node
	claims  map[string]claim     // last ownership record seen per device
	nodes   map[string]bool      // node name → online, from node status topics
	pending map[string]statusPub // status/ownership to publish; latest wins
	seq     uint64               // last claim number of this incarnation
}

type holding struct {
	claim  string // session id of our claim
	echoed bool   // our claim came back from the broker (see onSession)
}

// statusPub is a device's status and/or ownership record waiting to be
// published.
type statusPub struct {
	status string // "online", "offline" or "" (none)
	claim  *claim
}

// pendingRecord is one statusPub taken for publishing.
type pendingRecord struct {
	device string
	statusPub
}

func newCluster(node string, now func() time.Time, log *slog.Logger, changed func()) *cluster {
	return &cluster{
		node:        node,
		incarnation: randomHex(6),
		now:         now,
		log:         log,
		changed:     changed,
		held:        make(map[string]*holding),
		claims:      make(map[string]claim),
		nodes:       make(map[string]bool),
		pending:     make(map[string]statusPub),
	}
}

// open records a device session opening on this node: a new claim, and
// "online".
func (c *cluster) open(device string, at int64) {
	c.mu.Lock()
	c.seq++
	sid := c.incarnation + "." + strconv.FormatUint(c.seq, 10)
	c.held[device] = &holding{claim: sid}
	c.pending[device] = statusPub{status: "online", claim: &claim{Node: c.node, Session: sid, Online: true, At: at}}
	c.mu.Unlock()
	c.changed()
}

// close records a device session closing on this node: the claim is
// released and the device goes "offline", unless another node holds it
// now.
func (c *cluster) close(device string, at int64) {
	c.mu.Lock()
	h := c.held[device]
	delete(c.held, device)
	cl, known := c.claims[device]
	switch {
	case h == nil:
		// Already released: another node took the device over and
		// publishes its status.
	case known && cl.Node != c.node && cl.Online:
		// A newer claim by another node: its status stands.
	default:
		c.pending[device] = statusPub{status: "offline", claim: &claim{Node: c.node, Session: h.claim, Online: false, At: at}}
	}
	c.mu.Unlock()
	c.changed()
}

// holds reports whether the device has a live session on this node.
func (c *cluster) holds(device string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.held[device]
	return ok
}

// responsible reports whether this node answers for a device it may not
// hold: the node holding it; else the last owner named by the device's
// ownership record if that node is online; else the online node whose name
// sorts first. Each node decides from its own view of the retained
// records, so during a change of ownership the views can briefly disagree
// (docs/scaling.md).
func (c *cluster) responsible(device string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[device]; ok {
		return true
	}
	if cl, ok := c.claims[device]; ok && cl.Node != "" {
		if cl.Node == c.node {
			return true
		}
		if c.nodes[cl.Node] {
			return false
		}
	}
	return c.firstNodeLocked()
}

// firstNodeLocked: is this node the online node whose name sorts first?
func (c *cluster) firstNodeLocked() bool {
	for n, up := range c.nodes {
		if up && n < c.node {
			return false
		}
	}
	return true
}

// sessionEvent is what an ownership record asks of the caller.
type sessionEvent struct {
	// takenOver: another node claimed the device after our own claim
	// reached the broker; close the local session (Devices.TakeOver).
	takenOver bool
	// elsewhere: another node holds the device now; commands queued here
	// for it go to that node (router.handOff).
	elsewhere bool
	by        string // the node claiming the device
}

var errMalformedClaim = errors.New("malformed ownership record")

// onSession applies a retained ownership record from
// <prefix>/<device>/session.
func (c *cluster) onSession(device string, payload []byte) (sessionEvent, error) {
	if !validDevice(device) {
		return sessionEvent{}, nil
	}
	if len(payload) == 0 { // record cleared by an operator
		c.mu.Lock()
		delete(c.claims, device)
		c.mu.Unlock()
		return sessionEvent{}, nil
	}
	var cl claim
	if err := json.Unmarshal(payload, &cl); err != nil || cl.Node == "" {
		return sessionEvent{}, errMalformedClaim
	}
	var ev sessionEvent
	var changed bool
	c.mu.Lock()
	c.claims[device] = cl
	h := c.held[device]
	switch {
	case cl.Node == c.node:
		switch {
		case h != nil && h.claim == cl.Session:
			h.echoed = true
		case h == nil && cl.Online:
			// Says we hold it but we do not: left over from a crash of this
			// node, or a lost "offline". Correct it.
			c.pending[device] = statusPub{status: "offline", claim: &claim{Node: c.node, Session: cl.Session, Online: false, At: c.now().UnixMilli()}}
			changed = true
		}
	case cl.Online:
		// A claim by another node that arrives before our own claim's echo
		// was ordered before ours by the broker: it is stale, keep ours.
		if h != nil && h.echoed {
			// Another node claimed the device after our claim reached the
			// broker: the device reconnected there.
			delete(c.held, device)
			ev.takenOver = true
		}
		ev.elsewhere, ev.by = true, cl.Node
		if up, known := c.nodes[cl.Node]; known && !up && c.firstNodeLocked() {
			c.pending[device] = deadNodeRelease(cl, c.now())
			changed = true
		}
	}
	c.mu.Unlock()
	if changed {
		c.changed()
	}
	return ev, nil
}

// deadNodeRelease marks a device offline on behalf of a crashed node.
func deadNodeRelease(cl claim, now time.Time) statusPub {
	return statusPub{status: "offline", claim: &claim{Node: cl.Node, Session: cl.Session, Online: false, At: now.UnixMilli()}}
}

// onStatus heals a race: an "offline" published (by a node that lost the
// device, or on behalf of a dead one) after this node's "online" for a
// device it holds. The status is republished.
func (c *cluster) onStatus(device string, payload []byte) {
	if string(payload) != "offline" {
		return
	}
	var changed bool
	c.mu.Lock()
	if _, ok := c.held[device]; ok {
		if _, queued := c.pending[device]; !queued {
			c.pending[device] = statusPub{status: "online"}
			changed = true
		}
	}
	c.mu.Unlock()
	if changed {
		c.changed()
	}
}

// onNode tracks which nodes are online from <prefix>/_nodes/<node>/status.
// When a node goes offline (its Last Will, or a clean shutdown that could
// not release everything), the first online node marks that node's devices
// offline. ownWill reports this node's own "offline" (the Last Will of an
// earlier connection): the caller says "online" again if connected.
func (c *cluster) onNode(node string, payload []byte) (ownWill bool) {
	up := string(payload) == "online"
	if node == c.node {
		return !up
	}
	c.mu.Lock()
	if len(payload) == 0 {
		delete(c.nodes, node)
		c.mu.Unlock()
		return false
	}
	c.nodes[node] = up
	n := 0
	if !up && c.firstNodeLocked() {
		now := c.now()
		for dev, cl := range c.claims {
			if cl.Node == node && cl.Online {
				c.pending[dev] = deadNodeRelease(cl, now)
				n++
			}
		}
	}
	c.mu.Unlock()
	if n > 0 {
		c.log.Info("node offline: marking its devices offline", "peer", node, "devices", n)
		c.changed()
	}
	return false
}

// takePending removes and returns up to max pending records.
func (c *cluster) takePending(max int) []pendingRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	batch := make([]pendingRecord, 0, min(max, len(c.pending)))
	for dev, sp := range c.pending {
		batch = append(batch, pendingRecord{dev, sp})
		delete(c.pending, dev)
		if len(batch) == max {
			break
		}
	}
	return batch
}

// resync queues "online" for every held device without a record pending:
// after a (re)connect, others may have marked them offline meanwhile.
// Ownership records are not republished (see publisher.resyncState).
func (c *cluster) resync() {
	c.mu.Lock()
	for dev := range c.held {
		if _, ok := c.pending[dev]; !ok {
			c.pending[dev] = statusPub{status: "online"}
		}
	}
	c.mu.Unlock()
}

// releaseAll gives up every held device at shutdown: each goes "offline"
// unless another node claimed it meanwhile. The publisher flushes the
// records.
func (c *cluster) releaseAll() {
	now := c.now().UnixMilli()
	c.mu.Lock()
	for dev, h := range c.held {
		if cl, ok := c.claims[dev]; ok && cl.Node != c.node && cl.Online {
			continue
		}
		c.pending[dev] = statusPub{status: "offline", claim: &claim{Node: c.node, Session: h.claim, Online: false, At: now}}
	}
	clear(c.held)
	c.mu.Unlock()
}

// kickJSON is the payload of <prefix>/_kick.
type kickJSON struct {
	Node   string `json:"node"`
	Device string `json:"device"`
	Reason string `json:"reason"`
}

// kickMessage is the order, from this node, that whichever node holds the
// device closes its session.
func (c *cluster) kickMessage(t topics, device, reason string) outMsg {
	data, _ := json.Marshal(kickJSON{Node: c.node, Device: device, Reason: reason})
	return outMsg{topic: t.kick(), payload: data, kind: "kick"}
}

// maxKickReason bounds the reason a kick carries to the device's close
// frame: a WebSocket close reason holds at most 123 bytes, and 100 plus
// truncate's ellipsis fit.
const maxKickReason = 100

// parseKick reads a kick from another node. ok is false for a malformed
// one and for this node's own (its session was closed by the caller of
// Kick already).
func (c *cluster) parseKick(payload []byte) (device, reason string, ok bool) {
	var k kickJSON
	if json.Unmarshal(payload, &k) != nil || !validDevice(k.Device) || k.Node == c.node {
		return "", "", false
	}
	reason = k.Reason
	if reason == "" {
		reason = "closed by operator"
	}
	return k.Device, truncate(reason, maxKickReason), true
}
