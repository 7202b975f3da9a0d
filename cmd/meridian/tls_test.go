package main

import (
	"github.com/meridian-iot/meridian/cmd/internal/front"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSelfSigned writes a fresh self-signed certificate for 127.0.0.1 with
// the given common name and returns it.
func writeSelfSigned(t *testing.T, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	// Write to temp names and rename, as renewal tools do, so the reloader
	// never sees a half-written pair.
	if err := os.WriteFile(keyFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keyFile+".tmp", keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".tmp", certFile); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestTLSServeAndReload(t *testing.T) {
	old := front.CertPollInterval
	front.CertPollInterval = 50 * time.Millisecond
	t.Cleanup(func() { front.CertPollInterval = old })

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeSelfSigned(t, certFile, keyFile, "first")

	cfg := testConfig(t)
	cfg.Server.TLS = front.TLSConfig{CertFile: certFile, KeyFile: keyFile}
	ts := startServe(t, cfg)
	base := strings.Replace(ts.base, "http://", "https://", 1)

	served := func() string {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 5 * time.Second}
		defer c.CloseIdleConnections()
		resp, err := c.Get(base + "/healthz")
		if err != nil {
			t.Fatalf("https GET: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("healthz over TLS: %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cn := served(); cn != first.Subject.CommonName {
		t.Fatalf("served %q, want %q", cn, first.Subject.CommonName)
	}
	// A broken renewal keeps the old certificate.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if cn := served(); cn != "first" {
		t.Fatalf("after a broken renewal served %q, want the previous certificate", cn)
	}
	writeSelfSigned(t, certFile, keyFile, "second")
	deadline := time.Now().Add(5 * time.Second)
	for served() != "second" {
		if time.Now().After(deadline) {
			t.Fatal("renewed certificate not served within 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ts.logs.String(), "TLS certificate reloaded") {
		t.Errorf("no reload logged:\n%s", ts.logs)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	for _, c := range []struct {
		tls  front.TLSConfig
		want string
	}{
		{front.TLSConfig{CertFile: "c.pem"}, "server.tls.key_file: must be set"},
		{front.TLSConfig{KeyFile: "k.pem"}, "server.tls.cert_file: must be set"},
	} {
		cfg := DefaultConfig()
		cfg.Server.TLS = c.tls
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.tls, err, c.want)
		}
	}
}
