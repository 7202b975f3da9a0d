package main

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"testing"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code int
		line string
	}{
		{"success", nil, 0, ""},
		{"config", configError{Err: errors.New("ingest.writers: must be between 1 and 64, got 0")}, 2,
			"meridian: invalid config: ingest.writers: must be between 1 and 64, got 0\n"},
		{"wrapped config", fmt.Errorf("serve: %w", configError{Err: errors.New("x")}), 2, "meridian: serve: invalid config: x\n"},
		{"usage", usageError{Err: errors.New("unknown flag: --x")}, 2, "meridian: unknown flag: --x\n"},
		{"runtime", errors.New("listen on :8470 (server.listen): address already in use"), 1,
			"meridian: listen on :8470 (server.listen): address already in use\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		if got := exitCode(tt.err, &b); got != tt.code || b.String() != tt.line {
			t.Errorf("%s: exitCode = %d %q, want %d %q", tt.name, got, b.String(), tt.code, tt.line)
		}
	}
}

func TestVersionAndUsage(t *testing.T) {
	cleanEnv(t)
	out, line, code := runCLI(t, "version")
	if code != 0 || !regexp.MustCompile(`^meridian dev \(commit \S+, go1\.\S+, \w+/\w+\)\n$`).MatchString(out) {
		t.Errorf("version: exit %d %q %q", code, out, line)
	}
	if _, line, code := runCLI(t, "serve", "--no-such-flag"); code != 2 || line != "meridian: unknown flag: --no-such-flag" {
		t.Errorf("bad flag: exit %d %q", code, line)
	}
	if _, line, code := runCLI(t, "serve", "extra"); code != 2 || line != `meridian: meridian serve takes no arguments, got ["extra"]` {
		t.Errorf("extra argument: exit %d %q", code, line)
	}
	if _, line, code := runCLI(t, "frobnicate"); code != 2 || line != `meridian: unknown command "frobnicate" (see meridian --help)` {
		t.Errorf("unknown command: exit %d %q", code, line)
	}
	if out, _, code := runCLI(t); code != 0 || !bytes.Contains([]byte(out), []byte("Available Commands")) {
		t.Errorf("no command: exit %d, want help:\n%s", code, out)
	}
}
