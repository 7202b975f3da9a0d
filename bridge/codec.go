package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/tinylib/msgp/msgp"
)

// maxCommandBytes bounds one command message (MQTT or HTTP body). The
// converted MessagePack payload is never larger than its JSON, so a command
// frame stays well inside ingest's default 64 KiB frame limit.
const maxCommandBytes = 32 << 10

// command is a parsed operator command.
type command struct {
	ID    string
	Name  string
	Queue bool
	// Payload is the MessagePack form sent to the device (nil: none).
	Payload []byte
	// JSON is the payload as the operator sent it, kept to forward a queued
	// command to another node unchanged.
	JSON json.RawMessage
}

// commandJSON is the wire shape of a command on <prefix>/<device>/commands
// and of the HTTP body.
type commandJSON struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Queue   bool            `json:"queue,omitempty"`
}

// parseCommand decodes and checks one command message. On error, id is the
// command's id when one could still be recovered (so the error can go to
// that command's result topic), else "".
func parseCommand(data []byte, requireID bool) (c command, id string, err error) {
	if len(data) > maxCommandBytes {
		return c, "", fmt.Errorf("command is %d bytes, more than the %d allowed", len(data), maxCommandBytes)
	}
	var raw commandJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return c, recoverID(data), fmt.Errorf("command must be a JSON object {\"id\",\"name\",\"payload\",\"queue\"}: %w", err)
	}
	if dec.More() {
		return c, recoverID(data), errors.New("command must be one JSON object, found trailing data")
	}
	if raw.ID != "" || requireID {
		if err := checkID(raw.ID); err != nil {
			return c, "", err
		}
	}
	id = raw.ID
	if raw.Name == "" || len(raw.Name) > 64 || !utf8.ValidString(raw.Name) || hasControl(raw.Name) {
		return c, id, fmt.Errorf("command name must be 1-64 bytes of printable UTF-8, got %q", truncate(raw.Name, 80))
	}
	c = command{ID: raw.ID, Name: raw.Name, Queue: raw.Queue}
	if len(raw.Payload) > 0 && !bytes.Equal(bytes.TrimSpace(raw.Payload), []byte("null")) {
		p, err := jsonToMsgpack(raw.Payload)
		if err != nil {
			return command{}, id, fmt.Errorf("command payload: %w", err)
		}
		c.Payload = p
		c.JSON = raw.Payload
	}
	return c, id, nil
}

// recoverID digs a usable id out of a command that failed strict decoding.
func recoverID(data []byte) string {
	var v struct {
		ID any `json:"id"`
	}
	if json.NewDecoder(bytes.NewReader(data)).Decode(&v) != nil {
		return ""
	}
	if s, ok := v.ID.(string); ok && checkID(s) == nil {
		return s
	}
	return ""
}

// checkID: a command id becomes a topic level, so it is restricted to a
// safe alphabet (no / + # or $).
func checkID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("command id must be 1-64 characters of [A-Za-z0-9_.:-], got %q", truncate(id, 80))
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '.' || ch == ':' || ch == '-') {
			return fmt.Errorf("command id must be 1-64 characters of [A-Za-z0-9_.:-], got %q", truncate(id, 80))
		}
	}
	return nil
}

// validDevice mirrors the registry's device id rule (a lowercase slug), so
// a topic level that could never be a device is refused early.
func validDevice(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9'
		if i > 0 {
			ok = ok || ch == '_' || ch == '.' || ch == '-'
		}
		if !ok {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// jsonToMsgpack converts one JSON value to MessagePack. Numbers keep their
// integer-ness (json.Number → int64/uint64 when integral, else float64).
func jsonToMsgpack(data []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	v, err := exactNumbers(v)
	if err != nil {
		return nil, err
	}
	out, err := msgp.AppendIntf(nil, v)
	if err != nil {
		return nil, fmt.Errorf("convert to MessagePack: %w", err)
	}
	return out, nil
}

// exactNumbers replaces json.Number with int64, uint64 or float64, in that
// order of preference, so 5 reaches the device as an integer and 2^64-1 is
// not rounded (msgp's own json.Number handling may pick float32).
func exactNumbers(v any) (any, error) {
	switch x := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return i, nil
		}
		if u, err := strconv.ParseUint(string(x), 10, 64); err == nil {
			return u, nil
		}
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s is out of range", truncate(string(x), 40))
		}
		return f, nil
	case map[string]any:
		for k, e := range x {
			n, err := exactNumbers(e)
			if err != nil {
				return nil, err
			}
			x[k] = n
		}
	case []any:
		for i, e := range x {
			n, err := exactNumbers(e)
			if err != nil {
				return nil, err
			}
			x[i] = n
		}
	}
	return v, nil
}

// msgpackToJSON converts a device's MessagePack payload to JSON. Values
// JSON cannot hold become something close: NaN and ±Inf null, binary and
// extensions base64, times RFC 3339.
func msgpackToJSON(data []byte) (json.RawMessage, error) {
	if len(data) == 0 {
		return json.RawMessage("null"), nil
	}
	v, rest, err := msgp.ReadIntfBytes(data)
	if err != nil {
		return nil, fmt.Errorf("decode MessagePack: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("decode MessagePack: %d trailing bytes", len(rest))
	}
	out, err := json.Marshal(jsonSafe(v))
	if err != nil {
		return nil, fmt.Errorf("encode JSON: %w", err)
	}
	return out, nil
}

func jsonSafe(v any) any {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil
		}
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil
		}
	case complex64, complex128:
		return fmt.Sprint(x)
	case []byte:
		return base64.StdEncoding.EncodeToString(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case *msgp.RawExtension:
		return map[string]any{"ext": x.Type, "data": base64.StdEncoding.EncodeToString(x.Data)}
	case map[string]any:
		for k, e := range x {
			x[k] = jsonSafe(e)
		}
	case []any:
		for i, e := range x {
			x[i] = jsonSafe(e)
		}
	}
	return v
}

// resultJSON is the wire shape of <prefix>/<device>/commands/<id>/result
// and of the HTTP response.
type resultJSON struct {
	ID      string          `json:"id,omitempty"`
	OK      bool            `json:"ok"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Error   string          `json:"error,omitempty"`
	Detail  string          `json:"detail,omitempty"`
}

// fromResult converts a device's result for publishing.
func fromResult(r telemetry.CommandResult) resultJSON {
	out := resultJSON{ID: r.ID, OK: r.OK, Error: r.Error}
	if r.Error != "" {
		return out
	}
	p, err := msgpackToJSON(r.Payload)
	if err != nil {
		out.Payload = json.RawMessage("null")
		out.Error = "bad_payload"
		out.Detail = err.Error()
		return out
	}
	out.Payload = p
	return out
}

// claim is the retained ownership record on <prefix>/<device>/session: the
// node that last held the device, which of its sessions, and whether that
// session is still open.
type claim struct {
	Node    string `json:"node"`
	Session string `json:"session"`
	Online  bool   `json:"online"`
	At      int64  `json:"at"`
}

// Telemetry encoding. Hand-written appenders: this runs for every committed
// batch, and the strings involved (device slugs, metric names, node names)
// are short.

func appendBatchJSON(b []byte, node string, bt telemetry.Batch) []byte {
	b = append(b, `{"device":`...)
	b = telemetry.AppendJSONString(b, bt.Device)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, bt.Seq, 10)
	b = append(b, `,"node":`...)
	b = telemetry.AppendJSONString(b, node)
	b = append(b, `,"readings":[`...)
	for i, r := range bt.Readings {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"t":`...)
		b = strconv.AppendInt(b, r.Time, 10)
		b = append(b, `,"metric":`...)
		b = telemetry.AppendJSONString(b, r.Metric)
		b = append(b, `,"value":`...)
		b = telemetry.AppendJSONFloat(b, r.Value)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

func appendReadingJSON(b []byte, r telemetry.Reading) []byte {
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, r.Time, 10)
	b = append(b, `,"value":`...)
	b = telemetry.AppendJSONFloat(b, r.Value)
	return append(b, '}')
}

func appendBatchMsgpack(b []byte, node string, bt telemetry.Batch) []byte {
	b = msgp.AppendMapHeader(b, 4)
	b = msgp.AppendString(b, "device")
	b = msgp.AppendString(b, bt.Device)
	b = msgp.AppendString(b, "seq")
	b = msgp.AppendUint64(b, bt.Seq)
	b = msgp.AppendString(b, "node")
	b = msgp.AppendString(b, node)
	b = msgp.AppendString(b, "readings")
	b = msgp.AppendArrayHeader(b, uint32(len(bt.Readings)))
	for _, r := range bt.Readings {
		b = msgp.AppendMapHeader(b, 3)
		b = msgp.AppendString(b, "t")
		b = msgp.AppendInt64(b, r.Time)
		b = msgp.AppendString(b, "metric")
		b = msgp.AppendString(b, r.Metric)
		b = msgp.AppendString(b, "value")
		b = msgp.AppendFloat64(b, r.Value)
	}
	return b
}

func appendReadingMsgpack(b []byte, r telemetry.Reading) []byte {
	b = msgp.AppendMapHeader(b, 2)
	b = msgp.AppendString(b, "t")
	b = msgp.AppendInt64(b, r.Time)
	b = msgp.AppendString(b, "value")
	return msgp.AppendFloat64(b, r.Value)
}

// remoteBatch is a batch published by some node, as decoded from its
// telemetry message.
type remoteBatch struct {
	Node  string
	Batch telemetry.Batch
}

type batchWire struct {
	Device   string `json:"device"`
	Seq      uint64 `json:"seq"`
	Node     string `json:"node"`
	Readings []struct {
		T      int64    `json:"t"`
		Metric string   `json:"metric"`
		Value  *float64 `json:"value"`
	} `json:"readings"`
}

// decodeBatch reads a telemetry batch message in either format: MessagePack
// maps never start with '{' (0x7b is a positive fixint), so the first byte
// tells them apart and nodes with different mqtt.format still understand
// each other.
func decodeBatch(data []byte) (remoteBatch, error) {
	if len(data) == 0 {
		return remoteBatch{}, errors.New("empty telemetry message")
	}
	if data[0] == '{' {
		var w batchWire
		if err := json.Unmarshal(data, &w); err != nil {
			return remoteBatch{}, fmt.Errorf("decode telemetry JSON: %w", err)
		}
		rb := remoteBatch{Node: w.Node, Batch: telemetry.Batch{Device: w.Device, Seq: w.Seq, Readings: make([]telemetry.Reading, 0, len(w.Readings))}}
		for _, r := range w.Readings {
			v := math.NaN()
			if r.Value != nil {
				v = *r.Value
			}
			rb.Batch.Readings = append(rb.Batch.Readings, telemetry.Reading{Time: r.T, Metric: r.Metric, Value: v})
		}
		return rb, nil
	}
	return decodeBatchMsgpack(data)
}

func decodeBatchMsgpack(b []byte) (rb remoteBatch, err error) {
	wrap := func(err error) (remoteBatch, error) {
		return remoteBatch{}, fmt.Errorf("decode telemetry MessagePack: %w", err)
	}
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return wrap(err)
	}
	for ; n > 0; n-- {
		var key []byte
		if key, b, err = msgp.ReadMapKeyZC(b); err != nil {
			return wrap(err)
		}
		switch string(key) {
		case "device":
			rb.Batch.Device, b, err = msgp.ReadStringBytes(b)
		case "seq":
			rb.Batch.Seq, b, err = msgp.ReadUint64Bytes(b)
		case "node":
			rb.Node, b, err = msgp.ReadStringBytes(b)
		case "readings":
			var cnt uint32
			if cnt, b, err = msgp.ReadArrayHeaderBytes(b); err != nil {
				return wrap(err)
			}
			if int(cnt) > len(b) {
				return wrap(msgp.ErrShortBytes)
			}
			rb.Batch.Readings = make([]telemetry.Reading, 0, cnt)
			for ; cnt > 0; cnt-- {
				var r telemetry.Reading
				if r, b, err = decodeReadingMsgpack(b); err != nil {
					return wrap(err)
				}
				rb.Batch.Readings = append(rb.Batch.Readings, r)
			}
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return wrap(err)
		}
	}
	return rb, nil
}

func decodeReadingMsgpack(b []byte) (r telemetry.Reading, o []byte, err error) {
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return r, b, err
	}
	for ; n > 0; n-- {
		var key []byte
		if key, b, err = msgp.ReadMapKeyZC(b); err != nil {
			return r, b, err
		}
		switch string(key) {
		case "t":
			r.Time, b, err = msgp.ReadInt64Bytes(b)
		case "metric":
			r.Metric, b, err = msgp.ReadStringBytes(b)
		case "value":
			r.Value, b, err = msgp.ReadFloat64Bytes(b)
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return r, b, err
		}
	}
	return r, b, nil
}
