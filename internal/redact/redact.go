// Package redact shows secrets without revealing them: in logs, in error
// messages and in `meridian config print`. It holds the one mask every part
// prints in place of a secret and the one way a connection URL (PostgreSQL,
// MQTT) is shown with its password hidden.
//
// It imports nothing of ours, so any package that validates or logs a URL
// can use it. Its functions are pure and safe for concurrent use.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Masked is what a secret shows as.
const Masked = "***"

// dsnPassword finds the password of a libpq key=value DSN
// ("host=h password='a b'"), quoted or not.
var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)

// URL hides the password of a connection URL (in its user info or its
// password query parameter) or of a key=value DSN, so the rest — scheme,
// user, host, database — can still be printed and logged.
func URL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return dsnPassword.ReplaceAllString(s, "${1}"+Masked)
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Masked)
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", Masked)
		u.RawQuery = q.Encode()
	}
	// url.String escapes "*"; keep the mask readable.
	return strings.ReplaceAll(u.String(), "%2A%2A%2A", Masked)
}
