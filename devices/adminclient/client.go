// Package adminclient is a Go client for Meridian's admin API
// (docs/api.md): devices, their tokens, and operator API keys. It is what
// `meridian device --server` and `meridian apikey --server` use, and any Go
// program that manages a fleet can use it the same way.
//
// The request and answer shapes are the devices package's own (DeviceView,
// DeviceCreated, ...), the ones the server's handlers write.
//
// A *Client is safe for concurrent use.
package adminclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/devices"
	"github.com/meridian-iot/meridian/storage"
)

// DefaultTimeout bounds one request when Options.HTTPClient is nil. The
// slowest admin call (deleting a device with purge) touches every reading of
// one device; 30 s covers that on a loaded server.
const DefaultTimeout = 30 * time.Second

// maxAnswer bounds how much of an answer is read: a list of 100,000 devices
// with labels is a few tens of MiB.
const maxAnswer = 64 << 20

// Options tune a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends the requests (TLS settings, proxies, timeouts). Nil
	// means a client with DefaultTimeout.
	HTTPClient *http.Client
}

// Client calls one server's admin API with one API key.
type Client struct {
	base string
	key  string
	hc   *http.Client
}

// New returns a client for the server at base (e.g. "https://meridian.example:8470")
// authenticating with the operator API key key (mak_...). Read-only calls
// need a viewer key, the others an admin key.
func New(base, key string, opts Options) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL must be http:// or https://host[:port], got %q", base)
	}
	if key == "" {
		return nil, errors.New("an API key is required")
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: DefaultTimeout}
	}
	return &Client{base: strings.TrimRight(base, "/"), key: key, hc: hc}, nil
}

// Error is a non-2xx answer. Field names the request field a 400 is about.
type Error struct {
	Status  int
	Message string
	Field   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("server answered %d: %s", e.Status, e.Message)
}

// IsNotFound reports whether err is a 404 from the server (no such device or key).
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// do sends one request and decodes a 2xx JSON answer into out (may be nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb devices.ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(data))
		}
		return &Error{Status: resp.StatusCode, Message: eb.Error, Field: eb.Field}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func devPath(id string, rest ...string) string {
	return "/v1/admin/devices/" + url.PathEscape(id) + strings.Join(rest, "")
}

// AddDevice registers a device and returns it with its token, which the
// server shows only this once. An empty id has the server generate one.
func (c *Client) AddDevice(ctx context.Context, id, name string, labels map[string]string) (devices.DeviceCreated, error) {
	var out devices.DeviceCreated
	err := c.do(ctx, http.MethodPost, "/v1/admin/devices", devices.AddDeviceRequest{ID: id, Name: name, Labels: labels}, &out)
	return out, err
}

// ListDevices lists the devices carrying every label in labels (all when empty).
func (c *Client) ListDevices(ctx context.Context, labels map[string]string) ([]devices.DeviceView, error) {
	q := url.Values{}
	for k, v := range labels {
		q.Add("label", k+"="+v)
	}
	path := "/v1/admin/devices"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out devices.DeviceList
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Devices, err
}

// Device returns one device and its recent sessions, newest first.
func (c *Client) Device(ctx context.Context, id string) (devices.DeviceDetail, error) {
	var out devices.DeviceDetail
	err := c.do(ctx, http.MethodGet, devPath(id), nil, &out)
	return out, err
}

// SetEnabled enables or disables a device; disabling closes its live session.
func (c *Client) SetEnabled(ctx context.Context, id string, enabled bool) error {
	action := "/disable"
	if enabled {
		action = "/enable"
	}
	return c.do(ctx, http.MethodPost, devPath(id, action), nil, nil)
}

// RotateToken issues a new token; older ones keep working until the
// server's devices.token_grace has passed.
func (c *Client) RotateToken(ctx context.Context, id string) (devices.TokenRotated, error) {
	var out devices.TokenRotated
	err := c.do(ctx, http.MethodPost, devPath(id, "/rotate-token"), nil, &out)
	return out, err
}

// RevokeTokens revokes every token of the device at once and closes its session.
func (c *Client) RevokeTokens(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, devPath(id, "/revoke-tokens"), nil, nil)
}

// DeleteDevice removes a device, its tokens and sessions; with purge its
// readings too.
func (c *Client) DeleteDevice(ctx context.Context, id string, purge bool) error {
	path := devPath(id)
	if purge {
		path += "?purge=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// AddAPIKey creates an operator key with role "admin" or "viewer" and
// returns it with its secret, shown only this once.
func (c *Client) AddAPIKey(ctx context.Context, name, role string) (devices.APIKeyCreated, error) {
	var out devices.APIKeyCreated
	err := c.do(ctx, http.MethodPost, "/v1/admin/apikeys", devices.AddAPIKeyRequest{Name: name, Role: role}, &out)
	return out, err
}

// ListAPIKeys lists operator keys (never their secrets).
func (c *Client) ListAPIKeys(ctx context.Context) ([]storage.APIKey, error) {
	var out devices.APIKeyList
	err := c.do(ctx, http.MethodGet, "/v1/admin/apikeys", nil, &out)
	return out.APIKeys, err
}

// RevokeAPIKey revokes an operator key by id. Revoking the last admin key
// is refused (409).
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/apikeys/"+url.PathEscape(id), nil, nil)
}
