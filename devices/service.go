package devices

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/meridian-iot/meridian/storage"
)

// DeviceRepo is the device part of the registry storage.
type DeviceRepo interface {
	CreateDevice(ctx context.Context, d storage.Device) error
	GetDevice(ctx context.Context, id string) (storage.Device, error)
	ListDevices(ctx context.Context) ([]storage.Device, error)
	SetDeviceEnabled(ctx context.Context, id string, enabled bool) error
	DeleteDevice(ctx context.Context, id string, purge bool) error
	// ListSessions is used by Device (device show) for connection history.
	ListSessions(ctx context.Context, device string, limit int) ([]storage.Session, error)
}

// TokenRepo stores device token hashes.
type TokenRepo interface {
	AddDeviceToken(ctx context.Context, t storage.DeviceToken) error
	ExpireDeviceTokens(ctx context.Context, device string, keep []byte, at time.Time) error
	LookupDeviceToken(ctx context.Context, hash []byte) (storage.DeviceToken, error)
}

// KeyRepo stores operator API key hashes.
type KeyRepo interface {
	AddAPIKey(ctx context.Context, k storage.APIKey) error
	LookupAPIKey(ctx context.Context, hash []byte) (storage.APIKey, error)
	ListAPIKeys(ctx context.Context) ([]storage.APIKey, error)
	RevokeAPIKey(ctx context.Context, id string, at time.Time) error
}

// Repo is everything the registry needs from storage (storage/sqlite and
// storage/postgres satisfy it); see storagetest.Backend for the contracts.
// Lookups of absent records return storage.ErrNotFound, creations of taken
// ids storage.ErrExists.
type Repo interface {
	DeviceRepo
	TokenRepo
	KeyRepo
}

// Service is the device registry and operator access control. Build it with
// NewService; it is safe for concurrent use.
type Service struct {
	repo Repo
	cfg  Config
	log  *slog.Logger
	// now is the clock; tests replace it to step through rotation grace and
	// rate limits without sleeping.
	now func() time.Time

	kickMu   sync.RWMutex
	kicks    []func(device, reason string)
	presence func(device string) bool

	// keyMu serialises API key revocation so the last-admin check cannot be
	// raced on this node.
	keyMu sync.Mutex

	// tokens and keys cache credential lookups for up to a second; see
	// credCache for how revocation stays immediate.
	tokens credCache[cachedDevice]
	keys   credCache[storage.APIKey]

	connect   *limiterSet
	readings  *limiterSet
	provision *limiterSet
}

// NewService builds the registry on repo. cfg should have passed Validate;
// zero rate fields take their defaults. A nil log discards.
func NewService(repo Repo, cfg Config, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	return &Service{
		repo: repo,
		cfg:  cfg,
		log:  log,
		now:  time.Now,
		connect: newLimiterSet(rate.Limit(float64(cfg.ConnectPerMinute)/60),
			cfg.ConnectPerMinute, maxLimiters),
		readings: newLimiterSet(rate.Limit(cfg.ReadingsPerSecond),
			int(2*cfg.ReadingsPerSecond), maxLimiters),
		provision: newLimiterSet(rate.Limit(float64(cfg.Provisioning.RatePerMinute)/60),
			cfg.Provisioning.RatePerMinute, maxLimiters),
	}
}

// Kick reasons passed to OnKick callbacks; ingest sends them as the 1008
// close reason, so they are short and safe to show a device.
const (
	KickDisabled      = "device disabled"
	KickRevoked       = "tokens revoked"
	KickRotated       = "token rotated"
	KickDeleted       = "device deleted"
	KickReprovisioned = "device reprovisioned"
)

// OnKick registers f to be called whenever a device's live session must end:
// the device was disabled, its tokens revoked, rotated with zero grace,
// reprovisioned, or it was deleted. f is called synchronously after the store
// change and must not block; ingest closes the session with 1008 and reason.
func (s *Service) OnKick(f func(device, reason string)) {
	s.kickMu.Lock()
	s.kicks = append(s.kicks, f)
	s.kickMu.Unlock()
}

// SetPresence installs the function that tells whether a device has a live
// session on this node (ingest's session registry); the admin API reports it
// as "online". Without it "online" is omitted.
func (s *Service) SetPresence(f func(device string) bool) {
	s.kickMu.Lock()
	s.presence = f
	s.kickMu.Unlock()
}

func (s *Service) online(device string) *bool {
	s.kickMu.RLock()
	f := s.presence
	s.kickMu.RUnlock()
	if f == nil {
		return nil
	}
	on := f(device)
	return &on
}

func (s *Service) kick(device, reason string) {
	s.kickMu.RLock()
	fs := slices.Clone(s.kicks)
	s.kickMu.RUnlock()
	s.ForgetDevice(device)
	s.log.Info("kicking device session", "device", device, "reason", reason)
	for _, f := range fs {
		f(device, reason)
	}
}

var slugRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// ValidID checks a device id: a slug of 1-64 characters, lowercase letters,
// digits, '_', '.', '-', starting with a letter or digit.
func ValidID(id string) error {
	if !slugRe.MatchString(id) {
		return invalid("id", "must match [a-z0-9][a-z0-9_.-]{0,63}, got %q", truncate(id, 80))
	}
	return nil
}

const (
	maxLabels   = 32
	maxLabelVal = 256
	maxName     = 128
)

var labelKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$`)

func validLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return invalid("labels", "at most %d labels, got %d", maxLabels, len(labels))
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !labelKeyRe.MatchString(k) {
			return invalid("labels", "key %q must match [A-Za-z0-9][A-Za-z0-9_./-]{0,62}", truncate(k, 80))
		}
		if err := printable(labels[k], maxLabelVal); err != nil {
			return invalid("labels", "value of %q %s", k, err)
		}
	}
	return nil
}

func printable(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("must be at most %d bytes, got %d", max, len(s))
	}
	if !utf8.ValidString(s) {
		return errors.New("must be valid UTF-8")
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return errors.New("must not contain control characters")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// ParseLabel parses "key=value" as used by ?label= and --label.
func ParseLabel(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", invalid("label", "must be key=value, got %q", truncate(s, 80))
	}
	return k, v, nil
}

// AddDevice registers a device and returns it with its first token, which is
// shown once and never stored in clear. An empty id is generated ("dev-" and
// 12 hex digits); an empty name defaults to the id. A taken id wraps
// storage.ErrExists.
func (s *Service) AddDevice(ctx context.Context, id, name string, labels map[string]string) (storage.Device, string, error) {
	generated := id == ""
	if !generated {
		if err := ValidID(id); err != nil {
			return storage.Device{}, "", err
		}
	}
	if err := printable(name, maxName); err != nil {
		return storage.Device{}, "", invalid("name", "%s", err)
	}
	if err := validLabels(labels); err != nil {
		return storage.Device{}, "", err
	}
	if labels == nil {
		labels = map[string]string{}
	}
	// A generated id can collide (48 bits); try a few before giving up.
	for attempt := 0; ; attempt++ {
		if generated {
			id = "dev-" + randomHex(6)
		}
		d := storage.Device{ID: id, Name: name, Labels: maps.Clone(labels), Enabled: true, CreatedAt: s.now().UTC()}
		if d.Name == "" {
			d.Name = id
		}
		err := s.repo.CreateDevice(ctx, d)
		if generated && errors.Is(err, storage.ErrExists) && attempt < 3 {
			continue
		}
		if err != nil {
			return storage.Device{}, "", fmt.Errorf("add device %q: %w", id, err)
		}
		tok, err := s.issueToken(ctx, id)
		if err != nil {
			// Do not leave a device nobody can authenticate as.
			if derr := s.repo.DeleteDevice(ctx, id, false); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", derr))
			}
			return storage.Device{}, "", fmt.Errorf("add device %q: %w", id, err)
		}
		s.log.Info("device added", "device", id)
		return d, tok, nil
	}
}

// issueToken stores a new token for device and returns it.
func (s *Service) issueToken(ctx context.Context, device string) (string, error) {
	tok, hash := newDeviceToken()
	if err := s.repo.AddDeviceToken(ctx, storage.DeviceToken{Hash: hash, DeviceID: device, CreatedAt: s.now().UTC()}); err != nil {
		return "", fmt.Errorf("store token: %w", err)
	}
	return tok, nil
}

// ListDevices returns the devices carrying every given label (all when
// labels is empty), ordered by id.
func (s *Service) ListDevices(ctx context.Context, labels map[string]string) ([]storage.Device, error) {
	all, err := s.repo.ListDevices(ctx)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	out := all[:0]
	for _, d := range all {
		if hasLabels(d.Labels, labels) {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b storage.Device) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// sessionHistory is how many recent sessions Device returns.
const sessionHistory = 20

// Device returns one device and its most recent sessions (newest first, as
// the backend orders them).
func (s *Service) Device(ctx context.Context, id string) (storage.Device, []storage.Session, error) {
	d, err := s.repo.GetDevice(ctx, id)
	if err != nil {
		return storage.Device{}, nil, fmt.Errorf("get device %q: %w", id, err)
	}
	sess, err := s.repo.ListSessions(ctx, id, sessionHistory)
	if err != nil {
		return storage.Device{}, nil, fmt.Errorf("list sessions of %q: %w", id, err)
	}
	return d, sess, nil
}

// SetEnabled enables or disables a device. A disabled device's tokens stop
// authenticating at once and its live session is kicked.
func (s *Service) SetEnabled(ctx context.Context, id string, enabled bool) error {
	if err := s.repo.SetDeviceEnabled(ctx, id, enabled); err != nil {
		return fmt.Errorf("set device %q enabled=%t: %w", id, enabled, err)
	}
	s.log.Info("device enabled changed", "device", id, "enabled", enabled)
	if !enabled {
		s.kick(id, KickDisabled)
	}
	return nil
}

// RotateToken issues a new token; the device's other tokens keep working for
// Config.TokenGrace (or stop at once, with a kick, when it is zero).
func (s *Service) RotateToken(ctx context.Context, id string) (string, error) {
	if _, err := s.repo.GetDevice(ctx, id); err != nil {
		return "", fmt.Errorf("rotate token of %q: %w", id, err)
	}
	tok, hash := newDeviceToken()
	now := s.now().UTC()
	if err := s.repo.AddDeviceToken(ctx, storage.DeviceToken{Hash: hash, DeviceID: id, CreatedAt: now}); err != nil {
		return "", fmt.Errorf("rotate token of %q: store token: %w", id, err)
	}
	if err := s.repo.ExpireDeviceTokens(ctx, id, hash, now.Add(s.cfg.TokenGrace)); err != nil {
		return "", fmt.Errorf("rotate token of %q: expire old tokens: %w", id, err)
	}
	s.ForgetDevice(id) // cached entries do not know the old tokens' new expiry
	s.log.Info("device token rotated", "device", id, "grace", s.cfg.TokenGrace)
	if s.cfg.TokenGrace == 0 {
		s.kick(id, KickRotated)
	}
	return tok, nil
}

// TokenGrace is the configured rotation grace (for "valid until" displays).
func (s *Service) TokenGrace() time.Duration { return s.cfg.TokenGrace }

// RevokeTokens makes every token of the device invalid now and kicks its
// live session. The device stays registered; RotateToken gives it a new one.
func (s *Service) RevokeTokens(ctx context.Context, id string) error {
	if _, err := s.repo.GetDevice(ctx, id); err != nil {
		return fmt.Errorf("revoke tokens of %q: %w", id, err)
	}
	if err := s.repo.ExpireDeviceTokens(ctx, id, nil, s.now().UTC()); err != nil {
		return fmt.Errorf("revoke tokens of %q: %w", id, err)
	}
	s.log.Info("device tokens revoked", "device", id)
	s.kick(id, KickRevoked)
	return nil
}

// DeleteDevice removes the device, its tokens and sessions, and kicks it.
// Its readings are kept (queryable under the id) unless purge is set.
func (s *Service) DeleteDevice(ctx context.Context, id string, purge bool) error {
	if err := s.repo.DeleteDevice(ctx, id, purge); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	s.log.Info("device deleted", "device", id, "purge", purge)
	s.connect.forget(id)
	s.readings.forget(id)
	s.kick(id, KickDeleted)
	return nil
}
