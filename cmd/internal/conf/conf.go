// Package conf is the mechanism behind meridian's configuration: it layers
// defaults, a YAML file, environment variables and command-line flags onto
// the fields of a table of keys (with viper and mapstructure), refuses
// unknown keys and ill-typed values with one precise line, and renders the
// effective configuration as YAML and the reference as Markdown.
//
// What the keys are — their names, the fields they set, their docs — is the
// caller's table (cmd/meridian/settings.go); this package knows nothing of
// Meridian's settings. It also holds the command-line error types every
// command shares (UsageError, NoArgs). Only commands use it: packages receive plain Config
// structs and never read the environment.
package conf

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Entry is one key bound to the field it sets.
type Entry struct {
	Key    string // dotted, snake_case: "ingest.max_batch"
	Ptr    any    // pointer to the field; its value when loading starts is the default
	Doc    string // one line for the reference
	Flag   string // command-line flag that also sets it, if any
	Secret bool   // masked by YAML
	// Mask shows a secret partly (a URL without its password); nil masks
	// it whole.
	Mask func(string) string
}

// Error is a configuration mistake (as opposed to a failure to run):
// commands exit 2 for it.
type Error struct{ Err error }

func (e Error) Error() string { return "invalid config: " + e.Err.Error() }
func (e Error) Unwrap() error { return e.Err }

// UsageError is a wrong command line (unknown flag, missing argument):
// commands exit 2 for it, like for Error.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// NoArgs is cobra.NoArgs as a UsageError (exit 2).
func NoArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return UsageError{Err: fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
}

// Loader loads entries from the environment under EnvPrefix, a file and flags.
type Loader struct {
	// EnvPrefix + "_" + the upper-cased key with "." replaced by "_" names a
	// key's environment variable.
	EnvPrefix string
}

// EnvName is the environment variable of key.
func (l Loader) EnvName(key string) string {
	return l.EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// Path is the --config flag, or <EnvPrefix>_CONFIG when the flag is not
// given (handy for systemd environment files).
func (l Loader) Path(flags *pflag.FlagSet) string {
	if flags != nil {
		if f := flags.Lookup("config"); f != nil && f.Value.String() != "" {
			return f.Value.String()
		}
	}
	return os.Getenv(l.EnvPrefix + "_CONFIG")
}

// Load layers, lowest first: each entry's current value (the default), the
// file at path (if any), environment variables, flags; and stores the
// result through the entries' pointers. Mistakes in the file or the values
// come back as Error naming the key.
func (l Loader) Load(entries []Entry, flags *pflag.FlagSet, path string) error {
	v := viper.New()
	v.SetEnvPrefix(l.EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, e := range entries {
		// SetDefault makes the key known to viper, so env and flags work
		// without a file naming it.
		v.SetDefault(e.Key, reflect.ValueOf(e.Ptr).Elem().Interface())
		if err := v.BindEnv(e.Key); err != nil {
			return fmt.Errorf("bind env for %s: %w", e.Key, err)
		}
		if e.Flag != "" && flags != nil {
			if f := flags.Lookup(e.Flag); f != nil {
				if err := v.BindPFlag(e.Key, f); err != nil {
					return fmt.Errorf("bind flag --%s: %w", e.Flag, err)
				}
			}
		}
	}
	if path != "" {
		if err := readFile(v, path, entries); err != nil {
			return Error{err}
		}
	}
	for _, e := range entries {
		if err := decode(v.Get(e.Key), e.Ptr); err != nil {
			return Error{fmt.Errorf("%s: %w", e.Key, err)}
		}
	}
	return nil
}

// readFile merges the file into v after checking that it names only known
// keys: a typo must not silently fall back to a default.
func readFile(v *viper.Viper, path string, entries []Entry) error {
	fv := viper.New()
	fv.SetConfigFile(path)
	if err := fv.ReadInConfig(); err != nil {
		return fmt.Errorf("read config file %s: %w", path, err)
	}
	known := make(map[string]bool, len(entries))
	sections := map[string]bool{}
	for _, e := range entries {
		known[e.Key] = true
		parts := strings.Split(e.Key, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	keys := fv.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case known[k]:
		case sections[k]:
			// An empty section ("ingest:" with nothing below) is harmless;
			// a value where a section belongs is not.
			if val := fv.Get(k); val != nil {
				return fmt.Errorf("%s: %s: must be a section of keys, got %v", path, k, val)
			}
		default:
			return fmt.Errorf("%s: unknown key %q (see docs/config.md)", path, k)
		}
	}
	// The main viper reads the file too, so the file sits below env and
	// flags in viper's precedence.
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("read config file %s: %w", path, err)
	}
	return nil
}

// decode stores raw into ptr through mapstructure, with a hook that accepts
// only sensible conversions and says precisely what was wrong.
func decode(raw any, ptr any) error {
	var hookErr error
	hook := func(from, to reflect.Type, data any) (any, error) {
		out, err := convert(to, data)
		if err != nil && hookErr == nil {
			hookErr = err
		}
		return out, err
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{DecodeHook: hook, Result: ptr})
	if err != nil {
		return fmt.Errorf("build decoder: %w", err)
	}
	if err := dec.Decode(raw); err != nil {
		if hookErr != nil {
			return hookErr
		}
		return err
	}
	return nil
}
