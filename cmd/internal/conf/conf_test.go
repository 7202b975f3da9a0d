package conf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type sample struct {
	Size  int
	Every time.Duration
	Name  string
	Tags  []string
}

func table(s *sample) []Entry {
	return []Entry{
		{Key: "a.size", Ptr: &s.Size, Doc: "size"},
		{Key: "a.every", Ptr: &s.Every, Doc: "interval"},
		{Key: "b.name", Ptr: &s.Name, Doc: "name", Secret: true},
		{Key: "b.tags", Ptr: &s.Tags, Doc: "tags"},
	}
}

func TestLoadLayersAndErrors(t *testing.T) {
	l := Loader{EnvPrefix: "CONFTEST"}
	file := filepath.Join(t.TempDir(), "c.yaml")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, file string
		env        map[string]string
		want       sample
		wantErr    string
	}{
		{name: "defaults", want: sample{Size: 3, Every: time.Second}},
		{name: "file", file: "a:\n  size: 7\n  every: 2m\nb:\n  tags: [x, y]\n", want: sample{Size: 7, Every: 2 * time.Minute, Tags: []string{"x", "y"}}},
		{name: "env over file", file: "a:\n  size: 7\n", env: map[string]string{"CONFTEST_A_SIZE": "9", "CONFTEST_B_TAGS": "p, q"}, want: sample{Size: 9, Every: time.Second, Tags: []string{"p", "q"}}},
		{name: "unknown key", file: "a:\n  sise: 7\n", wantErr: `unknown key "a.sise"`},
		{name: "value where a section belongs", file: "a: 5\n", wantErr: "a: must be a section of keys, got 5"},
		{name: "fraction", file: "a:\n  size: 1.5\n", wantErr: "a.size: must be an integer, got 1.5"},
		{name: "duration without unit", env: map[string]string{"CONFTEST_A_EVERY": "10"}, wantErr: `a.every: must be a duration such as "20s" or "1h30m", got "10"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"CONFTEST_A_SIZE", "CONFTEST_A_EVERY", "CONFTEST_B_NAME", "CONFTEST_B_TAGS"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			path := ""
			if tc.file != "" {
				write(tc.file)
				path = file
			}
			got := sample{Size: 3, Every: time.Second}
			err := l.Load(table(&got), nil, path)
			if tc.wantErr != "" {
				var ce Error
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a config Error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Size != tc.want.Size || got.Every != tc.want.Every || strings.Join(got.Tags, ",") != strings.Join(tc.want.Tags, ",") {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestYAMLMasksSecretsAndReferenceListsKeys(t *testing.T) {
	s := sample{Size: 3, Every: 90 * time.Minute, Name: "hunter2"}
	out, err := YAML(table(&s))
	if err != nil {
		t.Fatal(err)
	}
	if want := "a:\n  size: 3\n  every: 1h30m\nb:\n  name: '***'\n  tags: []\n"; string(out) != want {
		t.Fatalf("YAML:\n%s\nwant:\n%s", out, want)
	}
	var b strings.Builder
	Loader{EnvPrefix: "X"}.Reference(&b, []Section{{Name: "a", Doc: "first"}}, table(&s))
	if !strings.Contains(b.String(), "| `a.every` | duration | `\"1h30m\"` | `X_A_EVERY` |  | interval |") || strings.Contains(b.String(), "b.name") {
		t.Fatalf("reference:\n%s", b.String())
	}
}
