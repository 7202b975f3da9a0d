package storagetest

import (
	"slices"
	"strings"
	"testing"

	"github.com/meridian-iot/meridian/storage"
)

func TestParseDocExamples(t *testing.T) {
	doc := "<!--\n```sql\nnot run\n```\n-->\n# Title\n\n```sh\npsql\n```\n" +
		"## Both\n```sql\nSELECT 1;\n```\n```sqlite\nSELECT 2;\n```\n" +
		"## Shared\ntext\n```sql\nSELECT 3\n```\n" +
		"## Setup\n```plpgsql\nCREATE ROLE x;\n```\n"
	got, err := ParseDocExamples(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Heading != "Both" || got[1].Heading != "Shared" {
		t.Fatalf("examples = %+v", got)
	}
	cases := []struct {
		ex   DocExample
		mode string
		want []string
	}{
		{got[0], storage.ModePostgres, []string{"SELECT 1;"}},
		{got[0], storage.ModeSQLite, []string{"SELECT 2;"}},
		{got[1], storage.ModeSQLite, []string{"SELECT 3"}},
		{got[1], storage.ModeTimescale, []string{"SELECT 3"}},
	}
	for _, c := range cases {
		if q := c.ex.For(c.mode); !slices.Equal(q, c.want) {
			t.Errorf("%s on %s: %q, want %q", c.ex.Heading, c.mode, q, c.want)
		}
	}
	for name, bad := range map[string]string{
		"unterminated": "# h\n```sql\nSELECT 1\n",
		"no heading":   "```sql\nSELECT 1\n```\n",
	} {
		if _, err := ParseDocExamples(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
