package front

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// TLSConfig serves HTTPS/WSS directly, for edge hosts without a reverse
// proxy. Both files empty: plain HTTP (behind a TLS-terminating proxy).
type TLSConfig struct {
	// CertFile is a PEM certificate chain, leaf first.
	CertFile string
	// KeyFile is the PEM private key of the leaf certificate.
	KeyFile string
}

// Enabled reports whether a certificate is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Validate reports a half-configured pair, naming the missing key.
func (t TLSConfig) Validate() error {
	if t.CertFile == "" && t.KeyFile != "" {
		return fmt.Errorf("server.tls.cert_file: must be set when server.tls.key_file is, got %q", t.CertFile)
	}
	if t.KeyFile == "" && t.CertFile != "" {
		return fmt.Errorf("server.tls.key_file: must be set when server.tls.cert_file is, got %q", t.KeyFile)
	}
	return nil
}

// CertPollInterval is how often the certificate files are checked for
// changes: renewals are rare, a stat every few seconds is free. Tests
// shorten it.
var CertPollInterval = 5 * time.Second

// CertReloader serves the current certificate and replaces it when the
// files change (polled) or on SIGHUP, so a renewed certificate (certbot,
// step-ca) takes effect without a restart and without dropping devices. A
// bad new pair is logged and the old one kept: a half-written renewal never
// takes the server down.
type CertReloader struct {
	cfg     TLSConfig
	log     *slog.Logger
	cert    atomic.Pointer[tls.Certificate]
	lastMod atomic.Value // string: "<cert mtime/size>|<key mtime/size>"
}

// NewCertReloader loads the pair once; a bad pair is an error.
func NewCertReloader(cfg TLSConfig, log *slog.Logger) (*CertReloader, error) {
	r := &CertReloader{cfg: cfg, log: log}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d/%d", fi.ModTime().UnixNano(), fi.Size())
}

func (r *CertReloader) stamp() string {
	return fileStamp(r.cfg.CertFile) + "|" + fileStamp(r.cfg.KeyFile)
}

func (r *CertReloader) reload() error {
	st := r.stamp()
	c, err := tls.LoadX509KeyPair(r.cfg.CertFile, r.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate (server.tls.cert_file %s, server.tls.key_file %s): %w", r.cfg.CertFile, r.cfg.KeyFile, err)
	}
	r.cert.Store(&c)
	r.lastMod.Store(st)
	return nil
}

func (r *CertReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// ServerTLS is the server side: TLS 1.2+, and HTTP/1.1 only because a
// WebSocket upgrade needs it (no h2 over the device port).
func (r *CertReloader) ServerTLS() *tls.Config {
	return &tls.Config{
		GetCertificate: r.getCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}
}

// Watch reloads on SIGHUP and whenever the files' mtime or size change,
// until ctx ends.
func (r *CertReloader) Watch(ctx context.Context, every time.Duration) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		var why string
		select {
		case <-ctx.Done():
			return
		case <-hup:
			why = "SIGHUP"
		case <-t.C:
			if r.stamp() == r.lastMod.Load().(string) {
				continue
			}
			why = "files changed"
		}
		if err := r.reload(); err != nil {
			r.log.Error("TLS certificate reload failed; keeping the previous one", "trigger", why, "err", err)
			// Remember the stamp so a broken pair is not retried every tick;
			// the next change (or SIGHUP) tries again.
			r.lastMod.Store(r.stamp())
			continue
		}
		r.log.Info("TLS certificate reloaded", "trigger", why)
	}
}
