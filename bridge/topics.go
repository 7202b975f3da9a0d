package bridge

import "strings"

// topics builds and parses every topic the bridge uses; the layout is
// documented in docs/mqtt.md.
type topics struct{ prefix string }

func (t topics) telemetry(device string) string { return t.prefix + "/" + device + "/telemetry" }
func (t topics) status(device string) string    { return t.prefix + "/" + device + "/status" }
func (t topics) session(device string) string   { return t.prefix + "/" + device + "/session" }
func (t topics) commands(device string) string  { return t.prefix + "/" + device + "/commands" }
func (t topics) commandError(device string) string {
	return t.prefix + "/" + device + "/commands/error"
}
func (t topics) result(device, id string) string {
	return t.prefix + "/" + device + "/commands/" + id + "/result"
}
func (t topics) node(node string) string { return t.prefix + "/_nodes/" + node + "/status" }

// kick is where a node announces that a device was disabled, deleted or had
// its tokens revoked, so whichever node holds its session closes it.
func (t topics) kick() string { return t.prefix + "/_kick" }

// reserved are the topic levels right under <prefix>/<device>/ that the
// bridge itself uses. A metric whose first level is one of them would
// collide in the per-reading layout, so it is published one level down,
// under "_metric/".
var reserved = map[string]bool{"telemetry": true, "status": true, "session": true, "commands": true, "_metric": true}

// reading is the per-reading topic of a metric.
func (t topics) reading(device, metric string) string {
	first, _, _ := strings.Cut(metric, "/")
	if reserved[first] {
		return t.prefix + "/" + device + "/_metric/" + metric
	}
	return t.prefix + "/" + device + "/" + metric
}

// Subscription filters.
func (t topics) subscriptions(remote bool) map[string]byte {
	f := map[string]byte{
		t.prefix + "/+/commands":          1,
		t.prefix + "/+/commands/+/result": 1,
		t.prefix + "/+/session":           1,
		t.prefix + "/+/status":            1,
		t.prefix + "/_nodes/+/status":     1,
		t.prefix + "/_kick":               1,
	}
	if remote {
		f[t.prefix+"/+/telemetry"] = 0
	}
	return f
}

type inKind int

const (
	inUnknown inKind = iota
	inCommand
	inResult
	inSession
	inStatus
	inNode
	inTelemetry
	inKick
)

// classify maps a received topic to its kind and the device (or node) it
// is about.
func (t topics) classify(topic string) (inKind, string) {
	rest, ok := strings.CutPrefix(topic, t.prefix+"/")
	if !ok {
		return inUnknown, ""
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 1 && parts[0] == "_kick":
		return inKick, ""
	case len(parts) == 3 && parts[0] == "_nodes" && parts[2] == "status":
		return inNode, parts[1]
	case len(parts) == 2 && parts[1] == "commands":
		return inCommand, parts[0]
	case len(parts) == 4 && parts[1] == "commands" && parts[3] == "result":
		return inResult, parts[0]
	case len(parts) == 2 && parts[1] == "session":
		return inSession, parts[0]
	case len(parts) == 2 && parts[1] == "status":
		return inStatus, parts[0]
	case len(parts) == 2 && parts[1] == "telemetry":
		return inTelemetry, parts[0]
	}
	return inUnknown, ""
}
