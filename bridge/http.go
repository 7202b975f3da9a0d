package bridge

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
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

	k := waitKey{device, cmd.ID}
	ch := make(chan resultJSON, 1)
	b.mu.Lock()
	if _, dup := b.waiters[k]; dup {
		b.mu.Unlock()
		writeJSON(w, http.StatusConflict, httpError{ID: cmd.ID, Error: "duplicate_id", Detail: "a command with this id is already waiting for its result"})
		return
	}
	b.waiters[k] = ch
	_, here := b.held[device]
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.waiters[k] == ch {
			delete(b.waiters, k)
		}
		b.mu.Unlock()
	}()

	switch {
	case here:
		b.dispatch(device, cmd)
	case b.Connected():
		// Through the broker, so that whichever node holds the device
		// delivers it (this one included, if the device connects meanwhile).
		payload, _ := json.Marshal(commandJSON{ID: cmd.ID, Name: cmd.Name, Payload: cmd.JSON, Queue: cmd.Queue})
		if !b.sendEvent(outMsg{topic: b.t.commands(device), payload: payload, kind: "command"}) {
			writeJSON(w, http.StatusServiceUnavailable, httpError{ID: cmd.ID, Error: "overloaded", Detail: "the MQTT publish queue is full"})
			return
		}
	case b.responsible(device):
		// No broker, but no other node could answer either.
		b.dispatch(device, cmd)
	default:
		writeJSON(w, http.StatusServiceUnavailable, httpError{ID: cmd.ID, Error: "broker_unavailable", Detail: "the device is not on this node and the MQTT broker is unreachable"})
		return
	}

	timer := time.NewTimer(b.cfg.CommandTimeout)
	defer timer.Stop()
	select {
	case res := <-ch:
		writeJSON(w, resultStatus(res), res)
	case <-timer.C:
		if cmd.Queue {
			writeJSON(w, http.StatusAccepted, struct {
				ID     string `json:"id"`
				Queued bool   `json:"queued"`
			}{cmd.ID, true})
			return
		}
		writeJSON(w, http.StatusGatewayTimeout, httpError{ID: cmd.ID, Error: "timeout", Detail: "no result within mqtt.command_timeout"})
	case <-r.Context().Done():
	}
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
