package conf

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

var durationType = reflect.TypeFor[time.Duration]()

// convert turns a value from YAML, env (always strings) or a flag into the
// target type, or explains why it cannot.
func convert(to reflect.Type, data any) (any, error) {
	switch {
	case to == durationType:
		return toDuration(data)
	case to.Kind() == reflect.Int || to.Kind() == reflect.Int32 || to.Kind() == reflect.Int64:
		return toInt(to, data)
	case to.Kind() == reflect.Float64:
		return toFloat(data)
	case to.Kind() == reflect.Bool:
		return toBool(data)
	case to.Kind() == reflect.String:
		return toString(data)
	case to.Kind() == reflect.Slice && to.Elem().Kind() == reflect.String:
		return toStrings(data)
	}
	return data, nil
}

func toDuration(data any) (any, error) {
	switch d := data.(type) {
	case time.Duration:
		return d, nil
	case string:
		v, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil {
			return nil, fmt.Errorf(`must be a duration such as "20s" or "1h30m", got %q`, d)
		}
		return v, nil
	}
	if n, ok := asInt(data); ok && n == 0 {
		return time.Duration(0), nil
	}
	return nil, fmt.Errorf(`must be a duration with a unit such as "20s", got %v`, data)
}

func toInt(to reflect.Type, data any) (any, error) {
	var n int64
	if s, ok := data.(string); ok {
		v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("must be an integer, got %q", s)
		}
		n = v
	} else if v, ok := asInt(data); ok {
		n = v
	} else {
		return nil, fmt.Errorf("must be an integer, got %v", describe(data))
	}
	if reflect.Zero(to).OverflowInt(n) {
		return nil, fmt.Errorf("must be an integer that fits in %d bits, got %d", to.Bits(), n)
	}
	return reflect.ValueOf(n).Convert(to).Interface(), nil
}

func toFloat(data any) (any, error) {
	switch f := data.(type) {
	case float64:
		return f, nil
	case string:
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return nil, fmt.Errorf("must be a number, got %q", f)
		}
		return v, nil
	}
	if n, ok := asInt(data); ok {
		return float64(n), nil
	}
	return nil, fmt.Errorf("must be a number, got %v", describe(data))
}

func toBool(data any) (any, error) {
	switch b := data.(type) {
	case bool:
		return b, nil
	case string:
		v, err := strconv.ParseBool(strings.TrimSpace(b))
		if err != nil {
			return nil, fmt.Errorf("must be true or false, got %q", b)
		}
		return v, nil
	}
	return nil, fmt.Errorf("must be true or false, got %v", describe(data))
}

func toString(data any) (any, error) {
	switch s := data.(type) {
	case string:
		return s, nil
	case int, int64, uint64, float64:
		// YAML reads `node: 7` as a number; a name is still meant.
		return fmt.Sprint(s), nil
	}
	return nil, fmt.Errorf("must be a string, got %v", describe(data))
}

func toStrings(data any) (any, error) {
	switch l := data.(type) {
	case []string:
		return l, nil
	case string:
		// Env and flags: comma-separated.
		var out []string
		for _, p := range strings.Split(l, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out, nil
	case []any:
		out := make([]string, 0, len(l))
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("must be a list of strings, got element %v", describe(e))
			}
			out = append(out, s)
		}
		return out, nil
	case nil:
		return []string(nil), nil
	}
	return nil, fmt.Errorf("must be a list of strings, got %v", describe(data))
}

// asInt accepts integer kinds and integral floats (JSON numbers).
func asInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case int32:
		return int64(n), true
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), true
		}
	case uint:
		if uint64(n) <= math.MaxInt64 {
			return int64(n), true
		}
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), true
		}
	}
	return 0, false
}

// describe renders a wrongly typed value for an error message.
func describe(v any) string {
	switch v.(type) {
	case map[string]any, map[any]any:
		return "a section of keys"
	case []any:
		return "a list"
	case string:
		return strconv.Quote(v.(string))
	}
	return fmt.Sprint(v)
}
