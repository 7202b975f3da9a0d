package redact

import "testing"

func TestURL(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", ""},
		{"url password", "postgres://u:p@h:5432/db", "postgres://u:***@h:5432/db"},
		{"url without password", "postgres://u@h/db", "postgres://u@h/db"},
		{"password parameter", "postgres://h/db?password=p&sslmode=disable", "postgres://h/db?password=***&sslmode=disable"},
		{"dsn", "host=h user=u password=p dbname=x", "host=h user=u password=*** dbname=x"},
		{"dsn quoted", "host=h password='a b' dbname=x", "host=h password=*** dbname=x"},
		{"mqtt", "tcp://bridge:s3cret@broker:1883", "tcp://bridge:***@broker:1883"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := URL(tt.in); got != tt.want {
				t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
