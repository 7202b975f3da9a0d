package devices

import "github.com/meridian-iot/meridian/storage"

// The JSON shapes of the admin API (docs/api.md). The handlers in http.go
// write them and devices/adminclient reads them, so the server and its Go
// client cannot drift apart.

// DeviceView is a device as the admin API shows it.
type DeviceView struct {
	storage.Device
	// Online is whether this node holds a live session (omitted when the
	// service has no presence source).
	Online *bool `json:"online,omitempty"`
}

// DeviceList answers GET /v1/admin/devices.
type DeviceList struct {
	Devices []DeviceView `json:"devices"`
}

// DeviceDetail answers GET /v1/admin/devices/{id}: the device and its most
// recent sessions, newest first.
type DeviceDetail struct {
	Device   DeviceView        `json:"device"`
	Sessions []storage.Session `json:"sessions"`
}

// DeviceChanged answers POST .../enable and .../disable.
type DeviceChanged struct {
	Device DeviceView `json:"device"`
}

// AddDeviceRequest is the body of POST /v1/admin/devices.
type AddDeviceRequest struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// DeviceCreated answers POST /v1/admin/devices. Token is shown only here.
type DeviceCreated struct {
	Device DeviceView `json:"device"`
	Token  string     `json:"token"`
}

// TokenRotated answers POST .../rotate-token. Older tokens stay valid until
// PreviousValidUntil (RFC 3339, UTC).
type TokenRotated struct {
	Device             string `json:"device"`
	Token              string `json:"token"`
	PreviousValidUntil string `json:"previous_valid_until"`
}

// APIKeyList answers GET /v1/admin/apikeys.
type APIKeyList struct {
	APIKeys []storage.APIKey `json:"apikeys"`
}

// AddAPIKeyRequest is the body of POST /v1/admin/apikeys.
type AddAPIKeyRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// APIKeyCreated answers POST /v1/admin/apikeys. Key is shown only here.
type APIKeyCreated struct {
	APIKey storage.APIKey `json:"apikey"`
	Key    string         `json:"key"`
}

// ProvisionRequest is the body of POST /v1/provision.
type ProvisionRequest struct {
	Device string `json:"device"`
	Key    string `json:"key"`
}

// Provisioned answers POST /v1/provision.
type Provisioned struct {
	Device string `json:"device"`
	Token  string `json:"token"`
}

// ErrorBody is every error answer: a message, and for a 400 the request
// field it is about.
type ErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}
