package devices

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

var tokenRe = regexp.MustCompile(`^mdt_[A-Za-z0-9_-]{43}$`)

func TestAddDeviceTokenFormatAndHashing(t *testing.T) {
	s, repo, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	d, tok, err := s.AddDevice(ctx, "boiler-7", "Boiler 7", map[string]string{"site": "north"})
	if err != nil {
		t.Fatal(err)
	}
	if !tokenRe.MatchString(tok) {
		t.Fatalf("token %q does not match %s", tok, tokenRe)
	}
	if d.ID != "boiler-7" || d.Name != "Boiler 7" || !d.Enabled || d.Labels["site"] != "north" {
		t.Fatalf("device = %+v", d)
	}
	if len(repo.tokens) != 1 {
		t.Fatalf("stored %d tokens, want 1", len(repo.tokens))
	}
	want := sha256.Sum256([]byte(tok))
	if !bytes.Equal(repo.tokens[0].Hash, want[:]) {
		t.Fatal("stored hash is not SHA-256 of the token")
	}
	if bytes.Contains(repo.tokens[0].Hash, []byte(tok)) {
		t.Fatal("token stored in clear")
	}
	// Two tokens never repeat.
	_, tok2, err := s.AddDevice(ctx, "boiler-8", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == tok {
		t.Fatal("two devices got the same token")
	}
	if got, err := s.AuthenticateDevice(ctx, tok); err != nil || got != "boiler-7" {
		t.Fatalf("AuthenticateDevice = %q, %v", got, err)
	}
}

func TestAddDeviceValidation(t *testing.T) {
	tests := []struct {
		name      string
		id, dname string
		labels    map[string]string
		wantField string
		wantIs    error
	}{
		{name: "generated id"},
		{name: "uppercase id", id: "Boiler", wantField: "id"},
		{name: "leading dash", id: "-x", wantField: "id"},
		{name: "too long id", id: strings.Repeat("a", 65), wantField: "id"},
		{name: "max id", id: strings.Repeat("a", 64)},
		{name: "dots and underscores", id: "a.b_c-d"},
		{name: "control char in name", id: "x1", dname: "a\nb", wantField: "name"},
		{name: "bad label key", id: "x2", labels: map[string]string{"a b": "c"}, wantField: "labels"},
		{name: "too many labels", id: "x3", labels: manyLabels(33), wantField: "labels"},
		{name: "duplicate", id: "dup", wantIs: storage.ErrExists},
	}
	s, _, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	if _, _, err := s.AddDevice(ctx, "dup", "", nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _, err := s.AddDevice(ctx, tt.id, tt.dname, tt.labels)
			var ie *InvalidError
			switch {
			case tt.wantField != "":
				if !errors.As(err, &ie) || ie.Field != tt.wantField {
					t.Fatalf("err = %v, want InvalidError on %q", err, tt.wantField)
				}
			case tt.wantIs != nil:
				if !errors.Is(err, tt.wantIs) {
					t.Fatalf("err = %v, want %v", err, tt.wantIs)
				}
			case err != nil:
				t.Fatal(err)
			case tt.id == "" && !strings.HasPrefix(d.ID, "dev-"):
				t.Fatalf("generated id %q", d.ID)
			case ValidID(d.ID) != nil:
				t.Fatalf("id %q invalid", d.ID)
			}
		})
	}
}

func manyLabels(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m["k"+strings.Repeat("x", i)] = "v"
	}
	return m
}

func TestAddDeviceUndoesOnTokenFailure(t *testing.T) {
	s, repo, _, _ := newTestService(DefaultConfig())
	failing := &tokenFailRepo{fakeRepo: repo}
	s.repo = failing
	if _, _, err := s.AddDevice(context.Background(), "x", "", nil); err == nil {
		t.Fatal("AddDevice succeeded with a failing token store")
	}
	if _, ok := repo.devices["x"]; ok {
		t.Fatal("device left behind without a token")
	}
}

type tokenFailRepo struct{ *fakeRepo }

func (tokenFailRepo) AddDeviceToken(context.Context, storage.DeviceToken) error {
	return errors.New("disk full")
}

func TestListDevicesLabelFilter(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	for _, d := range []struct {
		id     string
		labels map[string]string
	}{
		{"c", map[string]string{"site": "north", "kind": "boiler"}},
		{"a", map[string]string{"site": "north"}},
		{"b", map[string]string{"site": "south"}},
	} {
		if _, _, err := s.AddDevice(ctx, d.id, "", d.labels); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		filter map[string]string
		want   []string
	}{
		{"all", nil, []string{"a", "b", "c"}},
		{"site", map[string]string{"site": "north"}, []string{"a", "c"}},
		{"two labels", map[string]string{"site": "north", "kind": "boiler"}, []string{"c"}},
		{"none", map[string]string{"site": "east"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := s.ListDevices(ctx, tt.filter)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range ds {
				got = append(got, d.ID)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAuthenticateDevice(t *testing.T) {
	s, _, clk, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	_, good, _ := s.AddDevice(ctx, "good", "", nil)
	_, disabled, _ := s.AddDevice(ctx, "off", "", nil)
	if err := s.SetEnabled(ctx, "off", false); err != nil {
		t.Fatal(err)
	}
	_, deleted, _ := s.AddDevice(ctx, "gone", "", nil)
	if err := s.DeleteDevice(ctx, "gone", false); err != nil {
		t.Fatal(err)
	}
	_, revoked, _ := s.AddDevice(ctx, "rev", "", nil)
	if err := s.RevokeTokens(ctx, "rev"); err != nil {
		t.Fatal(err)
	}
	_, apiKey, _ := s.AddAPIKey(ctx, "ops", RoleAdmin)
	unknown, _ := newDeviceToken()
	clk.Advance(time.Second)

	tests := []struct {
		name, token, want string
	}{
		{"valid", good, "good"},
		{"empty", "", ""},
		{"unknown", unknown, ""},
		{"no prefix", strings.TrimPrefix(good, DeviceTokenPrefix), ""},
		{"api key", apiKey, ""},
		{"disabled device", disabled, ""},
		{"deleted device", deleted, ""},
		{"revoked", revoked, ""},
		{"too long", good + strings.Repeat("x", 300), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.AuthenticateDevice(ctx, tt.token)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("err = %v, want ErrUnauthorized", err)
			}
			// ingest recognises it without importing devices.
			var u interface{ Unauthorized() bool }
			if !errors.As(err, &u) || !u.Unauthorized() {
				t.Fatalf("err %v does not satisfy interface{ Unauthorized() bool }", err)
			}
			if strings.Contains(err.Error(), tt.token) && tt.token != "" {
				t.Fatal("error message contains the token")
			}
		})
	}
}

func TestAuthenticateStorageFailureIsNotUnauthorized(t *testing.T) {
	s, repo, _, _ := newTestService(DefaultConfig())
	_, tok, _ := s.AddDevice(context.Background(), "d", "", nil)
	repo.fail = errors.New("connection refused")
	_, err := s.AuthenticateDevice(context.Background(), tok)
	if err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want a non-auth failure", err)
	}
}

// A backend whose lookup matched loosely must not let a wrong token in: the
// service compares the full hash (in constant time) after the lookup.
func TestConstantTimeComparePath(t *testing.T) {
	s, repo, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	_, tok, _ := s.AddDevice(ctx, "d", "", nil)
	k, key, _ := s.AddAPIKey(ctx, "ops", RoleAdmin)
	repo.loose = true

	var wrongTok string
	for { // find a different token whose hash shares the first byte
		cand, h := newDeviceToken()
		if h[0] == hashSecret(tok)[0] {
			wrongTok = cand
			break
		}
	}
	if rec, err := repo.LookupDeviceToken(ctx, hashSecret(wrongTok)); err != nil || rec.DeviceID != "d" {
		t.Fatalf("loose fake did not match: %v", err)
	}
	if _, err := s.AuthenticateDevice(ctx, wrongTok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token accepted: %v", err)
	}
	if got, err := s.AuthenticateDevice(ctx, tok); err != nil || got != "d" {
		t.Fatalf("right token refused: %v", err)
	}

	var wrongKey string
	for {
		cand, _, h := newAPIKey()
		if h[0] == hashSecret(key)[0] {
			wrongKey = cand
			break
		}
	}
	if _, err := s.AuthenticateOperator(ctx, wrongKey); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong key accepted: %v", err)
	}
	if got, err := s.AuthenticateOperator(ctx, key); err != nil || got.ID != k.ID {
		t.Fatalf("right key refused: %v", err)
	}
}

func TestSameHash(t *testing.T) {
	a := hashSecret("a")
	tests := []struct {
		name string
		x, y []byte
		want bool
	}{
		{"equal", a, hashSecret("a"), true},
		{"different", a, hashSecret("b"), false},
		{"short", a[:8], a[:8], false},
		{"nil", nil, nil, false},
	}
	for _, tt := range tests {
		if got := sameHash(tt.x, tt.y); got != tt.want {
			t.Errorf("%s: sameHash = %v", tt.name, got)
		}
	}
}

func TestRotationGrace(t *testing.T) {
	tests := []struct {
		name     string
		grace    time.Duration
		wantKick bool
	}{
		{"24h grace", 24 * time.Hour, false},
		{"1m grace", time.Minute, false},
		{"zero grace", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TokenGrace = tt.grace
			s, _, clk, k := newTestService(cfg)
			ctx := context.Background()
			_, old, _ := s.AddDevice(ctx, "d", "", nil)
			k.take()
			newTok, err := s.RotateToken(ctx, "d")
			if err != nil {
				t.Fatal(err)
			}
			if newTok == old || !tokenRe.MatchString(newTok) {
				t.Fatalf("new token %q", newTok)
			}
			if got := k.take(); tt.wantKick != (len(got) == 1) {
				t.Fatalf("kicks = %v, want kick %v", got, tt.wantKick)
			}
			if tt.grace > 0 {
				clk.Advance(tt.grace - time.Nanosecond)
				if _, err := s.AuthenticateDevice(ctx, old); err != nil {
					t.Fatalf("old token refused within grace: %v", err)
				}
				clk.Advance(time.Nanosecond)
			}
			if _, err := s.AuthenticateDevice(ctx, old); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("old token after grace: %v", err)
			}
			if _, err := s.AuthenticateDevice(ctx, newTok); err != nil {
				t.Fatalf("new token refused: %v", err)
			}
			// A second rotation must not extend the first old token's life.
			clk.Advance(-tt.grace)
			if _, err := s.RotateToken(ctx, "d"); err != nil {
				t.Fatal(err)
			}
			clk.Advance(tt.grace)
			if _, err := s.AuthenticateDevice(ctx, old); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("old token revived by second rotation: %v", err)
			}
		})
	}
}

func TestKicks(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		op   func(*Service) error
		want []string
	}{
		{"disable", func(s *Service) error { return s.SetEnabled(ctx, "d", false) }, []string{"d: " + KickDisabled}},
		{"enable", func(s *Service) error { return s.SetEnabled(ctx, "d", true) }, nil},
		{"revoke", func(s *Service) error { return s.RevokeTokens(ctx, "d") }, []string{"d: " + KickRevoked}},
		{"delete", func(s *Service) error { return s.DeleteDevice(ctx, "d", true) }, []string{"d: " + KickDeleted}},
		{"rotate with grace", func(s *Service) error { _, err := s.RotateToken(ctx, "d"); return err }, nil},
		{"unknown device", func(s *Service) error { return s.SetEnabled(ctx, "nope", false) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, _, k := newTestService(DefaultConfig())
			var second []string
			s.OnKick(func(d, r string) { second = append(second, d) })
			if _, _, err := s.AddDevice(ctx, "d", "", nil); err != nil {
				t.Fatal(err)
			}
			err := tt.op(s)
			if tt.name == "unknown device" {
				if !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := k.take(); !slices.Equal(got, tt.want) {
				t.Fatalf("kicks = %v, want %v", got, tt.want)
			}
			if len(second) != len(tt.want) {
				t.Fatalf("second callback got %v", second)
			}
		})
	}
}

func TestDeviceShowsSessions(t *testing.T) {
	s, repo, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	s.AddDevice(ctx, "d", "", nil)
	repo.sessions["d"] = []storage.Session{{ID: "s1", DeviceID: "d", Transport: "ws"}}
	d, sess, err := s.Device(ctx, "d")
	if err != nil || d.ID != "d" || len(sess) != 1 || sess[0].ID != "s1" {
		t.Fatalf("Device = %+v, %+v, %v", d, sess, err)
	}
	if _, _, err := s.Device(ctx, "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
}
