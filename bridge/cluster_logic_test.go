package bridge

import (
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

// Logic tests of the cluster part alone: records in, decisions and pending
// records out. The two-node tests (cluster_test.go) run the same rules
// through a real broker.

func newTestCluster(node string) *cluster {
	now := func() time.Time { return time.UnixMilli(1000) }
	return newCluster(node, now, slog.New(slog.DiscardHandler), func() {})
}

func claimJSON(t *testing.T, c claim) []byte {
	t.Helper()
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// ownClaim returns the session id of the claim c made for device.
func ownClaim(t *testing.T, c *cluster, device string) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.held[device]
	if h == nil {
		t.Fatalf("%s does not hold %s", c.node, device)
	}
	return h.claim
}

func TestClusterTakeoverFollowsBrokerOrder(t *testing.T) {
	tests := []struct {
		name         string
		echoFirst    bool // our claim's echo arrives before the other node's claim
		wantTakeover bool
	}{
		{"other claim after our echo closes our session", true, true},
		{"other claim before our echo is stale", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCluster("a")
			c.open("d1", 1)
			own := claimJSON(t, claim{Node: "a", Session: ownClaim(t, c, "d1"), Online: true, At: 1})
			other := claimJSON(t, claim{Node: "b", Session: "x.1", Online: true, At: 2})
			if tt.echoFirst {
				if _, err := c.onSession("d1", own); err != nil {
					t.Fatal(err)
				}
			}
			ev, err := c.onSession("d1", other)
			if err != nil {
				t.Fatal(err)
			}
			if ev.takenOver != tt.wantTakeover || !ev.elsewhere || ev.by != "b" {
				t.Fatalf("event %+v, want takenOver=%v elsewhere by b", ev, tt.wantTakeover)
			}
			if c.holds("d1") == tt.wantTakeover {
				t.Fatalf("holds = %v after takeover=%v", c.holds("d1"), tt.wantTakeover)
			}
		})
	}
}

func TestClusterResponsible(t *testing.T) {
	c := newTestCluster("b")
	nodeUp := func(n string, up bool) {
		payload := "offline"
		if up {
			payload = "online"
		}
		c.onNode(n, []byte(payload))
	}
	nodeUp("a", true)
	nodeUp("c", true)
	if c.responsible("new") {
		t.Fatal("b answers for an unknown device while a (sorting first) is online")
	}
	if _, err := c.onSession("d1", claimJSON(t, claim{Node: "c", Session: "c.1", Online: false})); err != nil {
		t.Fatal(err)
	}
	if c.responsible("d1") {
		t.Fatal("b answers for d1 while its last owner c is online")
	}
	nodeUp("c", false)
	nodeUp("a", false)
	if !c.responsible("d1") {
		t.Fatal("b does not answer for d1 with its last owner offline and b first online")
	}
	c.open("d2", 1)
	nodeUp("a", true)
	if !c.responsible("d2") {
		t.Fatal("b does not answer for a device it holds")
	}
}

func TestClusterDeadNodeRelease(t *testing.T) {
	c := newTestCluster("a")
	c.onNode("b", []byte("online"))
	for _, d := range []string{"d1", "d2"} {
		if _, err := c.onSession(d, claimJSON(t, claim{Node: "b", Session: "b." + d, Online: true})); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.takePending(10); len(got) != 0 {
		t.Fatalf("pending %+v before b went offline", got)
	}
	if c.onNode("b", []byte("offline")) {
		t.Fatal("another node's offline reported as our own Will")
	}
	got := c.takePending(10)
	if len(got) != 2 {
		t.Fatalf("released %d devices, want 2: %+v", len(got), got)
	}
	for _, r := range got {
		if r.status != "offline" || r.claim == nil || r.claim.Node != "b" || r.claim.Online || r.claim.Session != "b."+r.device {
			t.Fatalf("release %+v, want offline in b's name with its session", r)
		}
	}
	// Not first by name: c leaves it to a.
	c2 := newTestCluster("c")
	c2.onNode("a", []byte("online"))
	if _, err := c2.onSession("d1", claimJSON(t, claim{Node: "b", Session: "b.1", Online: true})); err != nil {
		t.Fatal(err)
	}
	c2.onNode("b", []byte("offline"))
	if got := c2.takePending(10); len(got) != 0 {
		t.Fatalf("c released %+v although a sorts first", got)
	}
}

func TestClusterSelfCorrection(t *testing.T) {
	c := newTestCluster("a")
	// A record from a previous run of this node that says it holds d1.
	if _, err := c.onSession("d1", claimJSON(t, claim{Node: "a", Session: "old.3", Online: true})); err != nil {
		t.Fatal(err)
	}
	got := c.takePending(10)
	if len(got) != 1 || got[0].status != "offline" || got[0].claim.Session != "old.3" || got[0].claim.Online {
		t.Fatalf("pending %+v, want offline for old.3", got)
	}
	if !c.onNode("a", []byte("offline")) {
		t.Fatal("our own offline node status not reported")
	}
	if _, err := c.onSession("d1", []byte("{")); err == nil {
		t.Fatal("malformed record accepted")
	}
}

func TestClusterCloseAfterTakeoverPublishesNothing(t *testing.T) {
	c := newTestCluster("a")
	c.open("d1", 1)
	c.takePending(10)
	if _, err := c.onSession("d1", claimJSON(t, claim{Node: "b", Session: "b.1", Online: true})); err != nil {
		t.Fatal(err)
	}
	c.close("d1", 2) // arrived before our echo: we still held it
	if got := c.takePending(10); len(got) != 0 {
		t.Fatalf("closing after another node's claim published %+v", got)
	}
}

func TestParseKick(t *testing.T) {
	c := newTestCluster("a")
	tests := []struct {
		name    string
		payload string
		dev     string
		reason  string
		ok      bool
	}{
		{"from another node", `{"node":"b","device":"d1","reason":"revoked"}`, "d1", "revoked", true},
		{"no reason", `{"node":"b","device":"d1"}`, "d1", "closed by operator", true},
		{"our own", `{"node":"a","device":"d1","reason":"x"}`, "", "", false},
		{"bad device", `{"node":"b","device":"D 1"}`, "", "", false},
		{"not json", `kick`, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev, reason, ok := c.parseKick([]byte(tt.payload))
			if dev != tt.dev || reason != tt.reason || ok != tt.ok {
				t.Fatalf("parseKick = %q, %q, %v; want %q, %q, %v", dev, reason, ok, tt.dev, tt.reason, tt.ok)
			}
		})
	}
}
