package devices

import (
	"context"
	"errors"
	"fmt"

	"github.com/meridian-iot/meridian/storage"
)

// AddAPIKey creates an operator key with role "admin" or "viewer" and returns
// it with its secret "mak_<id>_<secret>", shown once. name is free text for
// humans (at most 128 bytes).
func (s *Service) AddAPIKey(ctx context.Context, name, role string) (storage.APIKey, string, error) {
	if !validRole(role) {
		return storage.APIKey{}, "", invalid("role", `must be "admin" or "viewer", got %q`, truncate(role, 40))
	}
	if err := printable(name, maxName); err != nil {
		return storage.APIKey{}, "", invalid("name", "%s", err)
	}
	// The id has 48 random bits; retry the rare collision.
	for attempt := 0; ; attempt++ {
		secret, id, hash := newAPIKey()
		k := storage.APIKey{ID: id, Hash: hash, Name: name, Role: role, CreatedAt: s.now().UTC()}
		err := s.repo.AddAPIKey(ctx, k)
		if errors.Is(err, storage.ErrExists) && attempt < 3 {
			continue
		}
		if err != nil {
			return storage.APIKey{}, "", fmt.Errorf("add API key: %w", err)
		}
		s.log.Info("API key added", "apikey", id, "role", role)
		return k, secret, nil
	}
}

// ListAPIKeys returns every key, revoked ones included (hashes are never
// serialised).
func (s *Service) ListAPIKeys(ctx context.Context) ([]storage.APIKey, error) {
	ks, err := s.repo.ListAPIKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	return ks, nil
}

// RevokeAPIKey revokes the key with the given id at once. Revoking an already
// revoked key is a no-op; revoking the last active admin key fails with
// ErrLastAdmin so operators cannot lock themselves out by accident (the CLI,
// working on the store directly, can still add a new key).
func (s *Service) RevokeAPIKey(ctx context.Context, id string) error {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	ks, err := s.repo.ListAPIKeys(ctx)
	if err != nil {
		return fmt.Errorf("revoke API key %q: %w", id, err)
	}
	var target *storage.APIKey
	otherAdmins := 0
	now := s.now()
	for i := range ks {
		k := &ks[i]
		active := k.RevokedAt == nil || now.Before(*k.RevokedAt)
		if k.ID == id {
			target = k
			if !active {
				return nil
			}
		} else if active && k.Role == RoleAdmin {
			otherAdmins++
		}
	}
	if target == nil {
		return fmt.Errorf("revoke API key %q: %w", id, storage.ErrNotFound)
	}
	if target.Role == RoleAdmin && otherAdmins == 0 {
		return fmt.Errorf("revoke API key %q: %w", id, ErrLastAdmin)
	}
	if err := s.repo.RevokeAPIKey(ctx, id, now.UTC()); err != nil {
		return fmt.Errorf("revoke API key %q: %w", id, err)
	}
	s.keys.forget(id)
	s.log.Info("API key revoked", "apikey", id)
	return nil
}
