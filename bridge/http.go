package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
)

// CommandHandler serves POST /v1/admin/devices/{id}/commands: body
// {"id"?, "name", "payload"?, "queue"?}. It delivers the command wherever
// the device is connected (through the broker when it is on another node)
// and waits up to Config.CommandTimeout for the result:
//
//	200 the device's result {"id","ok","payload"}
//	202 queue:true and no result yet: {"id","queued":true}; the result
//	    will be published on MQTT
//	400 bad device id or body; 404 unknown device (with Options.DeviceExists)
//	409 device offline {"id","ok":false,"error":"offline"}, or the id is
//	    already waiting
//	502 delivery failed or the device's payload could not be converted
//	503 device busy, queue full, or the broker is unreachable and the device
//	    is not on this node; 504 no result in time
//
// Mount it behind operator (admin) authentication; it does none itself.
func (b *Bridge) CommandHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/admin/devices/{id}/commands", b.serveCommand)
	return mux
}

type httpError struct {
	ID     string `json:"id,omitempty"`
	Error  string `json:"error"`
	Detail string `json:"detail,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (b *Bridge) serveCommand(w http.ResponseWriter, r *http.Request) {
	device := r.PathValue("id")
	if !validDevice(device) {
		writeJSON(w, http.StatusBadRequest, httpError{Error: "invalid_device", Detail: "device ids are 1-64 of lowercase letters, digits, _ . - starting with a letter or digit"})
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCommandBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, httpError{Error: "too_large", Detail: "a command body may be at most 32768 bytes"})
			return
		}
		writeJSON(w, http.StatusBadRequest, httpError{Error: "bad_body", Detail: err.Error()})
		return
	}
	cmd, _, err := parseCommand(data, false)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, httpError{Error: "malformed", Detail: err.Error()})
		return
	}
	if cmd.ID == "" {
		cmd.ID = "h-" + randomHex(8)
	}
	if b.opts.DeviceExists != nil {
		ok, err := b.opts.DeviceExists(r.Context(), device)
		if err != nil {
			b.log.Error("command: device lookup failed", "device", device, "err", err)
			writeJSON(w, http.StatusInternalServerError, httpError{Error: "internal", Detail: "device lookup failed"})
			return
		}
		if !ok {
			writeJSON(w, http.StatusNotFound, httpError{Error: "unknown_device", Detail: "no device " + device})
			return
		}
	}

	res, got, err := b.cmds.await(r.Context(), device, cmd, b.cfg.CommandTimeout)
	switch {
	case errors.Is(err, ErrDuplicateID):
		writeJSON(w, http.StatusConflict, httpError{ID: cmd.ID, Error: "duplicate_id", Detail: err.Error()})
	case errors.Is(err, ErrOverloaded):
		writeJSON(w, http.StatusServiceUnavailable, httpError{ID: cmd.ID, Error: "overloaded", Detail: err.Error()})
	case errors.Is(err, ErrBrokerUnavailable):
		writeJSON(w, http.StatusServiceUnavailable, httpError{ID: cmd.ID, Error: "broker_unavailable", Detail: err.Error()})
	case err != nil:
		// The caller went away; nobody is listening.
	case got:
		writeJSON(w, resultStatus(res), res)
	case cmd.Queue:
		writeJSON(w, http.StatusAccepted, struct {
			ID     string `json:"id"`
			Queued bool   `json:"queued"`
		}{cmd.ID, true})
	default:
		writeJSON(w, http.StatusGatewayTimeout, httpError{ID: cmd.ID, Error: "timeout", Detail: "no result within mqtt.command_timeout"})
	}
}

// Errors of Send (and the HTTP endpoint) for commands that could not even
// be tried.
var (
	ErrDuplicateID       = errors.New("a command with this id is already waiting for its result")
	ErrOverloaded        = errors.New("the MQTT publish queue is full")
	ErrBrokerUnavailable = errors.New("the device is not on this node and the MQTT broker is unreachable")
)

// Send delivers a command wherever the device is connected (through the
// broker when it is on another node) and waits up to wait for its result;
// it is what the HTTP endpoint does, for Go callers such as the dashboard.
// An offline device, a busy one or no answer in time come back in
// CommandResult.Error ("offline", "busy", "timeout", ...); err is for
// commands that could not be tried. Payloads are MessagePack both ways.
func (b *Bridge) Send(ctx context.Context, device string, c telemetry.Command, wait time.Duration) (telemetry.CommandResult, error) {
	cmd := command{ID: c.ID, Name: c.Name}
	if cmd.ID == "" {
		cmd.ID = "h-" + randomHex(8)
	}
	if err := checkID(cmd.ID); err != nil {
		return telemetry.CommandResult{}, err
	}
	if len(c.Payload) > 0 && !bytes.Equal(c.Payload, []byte{0xc0}) {
		js, err := msgpackToJSON(c.Payload)
		if err != nil {
			return telemetry.CommandResult{}, fmt.Errorf("command payload: %w", err)
		}
		cmd.Payload, cmd.JSON = c.Payload, js
	}
	res, got, err := b.cmds.await(ctx, device, cmd, wait)
	if err != nil {
		return telemetry.CommandResult{}, err
	}
	out := telemetry.CommandResult{Device: device, ID: cmd.ID}
	if !got {
		out.Error = "timeout"
		return out, nil
	}
	out.OK, out.Error = res.OK, res.Error
	if len(res.Payload) > 0 && !bytes.Equal(bytes.TrimSpace(res.Payload), []byte("null")) {
		p, err := jsonToMsgpack(res.Payload)
		if err != nil {
			out.Error = "bad_payload"
			return out, nil
		}
		out.Payload = p
	}
	return out, nil
}

func resultStatus(r resultJSON) int {
	switch r.Error {
	case "":
		return http.StatusOK
	case "offline":
		return http.StatusConflict
	case "busy", "queue_full":
		return http.StatusServiceUnavailable
	case "expired":
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}
