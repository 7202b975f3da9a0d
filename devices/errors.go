package devices

import (
	"errors"
	"fmt"
)

// authError is the type of ErrUnauthorized. Its Unauthorized method lets a
// package that must not import devices (ingest) recognise the error with
//
//	var u interface{ Unauthorized() bool }
//	if errors.As(err, &u) && u.Unauthorized() { ... }
type authError struct{}

func (authError) Error() string      { return "unauthorized" }
func (authError) Unauthorized() bool { return true }

var (
	// ErrUnauthorized: a missing, malformed, unknown, expired or revoked
	// credential, a credential of the wrong kind (a device token where an API
	// key is needed or the reverse), or a disabled device. Callers answer 401
	// (HTTP) or close 1008 (WebSocket) and must not tell the cases apart to
	// the client.
	ErrUnauthorized error = authError{}
	// ErrForbidden: a valid API key whose role is not enough.
	ErrForbidden = errors.New("forbidden")
	// ErrProvisioningOff: POST /v1/provision while no provisioning key is set.
	ErrProvisioningOff = errors.New("provisioning is turned off")
	// ErrBadProvisioningKey: the provisioning key presented does not match.
	ErrBadProvisioningKey = errors.New("invalid provisioning key")
	// ErrDisabled: an operation that needs an enabled device (provisioning).
	ErrDisabled = errors.New("device is disabled")
	// ErrLastAdmin: revoking the only active admin key would lock operators
	// out of the admin API.
	ErrLastAdmin = errors.New("refusing to revoke the last active admin key")
)

// InvalidError is bad input; Field names the offending field (JSON name or
// CLI argument), so the client can be told precisely what to fix.
type InvalidError struct {
	Field string
	Msg   string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Msg }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// unauthorized wraps ErrUnauthorized with the reason, for logs. The HTTP
// layer sends only a generic message so a client cannot probe which case hit.
func unauthorized(reason string) error {
	return fmt.Errorf("%w: %s", ErrUnauthorized, reason)
}
