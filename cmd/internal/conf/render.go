package conf

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-iot/meridian/internal/redact"
)

// YAML renders the entries in the file format, keys in table order, secrets
// masked, so the output can be saved and used as a config file (after
// putting the secrets back).
func YAML(entries []Entry) ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode}
	for _, e := range entries {
		val := printable(reflect.ValueOf(e.Ptr).Elem().Interface())
		if e.Secret {
			val = maskSecret(e, val)
		}
		leaf := &yaml.Node{}
		if err := leaf.Encode(val); err != nil {
			return nil, fmt.Errorf("encode %s: %w", e.Key, err)
		}
		parent := root
		parts := strings.Split(e.Key, ".")
		for _, p := range parts[:len(parts)-1] {
			parent = childMapping(parent, p)
		}
		parent.Content = append(parent.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: parts[len(parts)-1]}, leaf)
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return []byte(b.String()), nil
}

func maskSecret(e Entry, val any) any {
	str, _ := val.(string)
	if str == "" {
		return str // show that nothing is set
	}
	if e.Mask != nil {
		return e.Mask(str)
	}
	return redact.Masked
}

// childMapping returns the mapping under key in m, creating it in order.
func childMapping(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	child := &yaml.Node{Kind: yaml.MappingNode}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, child)
	return child
}

// printable converts values to what a config file would say: durations as
// Go duration strings, nil lists as empty lists.
func printable(v any) any {
	switch x := v.(type) {
	case time.Duration:
		return formatDuration(x)
	case []string:
		if x == nil {
			return []string{}
		}
	}
	return v
}

// formatDuration drops the zero tails of time.Duration.String: 720h, 1h30m, 5m.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		return "list of strings"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int32 || t.Kind() == reflect.Int64:
		return "integer"
	case t.Kind() == reflect.Float64:
		return "number"
	}
	return t.Kind().String()
}

func docValue(v any) string {
	const day = 24 * time.Hour
	if d, ok := v.(time.Duration); ok && d >= 2*day && d%day == 0 {
		return fmt.Sprintf("`%q` (%d days)", formatDuration(d), d/day)
	}
	switch x := printable(v).(type) {
	case string:
		return fmt.Sprintf("`%q`", x)
	case []string:
		if len(x) == 0 {
			return "`[]`"
		}
		return "`" + strings.Join(x, ",") + "`"
	default:
		return fmt.Sprintf("`%v`", x)
	}
}

// Section is a top-level group of keys in the reference.
type Section struct{ Name, Doc string }

// Reference writes one Markdown table per section: key, type, default
// (the entries' current values), environment variable, flag, description.
// It must not depend on the environment: a test compares the output to the
// committed docs.
func (l Loader) Reference(b *strings.Builder, sections []Section, defaults []Entry) {
	for _, sec := range sections {
		fmt.Fprintf(b, "\n## %s\n\n%s\n\n", sec.Name, sec.Doc)
		b.WriteString("| key | type | default | environment | flag | description |\n")
		b.WriteString("|---|---|---|---|---|---|\n")
		for _, e := range defaults {
			if !strings.HasPrefix(e.Key, sec.Name+".") {
				continue
			}
			v := reflect.ValueOf(e.Ptr).Elem()
			flag := ""
			if e.Flag != "" {
				flag = "`--" + e.Flag + "`"
			}
			desc := e.Doc
			if e.Secret {
				desc += " Secret: masked by `config print`."
			}
			fmt.Fprintf(b, "| `%s` | %s | %s | `%s` | %s | %s |\n",
				e.Key, typeName(v.Type()), docValue(v.Interface()), l.EnvName(e.Key), flag,
				strings.ReplaceAll(desc, "|", `\|`))
		}
	}
}
