package meridiantest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Unavailable reports that something the test needs is missing: a failure
// under CI=true, a loud skip elsewhere (the rule storagetest.NewPostgresDB
// applies to PostgreSQL).
func Unavailable(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s (CI=true)", msg)
	}
	tb.Skip("SKIPPING: " + msg)
}

// MQTTURL is the real broker integration tests use: MERIDIAN_TEST_MQTT, else
// tcp://127.0.0.1:1883. Unreachable: see Unavailable.
func MQTTURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("MERIDIAN_TEST_MQTT")
	if u == "" {
		u = "tcp://127.0.0.1:1883"
	}
	pu, err := url.Parse(u)
	if err != nil {
		tb.Fatalf("MERIDIAN_TEST_MQTT=%q: %v", u, err)
	}
	c, err := net.DialTimeout("tcp", pu.Host, 2*time.Second)
	if err != nil {
		Unavailable(tb, "MQTT broker "+u+" unreachable ("+err.Error()+"); set MERIDIAN_TEST_MQTT or start mosquitto")
		return ""
	}
	_ = c.Close()
	return u
}

// Chromium is the browser of the end-to-end tests and benchmarks:
// MERIDIAN_CHROMIUM, else Debian's. Missing: see Unavailable.
func Chromium(tb testing.TB) string {
	tb.Helper()
	for _, p := range []string{os.Getenv("MERIDIAN_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Unavailable(tb, "chromium not found at /usr/bin/chromium; install it with `apt-get install -y chromium` (or set MERIDIAN_CHROMIUM)")
	return ""
}

// FreeAddr returns a loopback address nobody listens on right now. Another
// process could take it before it is bound; on loopback in a test run that
// is rare enough, and a server that must keep its address across restarts
// needs a fixed one.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// RandomKey returns a fresh admin API key ("mak_" and 64 hex digits).
func RandomKey(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return "mak_" + hex.EncodeToString(b)
}

// Buffer is a bytes.Buffer that a child process's output and the test may
// use at once.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
