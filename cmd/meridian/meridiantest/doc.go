// Package meridiantest runs Meridian for real in tests of other packages: the
// `meridian serve` binary as a child process (built once per test process),
// the ingest server in-process on a real store, and the small pieces those
// tests share (a TCP proxy that can cut its connections, the real MQTT
// broker's address, Chromium's path, a device provisioned through the admin
// API).
//
// Only _test.go files import it; the binary never links it (nor package
// testing). Services a test needs (PostgreSQL through
// storagetest.NewPostgresDB, Mosquitto, Chromium, a C compiler) are looked
// up the same way everywhere: when one is missing the test is skipped
// loudly, except under CI=true, where it fails — CI must not pass by
// skipping.
//
// Concurrency: a Server or Proxy belongs to the test that started it; its
// methods may be called from that test's goroutines, but Start, Stop and
// Kill must not race each other.
package meridiantest
