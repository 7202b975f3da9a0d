package telemetry

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// The JSON text of telemetry values, written without reflection or
// allocation: the MQTT bridge's JSON payloads and the dashboard's live feed
// both encode every committed reading with these, so they escape the same
// way.

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string. Besides what JSON requires
// (quote, backslash, control characters) it escapes <, > and & and the line
// separators U+2028/U+2029, so the text is safe inside HTML and JavaScript
// too (a browser shows the live feed), and it replaces invalid UTF-8 with
// U+FFFD so the output is always valid JSON whatever a device named its
// metric.
func AppendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				b = append(b, `\ufffd`...)
			case r == '\u2028' || r == '\u2029':
				b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			default:
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c == '<' || c == '>' || c == '&':
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}

// AppendJSONFloat appends v as a JSON number. JSON has no NaN or
// infinities, so they become null (ingest rejects them; a peer node's
// message might still carry one).
func AppendJSONFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
