package devices

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// Credentials a route can need, as listed by Routes.
const (
	CredViewer          = "viewer"           // API key, role viewer or admin
	CredAdmin           = "admin"            // API key, role admin
	CredProvisioningKey = "provisioning-key" // the fleet key, in the JSON body
)

// Route is one HTTP route AdminHandler serves and the credential it needs.
// cmd merges these into the server-wide route table (issue 4: one table lists
// every route; a test walks it with every kind of credential).
type Route struct {
	Method     string
	Path       string // Go ServeMux pattern path, e.g. /v1/admin/devices/{id}
	Credential string
	Summary    string
}

type route struct {
	Route
	h http.HandlerFunc
}

func (s *Service) routes() []route {
	return []route{
		{Route{"GET", "/v1/admin/devices", CredViewer, "list devices (?label=k=v, repeatable)"}, s.handleListDevices},
		{Route{"POST", "/v1/admin/devices", CredAdmin, "add a device; returns its token once"}, s.handleAddDevice},
		{Route{"GET", "/v1/admin/devices/{id}", CredViewer, "show a device and its recent sessions"}, s.handleGetDevice},
		{Route{"DELETE", "/v1/admin/devices/{id}", CredAdmin, "delete a device (?purge=true deletes its readings)"}, s.handleDeleteDevice},
		{Route{"POST", "/v1/admin/devices/{id}/disable", CredAdmin, "disable a device and close its session"}, s.handleSetEnabled(false)},
		{Route{"POST", "/v1/admin/devices/{id}/enable", CredAdmin, "enable a device"}, s.handleSetEnabled(true)},
		{Route{"POST", "/v1/admin/devices/{id}/rotate-token", CredAdmin, "issue a new token; old ones expire after the grace"}, s.handleRotate},
		{Route{"POST", "/v1/admin/devices/{id}/revoke-tokens", CredAdmin, "revoke every token now and close the session"}, s.handleRevoke},
		{Route{"GET", "/v1/admin/apikeys", CredAdmin, "list API keys"}, s.handleListKeys},
		{Route{"POST", "/v1/admin/apikeys", CredAdmin, "add an API key; returns it once"}, s.handleAddKey},
		{Route{"DELETE", "/v1/admin/apikeys/{id}", CredAdmin, "revoke an API key"}, s.handleRevokeKey},
		{Route{"POST", "/v1/provision", CredProvisioningKey, "exchange a device id and the provisioning key for a token"}, s.handleProvision},
	}
}

// Routes lists every route AdminHandler serves with its credential.
func Routes() []Route {
	var s Service
	rs := s.routes()
	out := make([]Route, len(rs))
	for i, r := range rs {
		out[i] = r.Route
	}
	return out
}

// AdminHandler serves /v1/admin/devices..., /v1/admin/apikeys... and
// POST /v1/provision (see Routes and docs/api.md). Mount it for the prefix
// "/v1/admin/" and the path "/v1/provision". Answers are JSON; errors are
// {"error": "..."} (plus "field" for 400s).
func (s *Service) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.routes() {
		var h http.Handler = r.h
		switch r.Credential {
		case CredViewer:
			h = s.RequireRole(RoleViewer, h)
		case CredAdmin:
			h = s.RequireRole(RoleAdmin, h)
		}
		mux.Handle(r.Method+" "+r.Path, h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			notRouted(mux, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notRouted answers an unmatched request in JSON: 405 with Allow when the
// path exists for other methods, else 404.
func notRouted(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "DELETE"} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := mux.Handler(r2); p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, strings.Join(allow, ", ")))
		return
	}
	writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
}

func (s *Service) view(d storage.Device) DeviceView {
	if d.Labels == nil {
		d.Labels = map[string]string{}
	}
	return DeviceView{Device: d, Online: s.online(d.ID)}
}

func (s *Service) handleListDevices(w http.ResponseWriter, r *http.Request) {
	filter := map[string]string{}
	for _, l := range r.URL.Query()["label"] {
		k, v, err := ParseLabel(l)
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		filter[k] = v
	}
	ds, err := s.ListDevices(r.Context(), filter)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	out := DeviceList{Devices: make([]DeviceView, len(ds))}
	for i, d := range ds {
		out.Devices[i] = s.view(d)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) handleAddDevice(w http.ResponseWriter, r *http.Request) {
	var req AddDeviceRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeErr(w, r, err)
		return
	}
	d, tok, err := s.AddDevice(r.Context(), req.ID, req.Name, req.Labels)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeSecret(w, http.StatusCreated, DeviceCreated{Device: s.view(d), Token: tok})
}

func (s *Service) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	d, sess, err := s.Device(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if sess == nil {
		sess = []storage.Session{}
	}
	writeJSON(w, http.StatusOK, DeviceDetail{Device: s.view(d), Sessions: sess})
}

func (s *Service) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	purge := false
	if p := r.URL.Query().Get("purge"); p != "" {
		var err error
		if purge, err = strconv.ParseBool(p); err != nil {
			s.writeErr(w, r, invalid("purge", "must be true or false, got %q", truncate(p, 20)))
			return
		}
	}
	if err := s.DeleteDevice(r.Context(), r.PathValue("id"), purge); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) handleSetEnabled(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := s.SetEnabled(r.Context(), id, enabled); err != nil {
			s.writeErr(w, r, err)
			return
		}
		d, _, err := s.Device(r.Context(), id)
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, DeviceChanged{Device: s.view(d)})
	}
}

func (s *Service) handleRotate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tok, err := s.RotateToken(r.Context(), id)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeSecret(w, http.StatusOK, TokenRotated{
		Device:             id,
		Token:              tok,
		PreviousValidUntil: s.now().UTC().Add(s.cfg.TokenGrace).Format(time.RFC3339),
	})
}

func (s *Service) handleRevoke(w http.ResponseWriter, r *http.Request) {
	if err := s.RevokeTokens(r.Context(), r.PathValue("id")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) handleListKeys(w http.ResponseWriter, r *http.Request) {
	ks, err := s.ListAPIKeys(r.Context())
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if ks == nil {
		ks = []storage.APIKey{}
	}
	writeJSON(w, http.StatusOK, APIKeyList{APIKeys: ks})
}

func (s *Service) handleAddKey(w http.ResponseWriter, r *http.Request) {
	var req AddAPIKeyRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeErr(w, r, err)
		return
	}
	k, secret, err := s.AddAPIKey(r.Context(), req.Name, req.Role)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeSecret(w, http.StatusCreated, APIKeyCreated{APIKey: k, Key: secret})
}

func (s *Service) handleRevokeKey(w http.ResponseWriter, r *http.Request) {
	if err := s.RevokeAPIKey(r.Context(), r.PathValue("id")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) handleProvision(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Provisioning.Key == "" {
		s.writeErr(w, r, ErrProvisioningOff)
		return
	}
	// Limit before looking at the key, so the limit also bounds guessing.
	// The address is the TCP peer: behind a proxy every device shares the
	// proxy's budget (documented in docs/api.md).
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if !s.provision.allow(host, s.now()) {
		w.Header().Set("Retry-After", strconv.Itoa(int((time.Minute/time.Duration(s.cfg.Provisioning.RatePerMinute)).Seconds()+1)))
		writeError(w, http.StatusTooManyRequests, "too many provisioning attempts from this address; retry later")
		return
	}
	var req ProvisionRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeErr(w, r, err)
		return
	}
	tok, err := s.Provision(r.Context(), req.Device, req.Key)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeSecret(w, http.StatusOK, Provisioned{Device: req.Device, Token: tok})
}

// maxBody bounds admin request bodies; the largest legitimate one (a device
// with 32 labels) is a few KiB.
const maxBody = 64 << 10

// decodeJSON reads exactly one JSON object with no unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, io.EOF):
			return invalid("body", "must be a JSON object, got an empty body")
		case errors.As(err, &te) && te.Field != "":
			return invalid(te.Field, "must be a JSON %s, got %s", te.Type, te.Value)
		case errors.As(err, &mbe):
			return invalid("body", "must be at most %d bytes", maxBody)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return invalid(f, "unknown field")
		default:
			return invalid("body", "invalid JSON: %s", err)
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("body", "must hold exactly one JSON object")
	}
	return nil
}

// writeErr maps an error to its status. Internal errors are logged here,
// once, and the client gets no detail.
func (s *Service) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var ie *InvalidError
	switch {
	case errors.As(err, &ie):
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: ie.Error(), Field: ie.Field})
	case errors.Is(err, ErrUnauthorized):
		writeError(w, http.StatusUnauthorized, "unauthorized")
	case errors.Is(err, ErrBadProvisioningKey):
		writeError(w, http.StatusForbidden, ErrBadProvisioningKey.Error())
	case errors.Is(err, ErrDisabled):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, ErrProvisioningOff):
		writeError(w, http.StatusNotFound, ErrProvisioningOff.Error())
	case errors.Is(err, storage.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, storage.ErrExists), errors.Is(err, ErrLastAdmin):
		writeError(w, http.StatusConflict, err.Error())
	default:
		s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorBody{Error: msg})
}

// writeSecret is writeJSON for answers that carry a token or key: no cache
// may keep them.
func writeSecret(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the status is sent; a failed write means the client left
}
