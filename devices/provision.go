package devices

import (
	"context"
	"errors"
	"fmt"

	"github.com/meridian-iot/meridian/storage"
)

// Provision exchanges a device id and the fleet's provisioning key for a
// device token, registering the device (enabled, name = id) if it is new.
// It fails with ErrProvisioningOff when no key is configured,
// ErrBadProvisioningKey for a wrong key, storage.ErrExists for a registered id
// unless Config.Provisioning.AllowReprovision, and ErrDisabled for a disabled
// device. Reprovisioning revokes the device's other tokens at once and kicks
// its live session: the caller is the reflashed device. Rate limiting is the
// HTTP handler's job (per remote address).
func (s *Service) Provision(ctx context.Context, id, key string) (string, error) {
	if s.cfg.Provisioning.Key == "" {
		return "", ErrProvisioningOff
	}
	if !sameSecret(key, s.cfg.Provisioning.Key) {
		return "", ErrBadProvisioningKey
	}
	if id == "" {
		return "", invalid("device", "is required")
	}
	if err := ValidID(id); err != nil {
		return "", invalid("device", "%s", err.(*InvalidError).Msg)
	}
	d, err := s.repo.GetDevice(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		_, tok, err := s.AddDevice(ctx, id, "", nil)
		if err != nil {
			return "", fmt.Errorf("provision %q: %w", id, err)
		}
		s.log.Info("device provisioned", "device", id)
		return tok, nil
	}
	if err != nil {
		return "", fmt.Errorf("provision %q: %w", id, err)
	}
	if !s.cfg.Provisioning.AllowReprovision {
		return "", fmt.Errorf("provision %q: device already registered: %w", id, storage.ErrExists)
	}
	if !d.Enabled {
		return "", fmt.Errorf("provision %q: %w", id, ErrDisabled)
	}
	tok, hash := newDeviceToken()
	now := s.now().UTC()
	if err := s.repo.AddDeviceToken(ctx, storage.DeviceToken{Hash: hash, DeviceID: id, CreatedAt: now}); err != nil {
		return "", fmt.Errorf("reprovision %q: store token: %w", id, err)
	}
	if err := s.repo.ExpireDeviceTokens(ctx, id, hash, now); err != nil {
		return "", fmt.Errorf("reprovision %q: revoke old tokens: %w", id, err)
	}
	s.log.Info("device reprovisioned", "device", id)
	s.kick(id, KickReprovisioned)
	return tok, nil
}
