package listenaddr

import "testing"

func TestCheck(t *testing.T) {
	const ex = `":8470" or "127.0.0.1:8470"`
	tests := []struct{ name, addr, want string }{
		{"all interfaces", ":8470", ""},
		{"host and port", "127.0.0.1:8470", ""},
		{"ipv6", "[::1]:8470", ""},
		{"any port", ":0", ""},
		{"no port", "8470", `must be host:port such as ":8470" or "127.0.0.1:8470"`},
		{"empty", "", `must be host:port such as ":8470" or "127.0.0.1:8470"`},
		{"service name", ":http", "port must be a number from 0 to 65535"},
		{"port too big", ":65536", "port must be a number from 0 to 65535"},
		{"negative port", ":-1", "port must be a number from 0 to 65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.addr, ex)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Check(%q) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}
