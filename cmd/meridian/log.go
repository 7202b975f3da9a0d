package main

import (
	"io"
	"log/slog"
)

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// newLogger builds the one logger the process injects everywhere. Validate
// has already checked format and level.
func newLogger(s ServerConfig, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[s.LogLevel]}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// cliLogger is the logger of one-shot commands (migrate, query): their
// answer is their output, so the store's background chatter (connecting,
// retrying) is shown only at error level, unless debug was asked for.
func cliLogger(s ServerConfig, w io.Writer) *slog.Logger {
	if s.LogLevel != "debug" {
		s.LogLevel = "error"
	}
	return newLogger(s, w)
}
