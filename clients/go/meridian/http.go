package meridian

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/meridian-iot/meridian/ingest/wire"
)

// Endpoints derives the WebSocket endpoint and the HTTP base URL from a
// server URL. raw may be the server's base URL (http://host:8470, the form
// the docs use) or the WebSocket endpoint itself (ws://host:8470/v1/device);
// wss and https pair the same way ws and http do.
func Endpoints(raw string) (wsURL, httpBase string, err error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil {
		return "", "", fmt.Errorf("meridian: server url: %w", err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "http"
	case "https", "wss":
		u.Scheme = "https"
	default:
		return "", "", fmt.Errorf("meridian: server url %q: scheme must be http, https, ws or wss", raw)
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("meridian: server url %q has no host", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/v1/device")
	httpBase = u.String()
	u.Scheme = "ws" + strings.TrimPrefix(u.Scheme, "http")
	u.Path += "/v1/device"
	return u.String(), httpBase, nil
}

// HTTPDevice is the HTTP fallback of docs/protocol.md 10: GET
// /v1/device/hello and POST /v1/device/batches, for devices that wake, send
// and sleep or sit behind proxies that strip Upgrade. It carries no state of
// its own; the caller sends one batch at a time, in seq order. Safe for
// concurrent use (it is only a client and two URLs), but the protocol
// wants one request in flight per device.
type HTTPDevice struct {
	Client  *http.Client // nil: http.DefaultClient
	BaseURL string       // http(s)://host[:port], see Endpoints
	Token   string
	// MaxBody bounds a response body (DefaultMaxServerFrame when 0).
	MaxBody int
}

// Hello fetches the device's hello (its acked watermark and limits). A
// status other than 200 is returned with a nil hello and a nil error; err is
// a transport or decoding failure.
func (h *HTTPDevice) Hello(ctx context.Context) (*wire.Hello, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.BaseURL+"/v1/device/hello", nil)
	if err != nil {
		return nil, 0, fmt.Errorf("meridian: hello request: %w", err)
	}
	status, body, err := h.do(req)
	if err != nil || status != http.StatusOK {
		return nil, status, err
	}
	var hl wire.Hello
	if _, err := hl.UnmarshalMsg(body); err != nil {
		return nil, status, fmt.Errorf("meridian: decode hello: %w", err)
	}
	return &hl, status, nil
}

// Post sends one encoded batch (or any body: the bytes are not checked) and
// returns the status and body. 200 carries an ack; every other status
// means the batch was not acked (docs/protocol.md 10, "Status codes").
func (h *HTTPDevice) Post(ctx context.Context, frame []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.BaseURL+"/v1/device/batches", bytes.NewReader(frame))
	if err != nil {
		return 0, nil, fmt.Errorf("meridian: batch request: %w", err)
	}
	req.Header.Set("Content-Type", "application/msgpack")
	return h.do(req)
}

func (h *HTTPDevice) do(req *http.Request) (int, []byte, error) {
	req.Header.Set("Authorization", "Bearer "+h.Token)
	hc := h.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("meridian: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	limit := h.MaxBody
	if limit <= 0 {
		limit = DefaultMaxServerFrame
	}
	body, err := readAll(resp.Body, limit)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("meridian: read %s answer: %w", req.URL.Path, err)
	}
	return resp.StatusCode, body, nil
}
