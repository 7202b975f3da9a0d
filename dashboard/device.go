package dashboard

import (
	"strconv"
	"strings"

	"github.com/meridian-iot/meridian/storage"
)

// sessionView is a session record as the device page shows it: the close
// reason in words, and an open session's running readings count.
type sessionView struct {
	storage.Session
	Open bool `json:"open"`
	// CloseCode is the WebSocket close code parsed from the record's
	// "<code> <message>" close reason (0 when absent).
	CloseCode int `json:"close_code,omitempty"`
	// CloseText says in words why the session ended.
	CloseText string `json:"close_text,omitempty"`
}

// closeWords names the close codes of docs/protocol.md section 9 (and 1006,
// which is never sent: the connection was simply lost).
var closeWords = map[int]string{
	1000: "closed by the device",
	1001: "going away",
	1002: "protocol violation",
	1003: "text frame sent",
	1006: "connection lost",
	1007: "undecodable data",
	1008: "closed by policy",
	1009: "frame too big",
	1011: "server error",
	1013: "try again later",
}

// closeReason turns a stored "<code> <message>" into its code and words:
// "1000 " → "closed by the device"; "1001 server shutting down" → "going
// away: server shutting down". Anything else is shown as stored.
func closeReason(stored string) (int, string) {
	stored = strings.TrimSpace(stored)
	codeStr, msg, _ := strings.Cut(stored, " ")
	code, err := strconv.Atoi(codeStr)
	if err != nil {
		return 0, stored
	}
	msg = strings.TrimSpace(msg)
	words, ok := closeWords[code]
	if !ok {
		words = "closed with code " + codeStr
	}
	if msg != "" && msg != words {
		words += ": " + msg
	}
	return code, words
}

// sameSession: the hub's count belongs to this record only if the online
// event it started from was this session's (ingest records the session and
// then reports it online, within moments). A session held by another node
// sends no presence here, and its record keeps its stored count.
func sameSession(s storage.Session, live LiveStats) bool {
	if live.SessionSince == 0 {
		return false
	}
	d := s.StartedAt.UnixMilli() - live.SessionSince
	return d > -sessionMatchWindow && d < sessionMatchWindow
}

// sessionMatchWindow bounds the gap between a session's recorded start and
// its online event.
const sessionMatchWindow = 10_000 // ms

// sessionViews decorates the newest-first session records; the newest open
// one gets the hub's running count when it is ahead of the record (a
// session's count is stored only at close).
func sessionViews(sess []storage.Session, live LiveStats) []sessionView {
	out := make([]sessionView, 0, len(sess))
	for i, s := range sess {
		v := sessionView{Session: s, Open: s.EndedAt == nil}
		if v.Open {
			if i == 0 && live.Online && sameSession(s, live) && live.SessionReadings > v.Readings {
				v.Readings = live.SessionReadings
			}
		} else {
			v.CloseCode, v.CloseText = closeReason(s.CloseReason)
		}
		out = append(out, v)
	}
	return out
}
