package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Provisioner obtains device tokens from the server.
type Provisioner struct {
	Client  *http.Client
	BaseURL string
	// AdminKey selects POST /v1/admin/devices (an admin API key); otherwise
	// ProvisioningKey selects POST /v1/provision (docs/api.md).
	AdminKey        string
	ProvisioningKey string
	// Concurrency bounds requests in flight (0: 8).
	Concurrency int
}

// Provision returns a token for every id. With an admin key a device that
// already exists gets a fresh token through rotate-token (its old tokens
// stay valid for the server's grace period); with the provisioning key an
// existing device is an error unless the server allows reprovisioning.
// Rate-limited requests (429) are retried after Retry-After.
func (p Provisioner) Provision(ctx context.Context, ids []string) (map[string]string, error) {
	if p.AdminKey == "" && p.ProvisioningKey == "" {
		return nil, fmt.Errorf("provision: need an admin API key or the provisioning key")
	}
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	n := p.Concurrency
	if n <= 0 {
		n = 8
	}
	var mu sync.Mutex
	out := make(map[string]string, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, id := range ids {
		g.Go(func() error {
			tok, err := p.one(gctx, client, id)
			if err != nil {
				return fmt.Errorf("provision %s: %w", id, err)
			}
			mu.Lock()
			out[id] = tok
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

func (p Provisioner) one(ctx context.Context, client *http.Client, id string) (string, error) {
	base := strings.TrimRight(p.BaseURL, "/")
	for {
		var (
			status int
			body   []byte
			retry  time.Duration
			err    error
		)
		if p.AdminKey != "" {
			status, body, retry, err = p.post(ctx, client, base+"/v1/admin/devices", p.AdminKey, map[string]string{"id": id, "name": id})
			if err == nil && status == http.StatusConflict {
				status, body, retry, err = p.post(ctx, client, base+"/v1/admin/devices/"+url.PathEscape(id)+"/rotate-token", p.AdminKey, nil)
			}
		} else {
			status, body, retry, err = p.post(ctx, client, base+"/v1/provision", "", map[string]string{"device": id, "key": p.ProvisioningKey})
		}
		if err != nil {
			return "", err
		}
		switch status {
		case http.StatusOK, http.StatusCreated:
			var r struct {
				Token string `json:"token"`
			}
			if err := json.Unmarshal(body, &r); err != nil || r.Token == "" {
				return "", fmt.Errorf("answer without a token (status %d)", status)
			}
			return r.Token, nil
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			if retry <= 0 {
				retry = time.Second
			}
			t := time.NewTimer(retry)
			select {
			case <-ctx.Done():
				t.Stop()
				return "", ctx.Err()
			case <-t.C:
			}
		case http.StatusConflict:
			return "", fmt.Errorf("already registered (409): load its token with --tokens, provision with an admin key, or enable devices.provisioning.allow_reprovision")
		default:
			return "", fmt.Errorf("status %d: %s", status, strings.TrimSpace(string(body)))
		}
	}
}

func (p Provisioner) post(ctx context.Context, client *http.Client, u, bearer string, body any) (int, []byte, time.Duration, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, r)
	if err != nil {
		return 0, nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, nil, 0, err
	}
	var retry time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		retry = time.Duration(s) * time.Second
	}
	return resp.StatusCode, b, retry, nil
}

// LoadTokens reads a tokens file: one "device token" pair per line,
// separated by white space; blank lines and lines starting with # are
// skipped.
func LoadTokens(r io.Reader) (map[string]string, error) {
	out := make(map[string]string)
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		f := strings.Fields(s)
		if len(f) != 2 {
			return nil, fmt.Errorf("tokens line %d: want \"device token\", got %d fields", line, len(f))
		}
		out[f[0]] = f[1]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	return out, nil
}

// LoadTokensFile reads a tokens file (see LoadTokens).
func LoadTokensFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return LoadTokens(f)
}

// SaveTokensFile writes tokens (sorted by device) readable only by the
// owner: they are credentials.
func SaveTokensFile(path string, tokens map[string]string) error {
	ids := make([]string, 0, len(tokens))
	for id := range tokens {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	b.WriteString("# meridian sim device tokens: device token\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "%s %s\n", id, tokens[id])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write tokens file: %w", err)
	}
	return nil
}
