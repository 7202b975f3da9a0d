package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

const (
	// maxCommandBody bounds the form's JSON body; a device's max_frame
	// bounds the real payload further (ingest refuses larger commands).
	maxCommandBody = 32 << 10
	// commandWait is how long the page waits for the device's result.
	commandWait = 10 * time.Second
)

var commandNameRe = regexp.MustCompile(`^[A-Za-z0-9_.:/-]{1,64}$`)

type commandRequest struct {
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

type commandResponse struct {
	ID      string          `json:"id"`
	OK      bool            `json:"ok"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// apiCommand: POST /ui/api/devices/{id}/commands {"name","payload"?}. Admin
// only; a cookie session must send its CSRF token (X-CSRF-Token).
func (d *Dashboard) apiCommand(w http.ResponseWriter, r *http.Request, p Principal) {
	device := r.PathValue("id")
	switch {
	case !p.Admin():
		writeJSON(w, http.StatusForbidden, apiError{Error: "forbidden", Detail: "sending commands needs an admin key"})
		return
	case !d.originAllowed(r) || !checkCSRF(p, r):
		writeJSON(w, http.StatusForbidden, apiError{Error: "csrf", Detail: "missing or wrong CSRF token; reload the page"})
		return
	case d.deps.Commands == nil:
		writeJSON(w, http.StatusNotImplemented, apiError{Error: "unavailable", Detail: "commands are not available on this server"})
		return
	case !deviceRe.MatchString(device):
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: "device: must match [a-z0-9][a-z0-9_.-]{0,63}"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCommandBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: "too_large", Detail: fmt.Sprintf("a command may be at most %d bytes", maxCommandBody)})
		return
	}
	var req commandRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: "body: " + err.Error()})
		return
	}
	if !commandNameRe.MatchString(req.Name) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: "name: must be 1-64 of [A-Za-z0-9_.:/-]"})
		return
	}
	payload, err := jsonToMsgpack(req.Payload)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Detail: "payload: " + err.Error()})
		return
	}
	cmd := telemetry.Command{ID: "ui-" + randomToken(9), Name: req.Name, Payload: payload}
	d.log.Info("dashboard command", "device", device, "command", cmd.Name, "id", cmd.ID, "key", p.KeyID)
	ctx, cancel := context.WithTimeout(r.Context(), commandWait+5*time.Second)
	defer cancel()
	res, err := d.deps.Commands.Send(ctx, device, cmd, commandWait)
	if err != nil {
		d.log.Warn("dashboard command failed", "device", device, "id", cmd.ID, "err", err)
		writeJSON(w, http.StatusBadGateway, commandResponse{ID: cmd.ID, Error: err.Error()})
		return
	}
	out := commandResponse{ID: cmd.ID, OK: res.OK, Error: res.Error}
	if res.ID != "" {
		out.ID = res.ID
	}
	if len(res.Payload) > 0 {
		var buf bytes.Buffer
		if _, err := msgp.UnmarshalAsJSON(&buf, res.Payload); err == nil {
			out.Payload = json.RawMessage(bytes.TrimSpace(buf.Bytes()))
		} else {
			out.Error = "device answered a payload that is not valid MessagePack"
		}
	}
	status := http.StatusOK
	switch res.Error {
	case "":
	case "offline":
		status = http.StatusConflict
	case "timeout":
		status = http.StatusGatewayTimeout
	default:
		status = http.StatusBadGateway
	}
	writeJSON(w, status, out)
}

// jsonToMsgpack converts a JSON payload to MessagePack; empty means nil.
// Integral numbers become integers so a device reading {"delay_s": 5} gets
// an int, not 5.0.
func jsonToMsgpack(raw json.RawMessage) ([]byte, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("must be one JSON value")
	}
	return appendMsgpack(nil, v, 0)
}

const maxPayloadDepth = 32

func appendMsgpack(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxPayloadDepth {
		return nil, errors.New("nested too deeply")
	}
	var err error
	switch x := v.(type) {
	case nil:
		return msgp.AppendNil(b), nil
	case bool:
		return msgp.AppendBool(b, x), nil
	case string:
		return msgp.AppendString(b, x), nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return msgp.AppendInt64(b, i), nil
		}
		f, err := x.Float64()
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("number %s out of range", x)
		}
		return msgp.AppendFloat64(b, f), nil
	case []any:
		b = msgp.AppendArrayHeader(b, uint32(len(x)))
		for _, e := range x {
			if b, err = appendMsgpack(b, e, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case map[string]any:
		b = msgp.AppendMapHeader(b, uint32(len(x)))
		for k, e := range x {
			b = msgp.AppendString(b, k)
			if b, err = appendMsgpack(b, e, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("unsupported JSON value %T", v)
}
