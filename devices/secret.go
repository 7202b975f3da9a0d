package devices

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"strings"
)

const (
	// DeviceTokenPrefix starts every device token. It makes the kind of a
	// credential visible (in configs, in leaked-secret scanners) and lets
	// AuthenticateOperator refuse a device token before any lookup.
	DeviceTokenPrefix = "mdt_"
	// APIKeyPrefix starts every operator API key: "mak_<id>_<secret>".
	APIKeyPrefix = "mak_"

	// secretBytes of randomness per token or key: 256 bits, far above the
	// 128 needed against guessing, and hashing it with plain SHA-256 is then
	// safe (no dictionary to attack, unlike passwords).
	secretBytes = 32
	// maxCredentialLen bounds what we hash from a request header or frame.
	maxCredentialLen = 256
)

// newSecret returns secretBytes of randomness, base64url without padding (43
// characters). crypto/rand.Read never fails (it aborts the process instead).
func newSecret() string {
	b := make([]byte, secretBytes)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newDeviceToken returns a fresh device token and its stored hash.
func newDeviceToken() (token string, hash []byte) {
	token = DeviceTokenPrefix + newSecret()
	return token, hashSecret(token)
}

// newAPIKey returns a fresh API key "mak_<id>_<secret>", its public id and
// its stored hash. The id is hex, so it never contains the "_" separator.
func newAPIKey() (key, id string, hash []byte) {
	id = randomHex(6)
	key = APIKeyPrefix + id + "_" + newSecret()
	return key, id, hashSecret(key)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// hashSecret is what we store and look up: SHA-256 of the whole credential,
// prefix included.
func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// sameHash compares in constant time, so the time taken does not tell an
// attacker how many leading bytes of a guess were right.
func sameHash(a, b []byte) bool {
	return len(a) == sha256.Size && subtle.ConstantTimeCompare(a, b) == 1
}

// sameSecret compares two secrets of possibly different lengths in constant
// time by comparing their hashes.
func sameSecret(a, b string) bool {
	return subtle.ConstantTimeCompare(hashSecret(a), hashSecret(b)) == 1
}

// apiKeyID returns the public id embedded in a generated API key, or "" for a
// key of another shape (a configured admin key).
func apiKeyID(key string) string {
	rest, ok := strings.CutPrefix(key, APIKeyPrefix)
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 12 {
		return ""
	}
	if _, err := hex.DecodeString(id); err != nil {
		return ""
	}
	return id
}
