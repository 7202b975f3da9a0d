package devices

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/meridian-iot/meridian/storage"
)

const testProvKey = "fleet-key-0123456789"

func TestProvision(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		key       string // configured
		reprov    bool
		setup     func(*Service) string
		id, given string
		wantErr   error
		wantField string
		wantKick  bool
	}{
		{name: "off", key: "", id: "d", given: testProvKey, wantErr: ErrProvisioningOff},
		{name: "new device", key: testProvKey, id: "d", given: testProvKey},
		{name: "wrong key", key: testProvKey, id: "d", given: "fleet-key-0123456780", wantErr: ErrBadProvisioningKey},
		{name: "no key", key: testProvKey, id: "d", given: "", wantErr: ErrBadProvisioningKey},
		{name: "missing id", key: testProvKey, id: "", given: testProvKey, wantField: "device"},
		{name: "bad id", key: testProvKey, id: "Bad Id", given: testProvKey, wantField: "device"},
		{name: "registered, no reprovision", key: testProvKey, id: "d", given: testProvKey,
			setup: addD, wantErr: storage.ErrExists},
		{name: "registered, reprovision", key: testProvKey, reprov: true, id: "d", given: testProvKey,
			setup: addD, wantKick: true},
		{name: "disabled, reprovision", key: testProvKey, reprov: true, id: "d", given: testProvKey,
			setup: func(s *Service) string { tok := addD(s); s.SetEnabled(ctx, "d", false); return tok }, wantErr: ErrDisabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Provisioning.Key = tt.key
			cfg.Provisioning.AllowReprovision = tt.reprov
			s, _, _, k := newTestService(cfg)
			var oldTok string
			if tt.setup != nil {
				oldTok = tt.setup(s)
			}
			k.take()
			tok, err := s.Provision(ctx, tt.id, tt.given)
			var ie *InvalidError
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.wantField != "":
				if !errors.As(err, &ie) || ie.Field != tt.wantField {
					t.Fatalf("err = %v, want InvalidError on %s", err, tt.wantField)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if got, err := s.AuthenticateDevice(ctx, tok); err != nil || got != tt.id {
				t.Fatalf("provisioned token: %q, %v", got, err)
			}
			kicks := k.take()
			if tt.wantKick {
				if !slices.Equal(kicks, []string{tt.id + ": " + KickReprovisioned}) {
					t.Fatalf("kicks = %v", kicks)
				}
				if _, err := s.AuthenticateDevice(ctx, oldTok); !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("old token still valid after reprovision: %v", err)
				}
			} else if len(kicks) != 0 {
				t.Fatalf("unexpected kicks %v", kicks)
			}
		})
	}
}

func addD(s *Service) string {
	_, tok, err := s.AddDevice(context.Background(), "d", "", nil)
	if err != nil {
		panic(err)
	}
	return tok
}
